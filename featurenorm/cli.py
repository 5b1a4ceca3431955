"""The three command-line tools. ``train.py``/``select_block.py``/``eval_ood.py`` at the repository root
and the console scripts ``featurenorm-train``/``featurenorm-select``/``featurenorm-eval`` both call these.

Each ``*_main(argv)`` parses the flags, loads the config and hands both to its command in
:mod:`featurenorm.runs.commands`; the ``console_*`` entry points wrap them in :func:`featurenorm.errors.run_cli`, which turns a
:class:`~featurenorm.errors.UserError` into a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Sequence

from .benchmarks import BENCHMARKS
from .config import load_config
from .core.criteria import CRITERIA
from .errors import UserError, run_cli


def add_common_arguments(parser, config_default: str | None = None) -> None:
    """The flags every run script shares: ``--config``, ``--set``, ``--no-progress``, ``--debug``."""
    if config_default is None:
        parser.add_argument("--config", required=True, help="JSON config file (see conf/)")
    else:
        parser.add_argument("--config", default=config_default, help=f"JSON config file (default: {config_default})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; the value is parsed as JSON when it parses (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags the three tools share: ``--config``, ``--set``, ``--no-progress``, ``--debug``, ``--plugin``."""
    add_common_arguments(parser)
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a Python module (dotted name or .py file) first, so that the models and methods "
                             "it registers can be named (repeatable)")
    parser.add_argument("--weights-file", metavar="PATH",
                        help="a state_dict for the timm/<name> or torchvision/<name> arch (config key weights_file), "
                             "e.g. saved from timm.create_model(...).state_dict(); loaded weights_only")


def import_plugins(specs: Sequence[str]) -> None:
    """Import each ``--plugin``: a dotted module name or a path to a ``.py`` file. Its registrations
    (``register_model``, ``register_method``, ...) run on import."""
    for spec in specs:
        path = Path(spec)
        if spec.endswith(".py"):
            if not path.is_file():
                raise UserError(f"--plugin '{spec}' not found; pass an existing .py file or a module name")
            loader_spec = importlib.util.spec_from_file_location(f"featurenorm_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[loader_spec.name] = module
            loader_spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as err:
                raise UserError(f"--plugin '{spec}': {err}; pass a module on PYTHONPATH or a .py file") from None


def _load(args: argparse.Namespace):
    """Import the plugins, then load the config with its ``--set`` overrides (``--benchmark`` is one more)."""
    import_plugins(args.plugin)
    benchmark = getattr(args, "benchmark", None)
    extra = [f"benchmark={benchmark}"] if benchmark else []
    if args.weights_file:
        extra.append(f"weights_file={json.dumps(args.weights_file)}")
    return load_config(args.config, list(args.set) + extra)


# The module that runs each command (featurenorm.runs.commands), imported by name once the flags and the config
# have been checked, as a command table: a config mistake is then reported in a quarter of a second rather than
# after the seconds that importing torch takes. tests/test_layout.py counts this import like any other.
COMMANDS = "featurenorm.runs.commands"


def _commands():
    return importlib.import_module(COMMANDS)


CHECKPOINT_HELP = ("model checkpoint (default: <save_path>/last.pt, or the pretrained weights when pretrained is true "
                   "and there is none); foreign state_dicts and OpenOOD checkpoints are accepted for the configured "
                   "arch; 'none': the model as the config builds it (pretrained weights, else random init by seed)")


def train_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="train.py",
                                     description="Train a CIFAR-style classifier for FeatureNorm OOD detection.")
    _add_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <save_path>/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over even if <save_path> holds a run")
    args = parser.parse_args(argv)
    cfg = _load(args)
    return _commands().train(cfg, args)


def select_main(argv: Sequence[str]) -> int:
    criteria = "; ".join(f"{name}: {criterion.rule}" for name, criterion in CRITERIA.items())
    parser = argparse.ArgumentParser(prog="select_block.py",
                                     description="NormRatio block selection with jigsaw (and other) pseudo-OOD "
                                                 "images made from the ID training images.")
    _add_arguments(parser)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--num-samples", type=int, help="use a seeded subsample of N ID training images (default: "
                                                        "config selection_samples; all, ImageNet 10000)")
    parser.add_argument("--grid", type=int, help="jigsaw grid size (default: config jigsaw_grid, 3)")
    parser.add_argument("--seed", type=int, help="seed of the subsample, the puzzles and the other pseudo-OOD images "
                                                "(default: config seed)")
    parser.add_argument("--criterion", choices=list(CRITERIA),
                        help=f"selection criterion (default: config criterion, norm_ratio). {criteria}")
    parser.add_argument("--pseudo-ood", metavar="KINDS",
                        help="comma-separated pseudo-OOD kinds to measure, jigsaw among them, or all: jigsaw, "
                             "pixel_shuffle, noise, mixup, blur (default: config pseudo_ood, jigsaw)")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS),
                        help="whose ID training images to use (default: config key benchmark, paper)")
    args = parser.parse_args(argv)
    cfg = _load(args)
    return _commands().select(cfg, args)


def eval_main(argv: Sequence[str]) -> int:
    method_names = _commands().method_names  # the --methods help lists the registered methods (torch loads here)
    parser = argparse.ArgumentParser(prog="eval_ood.py", description="OOD evaluation: FPR95, AUROC, AUPR-In/Out "
                                                                      "for each method and OOD set.")
    _add_arguments(parser)
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--methods", default="all", help=f"comma-separated, or all (default): {','.join(method_names())}")
    parser.add_argument("--block", help="score FeatureNorm at this block instead of block_selection.json's")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=PATH",
                        help="an extra OOD folder of images (repeatable); a missing path is an error")
    parser.add_argument("--save-scores", action="store_true", help="also write per-image scores to scores.npz")
    parser.add_argument("--all-blocks", action="store_true", help="also evaluate FeatureNorm at every block")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS),
                        help="which data sets to score (default: config key benchmark, paper)")
    args = parser.parse_args(argv)
    cfg = _load(args)
    return _commands().evaluate(cfg, args)


def console_train() -> int:
    return run_cli(train_main)


def console_select() -> int:
    return run_cli(select_main)


def console_eval() -> int:
    return run_cli(eval_main)
