"""Any torchvision classification model, as ``torchvision/<name>``, exactly as torchvision builds it.

The model is not wrapped: its module names are torchvision's own (``layer4.1``, ``features.16``),
and :func:`featurenorm.core.blocks.candidate_blocks` / ``classifier_parts`` find its blocks and
head. Pretrained weights come through torchvision's weights enums and the torch hub cache
(``torch.hub.get_dir()/checkpoints``); the network is used only when the config asks for it
(``download: true``). The weights' metadata also gives the evaluation preprocessing (resize, crop,
mean, std, interpolation) that :func:`featurenorm.config.from_dict` fills in as config defaults.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import torch.hub
import torch.nn as nn

from ..errors import UserError
from ..arch_config import TORCHVISION as PREFIX, resolve_weights
from .registry import Builder, register_family


def is_torchvision_arch(arch: str) -> bool:
    return arch.startswith(PREFIX)


def num_categories(arch: str, weights: str | None = None) -> int:
    """How many classes the weights were trained on (1000 for ImageNet-1K)."""
    return len(resolve_weights(arch[len(PREFIX):], weights).meta["categories"])


def weights_file(member: Any) -> Path:
    """Where torch hub keeps (or will keep) the weights file: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """torch hub loads cached files with ``weights_only=False``; force the safe loader (weights hold only tensors)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def build_torchvision(name: str, num_classes: int | None = None, pretrained: bool = False, width: float = 1.0,
                      weights: str | None = None, download: bool = False, in_channels: int = 3,
                      **_: Any) -> nn.Module:
    """torchvision's ``get_model(name)``: random init, or the weights ``weights`` when ``pretrained``.

    Args:
        num_classes: outputs of the head; None: the weights' category count. Must match it when pretrained.
        weights: a member of the model's weights enum (``IMAGENET1K_V1``); None: ``DEFAULT``.
        download: fetch a weights file missing from the torch hub cache (else a one-line UserError).
    """
    from torchvision import models  # lazy: torchvision loads only on this path

    if in_channels != 3:
        raise UserError(f"torchvision/{name} takes RGB images; set channels 3 to replicate the gray channel")
    if width != 1.0:
        raise UserError("config key 'width' applies only to featurenorm's own architectures; remove it for "
                        "torchvision models")
    member = resolve_weights(name, weights)
    categories = len(member.meta["categories"])
    if not pretrained:
        return models.get_model(name, weights=None, num_classes=num_classes or categories)
    if num_classes is not None and num_classes != categories:
        raise UserError(f"torchvision's {member} weights have {categories} classes but num_classes is "
                        f"{num_classes}; remove num_classes or set it to {categories}")
    path = weights_file(member)
    where = f"put {path.name} (from {member.url}) in {path.parent}"
    if not path.is_file() and not download:
        raise UserError(f"pretrained weights {member} are not in the torch hub cache: {where}, "
                        "or set download true to fetch them")
    try:
        with _weights_only_loads():
            return models.get_model(name, weights=member)
    except OSError as err:  # no network (URLError), refused connection, full disk
        raise UserError(f"could not download {member} ({err}); {where}") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        if "hash" in str(err):
            raise UserError(f"the download of {path.name} is corrupt ({err}); delete {path} and retry") from None
        raise UserError(f"'{path}' could not be loaded ({str(err).splitlines()[0]}); delete it and download "
                        f"it again from {member.url}") from None


@register_family("torchvision/<name>")
def _torchvision_family(name: str) -> Builder | None:
    if not name.startswith(PREFIX):
        return None
    return lambda num_classes, **options: build_torchvision(name[len(PREFIX):], num_classes, **options)
