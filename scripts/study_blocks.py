#!/usr/bin/env python
"""Tables and the plot of the block-selection study (logic in featurenorm/reporting/block_study.py).

    .venv/bin/python scripts/study_blocks.py --dev RUN... --held-out RUN... [--out results/block_study]
        [--without SET,SET]

Each RUN folder holds block_selection.json (several pseudo-OOD kinds) and ood_results.json written
with --all-blocks. The criterion with the smallest mean gap on the --dev models is recommended, and
reported on the --held-out ones; --without adds the same table with those OOD sets left out of the
averages. Writes study.md, study.json, evidence.png and gaps.png.
"""
from __future__ import annotations

import argparse
import sys

from featurenorm.reporting.block_study import run_study
from featurenorm.errors import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", nargs="+", required=True, metavar="RUN", help="development run folders")
    parser.add_argument("--held-out", nargs="+", required=True, metavar="RUN", help="held-out run folders")
    parser.add_argument("--out", default="results/block_study", help="where to write (default results/block_study)")
    parser.add_argument("--without", default="", metavar="SETS",
                        help="comma-separated OOD sets to leave out of a second table (e.g. the noise sets)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    run_study(args.dev, args.held_out, args.out, [name for name in args.without.split(",") if name])
    print(open(f"{args.out}/study.md").read())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
