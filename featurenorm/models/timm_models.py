"""Any timm model, as ``timm/<name>``, behind the same interface as the built-in models.

The wrapped model sits under the attribute ``net``, so its block names read
``net.<timm module name>``. The blocks are the children of each feature stage that timm's
``feature_info`` names (for example ``net.layer1.0`` or ``net.stages.0.blocks.1``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.hub
import torch.nn as nn

from ..errors import UserError
from ..core.timm_stages import stage_layouts
from ..arch_config import TIMM as PREFIX, pretrained_cfg
from .registry import Builder, register_family


class TimmClassifier(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        head = net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise UserError(f"timm model {type(net).__name__} has a {type(head).__name__} head; "
                            "featurenorm needs a single nn.Linear classifier")
        self.head = head
        self.num_features = head.in_features
        self.block_layouts = {f"net.{n}": layout for n, layout in stage_layouts(net).items()}
        self.block_names = list(self.block_layouts)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def cached_weights(name: str) -> tuple[Path | None, str]:
    """The local file of ``timm/<name>``'s pretrained weights (None when missing), and where to put it.

    timm fetches weights from the Hugging Face hub (into its cache) when the config names a hub id, else
    from a URL (into ``torch.hub.get_dir()/checkpoints``); both places are only looked at, never fetched.
    """
    cfg = pretrained_cfg(name)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache  # lazy: optional, only for timm weights in the Hugging Face cache

        repo, _, revision = cfg["hf_hub_id"].partition("@")
        filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HF_FILENAMES)
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found), ""
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / (revision or "main")
        return None, f"put {filenames[0]} (from https://huggingface.co/{repo}) in {folder}"
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
        return (path if path.is_file() else None), f"put {path.name} (from {cfg['url']}) in {path.parent}"
    raise UserError(f"timm model '{name}' has no pretrained weights; set pretrained false or pass weights_file")


# the file names timm asks the hub for, safetensors first
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def _create(name: str, pretrained: bool, download: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that reads pretrained weights from the local caches, and downloads only when asked."""
    import timm  # lazy: timm loads only for timm/<name> archs

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    path, where = cached_weights(name)
    tag = pretrained_cfg(name).get("hf_hub_id") or name
    if path is not None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    if not download:
        raise UserError(f"pretrained weights of timm model {tag} are not in the local cache: {where}, "
                        "or set download true to fetch them")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"download true, but HF_HUB_OFFLINE is set: unset it to fetch {tag}, or {where}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as err:  # no network, refused connection, full disk (the hub's and urllib's errors are OSErrors)
        raise UserError(f"could not download timm model {tag} ({str(err).splitlines()[0]}); {where}") from None


def build_timm(name: str, num_classes: int, pretrained: bool = False, width: float = 1.0, weights: str | None = None,
               download: bool = False, in_channels: int = 3, **options) -> TimmClassifier:
    """timm's ``create_model``; ``pretrained`` reads the weights from the local Hugging Face or torch hub cache,
    and fetches them only when ``download`` is true (else a one-line UserError naming the file and folder)."""
    if width != 1.0:
        raise UserError("config key 'width' applies only to featurenorm's own architectures; remove it for timm models")
    if weights is not None:
        raise UserError("config key 'weights' names torchvision weights; for timm put the pretrained tag in the "
                        "name, e.g. timm/resnet50.a1_in1k")
    try:
        net = _create(name, pretrained, download, num_classes=num_classes, in_chans=in_channels, **options)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"unknown timm model '{name}'; list them with python -c 'import timm; print(timm.list_models())'") from None
        raise
    return TimmClassifier(net)


@register_family("timm/<name>")
def _timm_family(name: str) -> Builder | None:
    if not name.startswith(PREFIX):
        return None
    return lambda num_classes, **options: build_timm(name[len(PREFIX):], num_classes, **options)
