"""What a ``timm/<name>`` or ``torchvision/<name>`` arch adds to the config: its own evaluation
preprocessing as defaults, and which model keys apply to it.

torchvision and timm themselves load only for such an arch: the two model modules import them inside
the functions that need them.
"""
from __future__ import annotations

from typing import Any

from .models.timm_models import preprocessing as timm_preprocessing
from .models.torchvision_models import preprocessing as torchvision_preprocessing

# the config keys the model's own preprocessing fills in when the config leaves them out
PREPROCESSING_KEYS = ("image_size", "resize_size", "mean", "std", "interpolation")


def preprocessing_defaults(values: dict[str, Any], channels: int) -> dict[str, Any]:
    """The arch's evaluation preprocessing (torchvision weights' ``transforms()``, timm's resolved data config)
    for every key of ``values`` (a config mapping) that is missing; {} for featurenorm's own archs.

    mean/std come only for RGB (``channels`` 3): the models' statistics are per RGB channel.
    """
    arch = values.get("arch", "")
    if all(key in values for key in PREPROCESSING_KEYS):
        return {}
    if arch.startswith("torchvision/"):
        defaults = torchvision_preprocessing(arch, values.get("weights"), values.get("image_size"))
    elif arch.startswith("timm/"):
        defaults = timm_preprocessing(arch, values.get("image_size"))
        if channels != 3:
            defaults = {k: v for k, v in defaults.items() if k not in ("mean", "std")}
    else:
        return {}
    return {key: value for key, value in defaults.items() if key not in values}


def model_key_problem(arch: str, weights: str | None, weights_file: str | None, pretrained: bool) -> tuple[str, str] | None:
    """``(key, why)`` for a model key that does not apply to ``arch``; None when all apply."""
    if weights is not None and not arch.startswith("torchvision/"):
        return "weights", f"names torchvision weights; it applies only to torchvision/<name> archs, not '{arch}'"
    if weights_file is not None and not arch.startswith(("timm/", "torchvision/")):
        return "weights_file", (f"loads into timm/<name> and torchvision/<name> archs, not '{arch}'; pass a "
                                "featurenorm model's weights with --checkpoint")
    if weights_file is not None and pretrained:
        return "weights_file", "replaces the pretrained weights: set pretrained false, or remove weights_file"
    return None
