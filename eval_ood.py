"""Score the ID test set and the OOD benchmarks by FeatureNorm and the baselines.

python eval_ood.py --config CONF [--checkpoint PATH] [--methods a,b,...] [--block NAME]
                   [--ood name=path ...] [--save-scores] [--all-blocks] [--benchmark paper|openood_v1.5]
                   [--set k=v]
"""
from __future__ import annotations

import argparse
import sys

from featurenorm.config import load_config
from featurenorm.data.benchmarks import BENCHMARKS
from featurenorm.errors import add_common_arguments, is_main_process, run_cli
from featurenorm.evaluation import run_evaluation
from featurenorm.methods import method_names
from featurenorm.report import summary_text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="OOD evaluation: FPR95, AUROC, AUPR-In/Out for each method and OOD set.")
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", help="model checkpoint (default: <save_path>/last.pt)")
    parser.add_argument("--methods", default="all", help=f"comma-separated, or all (default): {','.join(method_names())}")
    parser.add_argument("--block", help="score FeatureNorm at this block instead of block_selection.json's")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=PATH",
                        help="an extra OOD folder of images (repeatable); a missing path is an error")
    parser.add_argument("--save-scores", action="store_true", help="also write per-image scores to scores.npz")
    parser.add_argument("--all-blocks", action="store_true", help="also evaluate FeatureNorm at every block")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS),
                        help="which data sets to score (default: config key benchmark, paper)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set + ([f"benchmark={args.benchmark}"] if args.benchmark else []))
    results = run_evaluation(cfg, args.checkpoint, args.methods, args.block, args.ood, args.save_scores,
                             args.all_blocks, progress=not args.no_progress)
    if is_main_process():
        print(summary_text(results))
        print("wrote: " + ", ".join(results.get("_written", [])))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
