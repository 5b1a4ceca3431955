#!/usr/bin/env python
"""Our OOD results beside the paper's CIFAR-10 table (logic in featurenorm/reporting/paper.py).

Example:
    python scripts/compare_paper.py runs/cifar10_resnet18_seed0/ood_results.json

Prints FPR95 and AUROC (in %) for ours and the paper, their difference (ours - paper, in
percentage points) for every method and OOD set both have, each method's average, and a line
comparing our selected block with the paper's (by index). For the paper's ImageNet archs
(torchvision/resnet50, torchvision/vgg16, torchvision/mobilenet_v3_large) only the block line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


from featurenorm.errors import run_cli
from featurenorm.reporting.paper import compare_with_paper, format_comparison
from featurenorm.reporting.summary import load_results_files


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="an ood_results.json written by eval_ood.py")
    parser.add_argument("--arch", default=None,
                        help="paper architecture to compare with: resnet18, wrn28_10, vgg11, or for ImageNet "
                             "torchvision/resnet50, torchvision/vgg16, torchvision/mobilenet_v3_large "
                             "(default: the results' arch)")
    parser.add_argument("--format", choices=("text", "md"), default="text", help="output format (default text)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    comparison = compare_with_paper(load_results_files([args.results])[0], arch=args.arch)
    sys.stdout.write(format_comparison(comparison, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
