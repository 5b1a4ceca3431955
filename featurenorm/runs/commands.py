"""What each command-line tool does once :mod:`featurenorm.cli` has parsed its flags and checked its config:
run the stage, print its summary, and return the exit status.

:mod:`featurenorm.cli` imports this module by name (:data:`featurenorm.cli.COMMANDS`) only after the config
check, so that a config mistake is reported before torch loads.
"""
from __future__ import annotations

import argparse
import sys

from ..config import Config
from ..core.tap import BlockError
from ..errors import reported
from ..methods import method_names
from ..reporting.tables import format_block_table, summary_text
from ..runtime import is_main_process
from ..training.loop import StopRequested, train as train_model
from .evaluate import run_evaluation
from .select import run_selection

__all__ = ["train", "select", "evaluate", "method_names"]


def train(cfg: Config, args: argparse.Namespace) -> int:
    """train.py: train, or stop cleanly on a signal (exit status of the signal, checkpoint saved)."""
    try:
        metrics = train_model(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except StopRequested as stop:
        print(f"stopped by {stop}; saved {cfg.save_dir / 'last.pt'}; continue with --resume", file=sys.stderr)
        return stop.exit_code
    print(f"done: test accuracy {metrics.get('test_acc', float('nan')):.4f}; checkpoint {cfg.save_dir / 'last.pt'}")
    return 0


def select(cfg: Config, args: argparse.Namespace) -> int:
    """select_block.py: select the block, print the per-block table and what was written."""
    with reported(BlockError):  # e.g. the config key 'blocks' names a module that cannot be read
        selection = run_selection(cfg, args.checkpoint, args.num_samples, args.grid, args.seed, args.criterion,
                                  progress=not args.no_progress, pseudo_ood=args.pseudo_ood)
    if is_main_process():
        print(format_block_table(selection.rows, selection.selected))
        print(f"selected block: {selection.block} (criterion {selection.criterion}); "
              f"wrote {cfg.save_dir / 'block_selection.json'} and {cfg.save_dir / 'norm_ratio.png'}")
    return 0


def evaluate(cfg: Config, args: argparse.Namespace) -> int:
    """eval_ood.py: score the ID test set and the OOD sets, print the summary and what was written."""
    with reported(BlockError):
        run = run_evaluation(cfg, args.checkpoint, args.methods, args.block, args.ood, args.save_scores,
                             args.all_blocks, progress=not args.no_progress)
    if is_main_process():
        print(summary_text(run.results))
        print("wrote: " + ", ".join(str(p) for p in run.written))
    return 0
