"""The model a config describes: ``build_model`` with the config's model keys, then its ``weights_file``.

``weights_file`` is a state_dict a user holds for a ``timm/<name>`` or ``torchvision/<name>`` architecture
(saved from ``timm.create_model(...).state_dict()`` or a torchvision model, a paper's release, a model zoo):
its keys are the architecture's own (``conv1.weight``), as timm or torchvision name them, with the wrapper
prefixes ``--checkpoint`` accepts (DDP's ``module.``, torch.compile's ``_orig_mod.``) and the same nesting
(under ``state_dict``/``model``/``net``). It is read with ``weights_only`` (or as safetensors), never as code.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .state_dicts import STATE_DICT_KEYS, foreign_state_dict, load_foreign_weights, torch_load
from ..config import Config
from ..errors import UserError
from ..models import build_model
from ..models.timm_models import TimmClassifier

# where torchvision and timm classifiers keep their output layer, for a file's class count
HEAD_KEYS = ("fc", "head", "classifier", "head.fc", "heads.head", "classifier.1", "classifier.3", "classifier.6")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``, wrapper prefixes removed; a one-line UserError when it is none."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights_file '{path}' not found; pass a state_dict saved with torch.save(model.state_dict(), "
                        "PATH) or a .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: optional, only for .safetensors files

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for damaged headers
            raise UserError(f"weights_file '{path}' is not a readable safetensors file ({err})") from None
    else:
        state = torch_load(path)
    weights = foreign_state_dict(state)
    if weights is None:
        raise UserError(f"weights_file '{path}' holds no state_dict (looked under {', '.join(STATE_DICT_KEYS)}); "
                        "save one with torch.save(model.state_dict(), PATH)")
    return weights


def architecture_module(model: nn.Module) -> nn.Module:
    """The module whose keys are timm's or torchvision's own: the wrapped timm network, else the model."""
    return model.net if isinstance(model, TimmClassifier) else model


def file_classes(weights: dict[str, torch.Tensor]) -> int | None:
    """The class count of a state_dict's classifier, when it sits under one of the usual names."""
    for name in HEAD_KEYS:
        weight = weights.get(f"{name}.weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None


def build_configured(cfg: Config, num_classes: int | None) -> nn.Module:
    """``build_model`` with the config's model keys; with ``weights_file``, its weights loaded strictly.

    Args:
        num_classes: outputs of the head when neither the config's ``num_classes`` nor the weights
            file's classifier gives them.
    """
    weights = read_weights_file(cfg.weights_file) if cfg.weights_file else None
    num_classes = cfg.num_classes or (weights is not None and file_classes(weights)) or num_classes
    model = build_model(cfg.arch, num_classes, width=cfg.width, in_channels=cfg.channels, pretrained=cfg.pretrained,
                        weights=cfg.weights, download=cfg.download)
    if weights is not None:
        load_foreign_weights(architecture_module(model), weights, cfg.weights_file, what="weights_file")
    return model
