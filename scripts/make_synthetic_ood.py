#!/usr/bin/env python
"""Write the four OOD sets made from what installed packages ship (featurenorm/data/synthetic.py).

    .venv/bin/python scripts/make_synthetic_ood.py ROOT [--image-size 28] [--count 1000] [--seed 0]

Writes ROOT/photos, ROOT/letters, ROOT/gaussian_noise and ROOT/uniform_noise (RGB PNGs); a folder
that already holds the same set is reused. Pass them to eval_ood.py as --ood NAME=ROOT/NAME.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featurenorm.data.synthetic import write_synthetic_ood
from featurenorm.errors import UserError, run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="parent folder of the four sets")
    parser.add_argument("--image-size", type=int, default=28, help="side of the square images (default 28)")
    parser.add_argument("--count", type=int, default=1000, help="images per set (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes (default 0)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    try:
        folders = write_synthetic_ood(Path(args.root), args.image_size, args.count, args.seed)
    except ValueError as err:
        raise UserError(f"{err}; pass positive --image-size and --count") from None
    for name, folder in folders.items():
        print(f"{name}={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
