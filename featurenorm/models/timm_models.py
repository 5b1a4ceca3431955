"""Any timm model, as ``timm/<name>``, behind the same interface as the built-in models.

The wrapped model sits under the attribute ``net``, so its block names read
``net.<timm module name>``. The blocks are the children of each feature stage that timm's
``feature_info`` names (for example ``net.layer1.0`` or ``net.stages.0.blocks.1``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .registry import Builder, register_family


def stage_blocks(net: nn.Module) -> list[str]:
    """The children of each feature stage of a timm model, in forward order (names relative to ``net``)."""
    modules = dict(net.named_modules())
    stage_names = [info["module"] for info in getattr(net, "feature_info", [])]
    names: list[str] = []
    for stage in stage_names:
        module = modules.get(stage)
        if module is None:
            continue
        inner = getattr(module, "blocks", None)
        prefix = f"{stage}.blocks" if isinstance(inner, nn.Sequential) else stage
        container = inner if isinstance(inner, nn.Sequential) else module
        children = [n for n, _ in container.named_children()] if isinstance(container, nn.Sequential) else []
        names += [f"{prefix}.{c}" for c in children]  # leaf stem modules (act1) are not stages
    if not names:  # no stage containers: fall back to the feature_info modules themselves
        names = [s for s in stage_names if s in modules]
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


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
        self.block_names = [f"net.{n}" for n in stage_blocks(net)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_timm(name: str, num_classes: int, pretrained: bool = False, width: float = 1.0, weights: str | None = None,
               download: bool = False, in_channels: int = 3, **options) -> TimmClassifier:
    """timm's ``create_model``; ``pretrained`` downloads through timm's own hub cache (``download`` is not consulted)."""
    import timm

    if width != 1.0:
        raise UserError("config key 'width' applies only to featurenorm's own architectures; remove it for timm models")
    if weights is not None:
        raise UserError("config key 'weights' names torchvision weights; for timm put the pretrained tag in the "
                        "name, e.g. timm/resnet50.a1_in1k")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **options)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"unknown timm model '{name}'; list them with python -c 'import timm; print(timm.list_models())'") from None
        raise
    return TimmClassifier(net)


@register_family("timm/<name>")
def _timm_family(name: str) -> Builder | None:
    if not name.startswith("timm/"):
        return None
    return lambda num_classes, **options: build_timm(name[len("timm/"):], num_classes, **options)
