"""The whole FeatureNorm chain on bundled data, offline: python scripts/quickstart.py [--fresh] [--set k=v]"""
from __future__ import annotations

import argparse
import sys


from featurenorm.cli import add_common_arguments
from featurenorm.errors import run_cli
from featurenorm.runs.quickstart import run_quickstart


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Train on digits, select the block, evaluate on synthetic OOD sets.")
    add_common_arguments(parser, config_default="conf/digits.json")
    parser.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    parser.add_argument("--ood-count", type=int, default=200, help="images per synthetic OOD set (default 200)")
    args = parser.parse_args(argv)
    run_quickstart(args.config, args.set, args.fresh, args.ood_count, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
