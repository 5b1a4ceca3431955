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

from ..errors import UserError, check_new_name

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(num_classes, width=1.0, **options) -> nn.Module`` under ``name``.

    Raises:
        ValueError: another function holds ``name`` (:func:`featurenorm.errors.check_new_name`).
    """
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        check_new_name(MODELS, name, fn, "model")
        MODELS[name] = fn
        return fn
    return wrap


Builder = Callable[..., nn.Module]
# family pattern (as users read it) -> resolver: a model name -> its builder, or None if not of the family
FAMILIES: dict[str, Callable[[str], Builder | None]] = {}


def register_family(pattern: str) -> Callable[[Callable[[str], Builder | None]], Callable[[str], Builder | None]]:
    """Decorator: register a resolver for a family of names, e.g. ``wrn{depth}_{widen}``; the family's module
    does this, so that the registry imports none of them."""
    def wrap(resolver: Callable[[str], Builder | None]) -> Callable[[str], Builder | None]:
        FAMILIES[pattern] = resolver
        return resolver
    return wrap


def model_names() -> list[str]:
    """The registered names; any timm model is also available as ``timm/<name>``, and any torchvision
    classification model as ``torchvision/<name>``."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a model by name: a registered one, or one of a family (``wrn{depth}_{widen}``, ``timm/<name>``,
    ``torchvision/<name>``), which the family's module resolves.

    ``options``: ``width``, ``pretrained``; for torchvision models also ``weights`` and ``download``
    (see :func:`featurenorm.models.torchvision_models.build_torchvision`).
    """
    if name in MODELS:
        return MODELS[name](num_classes, **options)
    for resolve in FAMILIES.values():
        builder = resolve(name)
        if builder is not None:
            return builder(num_classes, **options)
    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown architecture '{name}'{hint}; available: {', '.join(model_names())}, "
                    f"{', '.join(FAMILIES)}")


def block_names(model: nn.Module) -> list[str]:
    """The ordered block names of a model built by :func:`build_model` (or any model with ``block_names``)."""
    names = getattr(model, "block_names", None)
    if names is None:
        raise UserError(f"{type(model).__name__} declares no block_names; set the config key 'blocks'")
    return list(names)


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))
