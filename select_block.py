"""Pick the block whose FeatureNorm best separates ID images from their jigsaw puzzles.

python select_block.py --config conf/digits.json [--checkpoint PATH] [--num-samples N] [--grid G]
                       [--seed S] [--criterion norm_ratio|auroc] [--benchmark paper|openood_v1.5] [--set k=v]
"""
from __future__ import annotations

import argparse
import sys

from featurenorm.config import load_config
from featurenorm.data.benchmarks import BENCHMARKS
from featurenorm.errors import add_common_arguments, is_main_process, run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="NormRatio block selection with jigsaw pseudo-OOD images.")
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", help="model checkpoint (default: <save_path>/last.pt)")
    parser.add_argument("--num-samples", type=int, help="use a seeded subsample of N ID training images (default: all)")
    parser.add_argument("--grid", type=int, help="jigsaw grid size (default: config jigsaw_grid, 3)")
    parser.add_argument("--seed", type=int, help="seed of the subsample and the puzzles (default: config seed)")
    parser.add_argument("--criterion", choices=["norm_ratio", "auroc"], help="selection criterion (default: norm_ratio)")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS),
                        help="whose ID training images to use (default: config key benchmark, paper)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set + ([f"benchmark={args.benchmark}"] if args.benchmark else []))
    from featurenorm.selection import format_block_table, run_selection  # imports torch: after the config check

    result = run_selection(cfg, args.checkpoint, args.num_samples, args.grid, args.seed, args.criterion,
                           progress=not args.no_progress)
    if is_main_process():
        print(format_block_table(result["blocks"], result["selected"]))
        print(f"selected block: {result['selected']['name']} (criterion {result['criterion']}); "
              f"wrote {cfg.save_dir / 'block_selection.json'} and {cfg.save_dir / 'norm_ratio.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
