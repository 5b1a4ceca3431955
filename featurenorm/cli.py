"""The three command-line tools. ``train.py``/``select_block.py``/``eval_ood.py`` at the repository root
and the console scripts ``featurenorm-train``/``featurenorm-select``/``featurenorm-eval`` both call these.

Each ``*_main(argv)`` parses the flags, loads the config and calls one library function; the
``console_*`` entry points wrap them in :func:`featurenorm.errors.run_cli`, which turns a
:class:`~featurenorm.errors.UserError` into a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .config import load_config
from .errors import add_common_arguments, is_main_process, run_cli

CHECKPOINT_HELP = ("model checkpoint (default: <save_path>/last.pt, or the pretrained weights when pretrained is true "
                   "and there is none); foreign state_dicts and OpenOOD checkpoints are accepted for the configured "
                   "arch; 'none': the model as the config builds it (pretrained weights, else random init by seed)")


def train_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="train.py",
                                     description="Train a CIFAR-style classifier for FeatureNorm OOD detection.")
    add_common_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <save_path>/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over even if <save_path> holds a run")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    from .engine import StopRequested, train  # imports torch: after the config is known to be good

    try:
        metrics = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except StopRequested as stop:
        print(f"stopped by {stop}; saved {cfg.save_dir / 'last.pt'}; continue with --resume", file=sys.stderr)
        return stop.exit_code
    print(f"done: test accuracy {metrics.get('test_acc', float('nan')):.4f}; checkpoint {cfg.save_dir / 'last.pt'}")
    return 0


def select_main(argv: Sequence[str]) -> int:
    from .selection import CRITERIA

    parser = argparse.ArgumentParser(prog="select_block.py",
                                     description="NormRatio block selection with jigsaw pseudo-OOD images.")
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--num-samples", type=int, help="use a seeded subsample of N ID training images (default: "
                                                        "config selection_samples; all, ImageNet 10000)")
    parser.add_argument("--grid", type=int, help="jigsaw grid size (default: config jigsaw_grid, 3)")
    parser.add_argument("--seed", type=int, help="seed of the subsample and the puzzles (default: config seed)")
    parser.add_argument("--criterion", choices=list(CRITERIA), help="selection criterion (default: norm_ratio)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    from .selection import format_block_table, run_selection  # imports torch: after the config check

    selection = run_selection(cfg, args.checkpoint, args.num_samples, args.grid, args.seed, args.criterion,
                              progress=not args.no_progress)
    if is_main_process():
        print(format_block_table(selection.rows, selection.selected))
        print(f"selected block: {selection.selected['name']} (criterion {selection.criterion}); "
              f"wrote {cfg.save_dir / 'block_selection.json'} and {cfg.save_dir / 'norm_ratio.png'}")
    return 0


def eval_main(argv: Sequence[str]) -> int:
    from .methods import method_names

    parser = argparse.ArgumentParser(prog="eval_ood.py", description="OOD evaluation: FPR95, AUROC, AUPR-In/Out "
                                                                      "for each method and OOD set.")
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--methods", default="all", help=f"comma-separated, or all (default): {','.join(method_names())}")
    parser.add_argument("--block", help="score FeatureNorm at this block instead of block_selection.json's")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=PATH",
                        help="an extra OOD folder of images (repeatable); a missing path is an error")
    parser.add_argument("--save-scores", action="store_true", help="also write per-image scores to scores.npz")
    parser.add_argument("--all-blocks", action="store_true", help="also evaluate FeatureNorm at every block")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    from .evaluation import run_evaluation
    from .report import summary_text

    run = run_evaluation(cfg, args.checkpoint, args.methods, args.block, args.ood, args.save_scores,
                         args.all_blocks, progress=not args.no_progress)
    if is_main_process():
        print(summary_text(run.results))
        print("wrote: " + ", ".join(str(p) for p in run.written))
    return 0


def console_train() -> int:
    return run_cli(train_main)


def console_select() -> int:
    return run_cli(select_main)


def console_eval() -> int:
    return run_cli(eval_main)
