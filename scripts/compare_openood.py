#!/usr/bin/env python
"""Our OpenOOD v1.5 results beside OpenOOD's CIFAR-10 ResNet-18 leaderboard (logic in featurenorm/reporting/openood.py).

Example:
    python scripts/compare_openood.py runs/openood_cifar10_s{0,1,2}/ood_results.json

Prints near-OOD and far-OOD AUROC (in %) of the published post-hoc methods and of ours (mean ± std
over the result files, one per checkpoint), each method's rank among the published ones, the
FeatureNorm rank in one sentence, and our baselines beside their published counterparts.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


from featurenorm.errors import run_cli
from featurenorm.reporting.openood import compare_with_openood, format_openood_comparison
from featurenorm.reporting.summary import load_results_files


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+",
                        help="ood_results.json of eval_ood.py --benchmark openood_v1.5, one per checkpoint")
    parser.add_argument("--format", choices=("text", "md"), default="text", help="output format (default text)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    comparison = compare_with_openood(load_results_files(args.results), names=args.results)
    for note in comparison.warnings:
        print(f"warning: {note}", file=sys.stderr)
    sys.stdout.write(format_openood_comparison(comparison, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
