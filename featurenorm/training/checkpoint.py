"""Checkpoints: atomic writes, and loading that never runs code (``weights_only=True``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, from_dict
from ..errors import UserError
from ..files import atomic_path
from ..models import build_model
from ..models.torchvision_models import is_torchvision_arch, num_categories, resolve_weights, weights_file
from ..data.datasets import num_classes_of
from .state_dicts import STATE_DICT_KEYS, foreign_state_dict, head_classes, load_foreign_weights, torch_load
from .weights import build_configured
from ..models.timm_models import cached_weights

FORMAT = "featurenorm-checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, then rename)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely; every failure is a one-line :class:`UserError`."""
    path = Path(path)
    state = torch_load(path, device)
    if not is_featurenorm_checkpoint(state):
        raise UserError(f"'{path}' is not a featurenorm checkpoint (no model/config/num_classes entries)")
    return state


def is_featurenorm_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and all(key in state for key in ("model", "config", "num_classes"))


# Where other code bases keep the weights inside a checkpoint dict, and the prefixes their wrappers add.
def checkpoint_config(state: dict[str, Any]) -> Config:
    return from_dict(state["config"], source="checkpoint config")


def model_from_state(state: dict[str, Any], path: str | Path = "checkpoint") -> tuple[nn.Module, Config]:
    cfg = checkpoint_config(state)
    model = build_model(cfg.arch, state["num_classes"], width=cfg.width, in_channels=cfg.channels)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"checkpoint '{path}' does not fit {cfg.arch} with {state['num_classes']} classes "
                        f"({str(err).splitlines()[0]})") from None
    return model, cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    cfg: Config | None = None) -> tuple[nn.Module, Config]:
    """Load a trained model and its config; the model comes back in eval mode on ``device``.

    A featurenorm checkpoint carries its config. A checkpoint from elsewhere (see :func:`load_for_config`)
    needs ``cfg`` for its architecture.
    """
    path = Path(path)
    state = torch_load(path, "cpu")
    if is_featurenorm_checkpoint(state):
        model, saved = model_from_state(state, path)
        return model.to(device).eval(), saved
    if cfg is None:
        raise UserError(f"'{path}' is not a featurenorm checkpoint; pass cfg= (a Config naming its arch) to load "
                        "its weights")
    return load_for_config(cfg, path, torch.device(device)), cfg


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
    """The config's model with the checkpoint's weights; eval mode, on ``device``.

    A featurenorm checkpoint must agree with the config (arch, width, classes). A checkpoint from
    elsewhere (a plain state_dict, one under ``state_dict``/``model``/``net``, DDP or torch.compile
    prefixes, OpenOOD's ``fc`` head) is loaded into ``cfg.arch`` built from the config.
    """
    path = Path(path)
    state = torch_load(path)
    if is_featurenorm_checkpoint(state):
        check_compatible(state, cfg, path)
        model, _ = model_from_state(state, path)
        if cfg.num_classes is None:
            cfg.num_classes = state["num_classes"]
    else:
        weights = foreign_state_dict(state)
        if weights is None:
            raise UserError(f"'{path}' holds neither a featurenorm checkpoint nor a state_dict (looked under "
                            f"{', '.join(STATE_DICT_KEYS)}); pass a checkpoint of the configured arch")
        if cfg.num_classes is None:
            cfg.num_classes = head_classes(weights) or _pretrained_classes(cfg)
        if cfg.num_classes is None:
            raise UserError(f"cannot tell the class count of '{path}'; set num_classes in the config")
        model = build_model(cfg.arch, cfg.num_classes, width=cfg.width, in_channels=cfg.channels)
        load_foreign_weights(model, weights, path)
    return _placed(model, cfg, device)


def _placed(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The model in eval mode on ``device``, channels-last when the config asks (the loaders hand over
    channels-last batches too)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _pretrained_classes(cfg: Config) -> int | None:
    """The class count of a torchvision arch's weights (1000 for ImageNet-1K); None for other archs."""
    return num_categories(cfg.arch, cfg.weights) if is_torchvision_arch(cfg.arch) else None


# ``--checkpoint none``: no checkpoint file; the model as the config builds it.
NO_CHECKPOINT = "none"


@dataclass(frozen=True)
class WeightsSource:
    """Where a run's model weights came from.

    Attributes:
        description: what ``block_selection.json`` and ``ood_results.json`` record as ``checkpoint``:
            the file's path, or ``random init (seed S)`` / ``timm pretrained <name>``.
        file: the file the weights were read from (hashed for the fit cache); None when there is none.
    """

    description: str
    file: Path | None = None

    def fingerprint(self) -> str:
        """sha256 of the weights file, else of the description."""
        digest = hashlib.sha256()
        if self.file is None:
            digest.update(self.description.encode())
            return digest.hexdigest()
        with open(self.file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def load_run_model(cfg: Config, checkpoint: str | Path | None, device: torch.device) -> tuple[nn.Module, WeightsSource]:
    """The model select_block.py and eval_ood.py score, in eval mode on ``device``, and where its weights came from.

    - ``checkpoint`` a path: that file (a featurenorm checkpoint or a foreign state_dict, see :func:`load_for_config`);
    - ``checkpoint`` ``"none"``: no file; the model as the config builds it: the torchvision/timm pretrained
      weights when ``pretrained`` is true, else a random init seeded by ``seed`` (the same in every process);
    - ``checkpoint`` None: ``<save_path>/last.pt`` when it exists; else, when ``pretrained`` is true, as for
      ``"none"``; else a UserError (a randomly initialised model is never scored by accident).
    """
    if checkpoint is not None and str(checkpoint) != NO_CHECKPOINT:
        path = Path(checkpoint)
        return load_for_config(cfg, path, device), WeightsSource(str(path), path)
    last = default_checkpoint(cfg, None)
    if checkpoint is None and last.is_file():
        return load_for_config(cfg, last, device), WeightsSource(str(last), last)
    if checkpoint is None and not (cfg.pretrained or cfg.weights_file):
        raise UserError(f"checkpoint '{last}' not found; train first (python train.py --config ...), pass "
                        "--checkpoint PATH, set pretrained true for torchvision/timm weights, or pass "
                        f"--checkpoint {NO_CHECKPOINT} to score the randomly initialised model")
    model, source = _built_model(cfg)
    return _placed(model, cfg, device), source


def _built_model(cfg: Config) -> tuple[nn.Module, WeightsSource]:
    torchvision = is_torchvision_arch(cfg.arch)
    if cfg.pretrained and not (torchvision or cfg.arch.startswith("timm/")):
        raise UserError(f"pretrained weights exist only for torchvision/<name> and timm/<name> archs, not "
                        f"'{cfg.arch}'; set pretrained false and pass --checkpoint PATH")
    num_classes = cfg.num_classes
    if num_classes is None:
        num_classes = _pretrained_classes(cfg) if torchvision else num_classes_of(cfg)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(cfg.seed)  # a random init must be the same in select_block.py and eval_ood.py
        model = build_configured(cfg, num_classes)
    if cfg.weights_file:
        return model, WeightsSource(str(cfg.weights_file), Path(cfg.weights_file))
    if not cfg.pretrained:
        return model, WeightsSource(f"random init (seed {cfg.seed})")
    if torchvision:
        path = weights_file(resolve_weights(cfg.arch.split("/", 1)[1], cfg.weights))
        return model, WeightsSource(str(path), path)
    path = cached_weights(cfg.arch.split("/", 1)[1])[0]  # the file it was just read from (or downloaded to)
    return model, WeightsSource(str(path), path) if path else WeightsSource(f"timm pretrained {cfg.arch[5:]}")
