#!/usr/bin/env python
"""Throughput of scoring, block selection and training relative to a bare forward pass.

The logic lives in featurenorm/tools/throughput.py; its docstring defines the six figures.

Example:
    python scripts/benchmark.py                      # CPU: resnet18 width 0.5, batch 64
    python scripts/benchmark.py --device cuda --json # full width, batch 512, bf16, channels_last
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


from featurenorm.tools.throughput import default_settings, format_table, run_benchmark
from featurenorm.errors import run_cli


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--arch", default=None, help="model (default resnet18)")
    parser.add_argument("--width", type=float, default=None, help="channel multiplier (default 0.5 on CPU, 1 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default 64 on CPU, 512 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions; the median is reported")
    parser.add_argument("--steps", type=int, default=None, help="batches per timed side of a repetition")
    parser.add_argument("--block", default=None, help="block scored by FeatureNorm (default layer4.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    settings = default_settings(args.device, arch=args.arch, width=args.width, batch_size=args.batch_size,
                                repeats=args.repeats, steps=args.steps, block=args.block)
    report = run_benchmark(settings, log=None if args.json else lambda text: print(text, file=sys.stderr))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
