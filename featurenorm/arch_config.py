"""What a ``timm/<name>`` or ``torchvision/<name>`` arch adds to the config: its own evaluation
preprocessing as defaults, and which model keys apply to it.

No torch import here, so that a config is checked before torch loads: torchvision and timm load inside the
functions below, for such an arch only. The model families (:mod:`featurenorm.models.torchvision_models`,
:mod:`featurenorm.models.timm_models`) read the weights enums and pretrained configs through these functions.
"""
from __future__ import annotations

import difflib
import math
from typing import Any

from .errors import UserError

TORCHVISION = "torchvision/"
TIMM = "timm/"

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
    if arch.startswith(TORCHVISION):
        defaults = torchvision_preprocessing(arch, values.get("weights"), values.get("image_size"))
    elif arch.startswith(TIMM):
        defaults = timm_preprocessing(arch, values.get("image_size"))
        if channels != 3:
            defaults = {k: v for k, v in defaults.items() if k not in ("mean", "std")}
    else:
        return {}
    return {key: value for key, value in defaults.items() if key not in values}


def model_key_problem(arch: str, weights: str | None, weights_file: str | None, pretrained: bool) -> tuple[str, str] | None:
    """``(key, why)`` for a model key that does not apply to ``arch``; None when all apply."""
    if weights is not None and not arch.startswith(TORCHVISION):
        return "weights", f"names torchvision weights; it applies only to torchvision/<name> archs, not '{arch}'"
    if weights_file is not None and not arch.startswith((TIMM, TORCHVISION)):
        return "weights_file", (f"loads into timm/<name> and torchvision/<name> archs, not '{arch}'; pass a "
                                "featurenorm model's weights with --checkpoint")
    if weights_file is not None and pretrained:
        return "weights_file", "replaces the pretrained weights: set pretrained false, or remove weights_file"
    return None


# ------------------------------------------------------------------ torchvision/<name>
def classification_names() -> list[str]:
    """torchvision's classification model names (``resnet50``, ``vgg16``, ...), sorted."""
    from torchvision import models  # lazy: torchvision loads only on this path

    return sorted(models.list_models(module=models))


def _check_name(name: str) -> None:
    names = classification_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{TORCHVISION}{close[0]}'?)" if close else ""
        raise UserError(f"unknown torchvision classification model '{name}'{hint}; list them with python -c "
                        "'import torchvision; print(torchvision.models.list_models(module=torchvision.models))'")


def resolve_weights(name: str, weights: str | None = None) -> Any:
    """The weights enum member ``weights`` (e.g. ``IMAGENET1K_V1``) of model ``name``; None: its ``DEFAULT``."""
    from torchvision import models  # lazy: torchvision loads only on this path

    _check_name(name)
    enum = models.get_model_weights(name)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    chosen = weights or "DEFAULT"
    if chosen not in enum.__members__:
        raise UserError(f"config key 'weights': {name} has no weights '{weights}'; valid: {', '.join(members)} "
                        "(or leave it out for DEFAULT)")
    return enum[chosen]


def torchvision_preprocessing(arch: str, weights: str | None = None, image_size: int | None = None) -> dict[str, Any]:
    """The evaluation preprocessing of the weights' ``transforms()``, as config values.

    Returns ``image_size`` (the crop), ``resize_size`` (the shorter side before the crop), ``mean``,
    ``std`` and ``interpolation``. When ``image_size`` is given, ``resize_size`` keeps the weights'
    resize/crop ratio (256/224 for most ImageNet weights).
    """
    member = resolve_weights(arch[len(TORCHVISION):], weights)
    transform = member.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    if image_size is not None:
        resize = max(image_size, round(image_size * resize / crop))
    return {"image_size": image_size or crop, "resize_size": resize, "mean": [float(v) for v in transform.mean],
            "std": [float(v) for v in transform.std], "interpolation": transform.interpolation.value}


# ------------------------------------------------------------------ timm/<name>
def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` (with or without a tag: the default tag then), as a dict."""
    from timm.models import PretrainedCfg, get_pretrained_cfg  # lazy: timm loads only for timm/<name> archs

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as err:  # a tag the architecture does not have
        raise UserError(f"timm model '{name}': {err}; list the tags with python -c 'import timm; "
                        f"print(timm.list_pretrained(\"{name.split('.')[0]}*\"))'") from None
    return (cfg or PretrainedCfg()).to_dict()


def timm_preprocessing(arch: str, image_size: int | None = None) -> dict[str, Any]:
    """The evaluation preprocessing of ``timm.data.resolve_data_config`` for the model, as config values.

    ``resize_size`` is timm's ``floor(image_size / crop_pct)``, also when ``image_size`` is given.
    """
    from timm.data import resolve_data_config  # lazy: timm loads only for timm/<name> archs

    data = resolve_data_config(pretrained_cfg=pretrained_cfg(arch[len(TIMM):]))
    if data.get("crop_mode", "center") != "center" or data["input_size"][1] != data["input_size"][2]:
        raise UserError(f"{arch} evaluates with crop_mode '{data.get('crop_mode')}' at {data['input_size'][1:]}, which "
                        "featurenorm's eval transform does not do; set image_size, resize_size, mean, std and "
                        "interpolation in the config")
    size = image_size or int(data["input_size"][1])
    return {"image_size": size, "resize_size": math.floor(size / data["crop_pct"]), "mean": list(data["mean"]),
            "std": list(data["std"]), "interpolation": data["interpolation"]}
