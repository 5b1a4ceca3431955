"""Model registry: ``@register_model`` adds a builder; ``build_model`` makes one by name.

Every model built here exposes the same small interface, which the OOD methods rely on:

- ``forward_features(x) -> (B, D)``: the pooled penultimate feature vector;
- ``head``: the final ``nn.Linear`` classifier, so ``forward(x) == head(forward_features(x))``;
- ``block_names``: the ordered module names (from ``named_modules()``) that block selection scores.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from ..errors import UserError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(num_classes, width=1.0, **options) -> nn.Module`` under ``name``."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn
    return wrap


def model_names() -> list[str]:
    """The registered names; any timm model is also available as ``timm/<name>``, and any torchvision
    classification model as ``torchvision/<name>``."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a model by name. ``wrn{depth}_{widen}``, ``timm/<name>`` and ``torchvision/<name>`` are parsed on the fly.

    ``options``: ``width``, ``pretrained``; for torchvision models also ``weights`` and ``download``
    (see :func:`featurenorm.models.torchvision_models.build_torchvision`).
    """
    from .torchvision_models import PREFIX, build_torchvision

    if name.startswith(PREFIX):
        return build_torchvision(name[len(PREFIX):], num_classes, **options)
    if name.startswith("timm/"):
        from .timm_models import build_timm
        return build_timm(name[len("timm/"):], num_classes, **options)
    if name in MODELS:
        return MODELS[name](num_classes, **options)
    from .wrn import parse_wrn_name
    wrn = parse_wrn_name(name)
    if wrn is not None:
        from .wrn import WideResNet
        depth, widen = wrn
        return WideResNet(depth, widen, num_classes, **options)
    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown architecture '{name}'{hint}; available: {', '.join(model_names())}, "
                    "wrn{depth}_{widen}, timm/<name>, torchvision/<name>")


def block_names(model: nn.Module) -> list[str]:
    """The ordered block names of a model built by :func:`build_model` (or any model with ``block_names``)."""
    names = getattr(model, "block_names", None)
    if names is None:
        raise UserError(f"{type(model).__name__} declares no block_names; set the config key 'blocks'")
    return list(names)


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))
