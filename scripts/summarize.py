#!/usr/bin/env python
"""Mean ± std of OOD metrics over runs, like the paper's table (logic in featurenorm/reporting/summary.py).

Example:
    python scripts/summarize.py runs/cifar10_resnet18_seed*/ood_results.json --format md

FPR95 and AUROC are printed in percent; std is the sample std over runs (ddof=1; 0 for one run).
Warnings (runs that differ in id_dataset, arch or OOD sets) go to stderr.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


from featurenorm.errors import run_cli
from featurenorm.reporting.summary import format_summary, load_results_files, summarize_results


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="ood_results.json files, one per run")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="output format (default md)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    results = load_results_files(args.results)
    summary = summarize_results(results, names=args.results)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(format_summary(summary, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
