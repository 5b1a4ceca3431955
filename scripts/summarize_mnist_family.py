#!/usr/bin/env python
"""Tables and plots of the MNIST-family reproduction (logic in featurenorm/reporting/seed_tables.py).

    .venv/bin/python scripts/summarize_mnist_family.py runs/mnist_family --out results/mnist_family

Reads RUNS/<id>_seed<N>/{block_selection.json,ood_results.json} for id fashion_mnist and mnist, and
RUNS/timing.tsv; writes summary.md (the README's tables), summary.json, <id>_methods.md (every
method's FPR95 / AUROC / AUPR-In on every OOD set) and <id>_norm_ratio_vs_auroc.png (seed means).
"""
from __future__ import annotations

import argparse
import sys

from featurenorm.errors import run_cli
from featurenorm.reporting.seed_tables import write_family_summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the folder scripts/reproduce_mnist_family.sh wrote (runs/mnist_family)")
    parser.add_argument("--out", default="results/mnist_family", help="where to write (default results/mnist_family)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    write_family_summary(args.runs, args.out)
    print(open(f"{args.out}/summary.md").read())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
