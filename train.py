"""Train a classifier: python train.py --config conf/digits.json [--set k=v] [--resume] [--overwrite]"""
from __future__ import annotations

import argparse
import sys

from featurenorm.config import load_config
from featurenorm.errors import add_common_arguments, run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Train a CIFAR-style classifier for FeatureNorm OOD detection.")
    add_common_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <save_path>/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over even if <save_path> holds a run")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    from featurenorm.engine import StopRequested, train  # imports torch: after the config is known to be good

    try:
        metrics = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except StopRequested as stop:
        print(f"stopped by {stop}; saved {cfg.save_dir / 'last.pt'}; continue with --resume", file=sys.stderr)
        return stop.exit_code
    print(f"done: test accuracy {metrics.get('test_acc', float('nan')):.4f}; checkpoint {cfg.save_dir / 'last.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
