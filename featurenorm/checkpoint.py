"""Checkpoints: atomic writes, and loading that never runs code (``weights_only=True``)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import Config, from_dict
from .errors import UserError
from .io import atomic_path
from .models import build_model

FORMAT = "featurenorm-checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, then rename)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely; every failure is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found; train first (python train.py --config ...) "
                        "or pass --checkpoint PATH")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(f"refused to load '{path}': it holds pickled Python objects that could run code; "
                            "only load checkpoints written by featurenorm from sources you trust") from None
        raise UserError(f"checkpoint '{path}' is corrupt ({text.splitlines()[0]}); retrain or re-download it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"checkpoint '{path}' is truncated or corrupt ({first}); retrain or re-download it") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"'{path}' is not a featurenorm checkpoint (no model/config entries)")
    return state


def checkpoint_config(state: dict[str, Any]) -> Config:
    return from_dict(state["config"], source="checkpoint config")


def model_from_state(state: dict[str, Any], path: str | Path = "checkpoint") -> tuple[nn.Module, Config]:
    cfg = checkpoint_config(state)
    model = build_model(cfg.arch, state["num_classes"], width=cfg.width)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"checkpoint '{path}' does not fit {cfg.arch} with {state['num_classes']} classes "
                        f"({str(err).splitlines()[0]})") from None
    return model, cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """Load a trained model and its resolved config; the model comes back in eval mode on ``device``."""
    state = read_checkpoint(path, device)
    model, cfg = model_from_state(state, path)
    return model.to(device).eval(), cfg


def check_compatible(state: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """The checkpoint must match the config's architecture and class count; say both when not."""
    saved = state["config"]
    if saved.get("arch") != cfg.arch or (cfg.num_classes is not None and state["num_classes"] != cfg.num_classes):
        raise UserError(f"checkpoint '{path}' is {saved.get('arch')} with {state['num_classes']} classes but the config "
                        f"asks for {cfg.arch} with {cfg.num_classes} classes; use the matching config or checkpoint")
    if float(saved.get("width", 1.0)) != float(cfg.width):
        raise UserError(f"checkpoint '{path}' has width {saved.get('width')} but the config has {cfg.width}; "
                        "use the matching config or checkpoint")


def default_checkpoint(cfg: Config, path: str | Path | None) -> Path:
    """``--checkpoint`` when given, else ``<save_path>/last.pt``."""
    return Path(path) if path else cfg.save_dir / "last.pt"


def load_for_config(cfg: Config, path: str | Path, device: torch.device) -> nn.Module:
    """Load the checkpoint a config's run made, checking that the two agree; eval mode, on ``device``."""
    state = read_checkpoint(path, "cpu")
    check_compatible(state, cfg, path)
    model, _ = model_from_state(state, path)
    if cfg.num_classes is None:
        cfg.num_classes = state["num_classes"]
    return model.to(device).eval()
