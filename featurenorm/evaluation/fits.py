"""Fitting the methods that learn ID-train statistics, with a cache under ``<save_path>/cache/``.

A cached fit is keyed by the weights, the config keys that change ID-train features
(:data:`FIT_KEYS`) and the method's hyperparameters; an unreadable cache file is refitted, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import files
from ..core.blocks import model_device
from ..methods.base import fits_on_block_norms
from ..training.checkpoint import WeightsSource
from ..config import Config
from .results import FitStatus
from .scoring import collect_features
from ..core.blocks import classifier_parts

# Config keys whose change invalidates fitted ID-train statistics (besides the checkpoint bytes).
FIT_KEYS = ("id_dataset", "dataset", "data_root", "image_size", "resize_size", "interpolation", "mean", "std", "arch",
            "width", "num_classes", "fit_samples", "benchmark", "openood_root", "blocks")


def fit_cache_key(checkpoint_hash: str, cfg: Config, method: Any) -> str:
    """Hash of the checkpoint bytes, the data keys that change ID-train features, and the method."""
    keyed = {k: cfg.to_dict().get(k) for k in FIT_KEYS}
    text = json.dumps({"checkpoint": checkpoint_hash, "config": keyed, "method": method.name,
                       "hparams": method.hparams()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_cached_state(path: Path) -> dict[str, torch.Tensor] | None:
    """A cached fit, or None when it is missing or unreadable (then it is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt or foreign: refit
        print(f"warning: cache file {path} is unreadable; recomputing it", file=sys.stderr)
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        print(f"warning: cache file {path} has unexpected content; recomputing it", file=sys.stderr)
        return None
    return state


def fit_with_cache(cfg: Config, model: nn.Module, methods: dict[str, Any], checkpoint: WeightsSource, fit_loader,
                   amp, progress: bool, is_main: bool, blocks: list[str] | None = None) -> dict[str, FitStatus]:
    """Fit (or load from ``<save_path>/cache/``) every method that needs ID-train statistics; ``blocks`` are
    the candidate blocks whose FeatureNorms the methods with ``fit_on = "block_norms"`` learn from.

    The cache is keyed by the weights (:meth:`WeightsSource.fingerprint`), the config's :data:`FIT_KEYS`
    and the method's hyperparameters.

    Returns ``{method: FitStatus}``.
    """
    fitting = {name: m for name, m in methods.items() if m.fits}
    if not fitting:
        return {}
    cache_dir = cfg.save_dir / "cache"
    ckpt_hash = checkpoint.fingerprint()
    status: dict[str, FitStatus] = {}
    missing = {}
    for name, method in fitting.items():
        path = cache_dir / f"{name}-{fit_cache_key(ckpt_hash, cfg, method)}.pt"
        state = load_cached_state(path)
        if state is not None:
            try:
                method.load_state(state)
                status[name] = FitStatus.CACHED
                continue
            except Exception:
                print(f"warning: cache file {path} does not fit {name}; recomputing it", file=sys.stderr)
        missing[name] = (method, path)
    if status and is_main:
        print(f"reusing cached ID-train fits from {cache_dir}: {', '.join(status)}", file=sys.stderr)
    if missing:
        forward_features, head = classifier_parts(model)
        tapped = blocks if fits_on_block_norms(method for method, _ in missing.values()) else None
        data = collect_features(forward_features, fit_loader(), model_device(model), amp, progress and is_main,
                                model=model, blocks=tapped)
        for name, (method, path) in missing.items():
            state = method.fit(data.input_for(method), data.labels, head)
            status[name] = FitStatus.FITTED
            if is_main:
                with files.atomic_path(path) as tmp:
                    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    return status
