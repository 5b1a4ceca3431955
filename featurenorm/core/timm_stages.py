"""The stages and blocks of any timm model, read from its ``feature_info`` and its module tree.

Duck-typed on what timm models carry (``feature_info``, ``output_fmt``, ``num_prefix_tokens``), so that
:func:`featurenorm.core.blocks.candidate_blocks` reads a timm model without importing timm.
"""
from __future__ import annotations

import torch.nn as nn

from .layouts import CHANNELS_FIRST, CHANNELS_LAST, Layout, tokens


def stage_blocks(net: nn.Module) -> list[str]:
    """Every block of every stage of a timm model, in forward order (names relative to ``net``).

    ``feature_info`` names the stages whose output timm hands out as features, and for some families
    only those that downsample (EfficientNet: ``blocks.0, 1, 2, 4, 6`` of its 7 stages). So when the
    named stages are entries of one container (``blocks``, ``stages``, ``layers``), every entry of that
    container from the first named to the last named is a stage. A stage's blocks are the entries of
    its ``blocks`` (ConvNeXt, Swin) or of the stage itself when it is a Sequential (ResNet,
    EfficientNet); a stage that is a single block (ViT's ``blocks.i``) is its own block.
    """
    modules = dict(net.named_modules())
    named = [info["module"] for info in getattr(net, "feature_info", []) if info["module"] in modules]
    names: list[str] = []
    for stage in _every_stage(named, modules):
        module = modules[stage]
        inner = getattr(module, "blocks", None)
        if isinstance(inner, (nn.Sequential, nn.ModuleList)):
            names += [f"{stage}.blocks.{c}" for c, _ in inner.named_children()]
        elif isinstance(module, (nn.Sequential, nn.ModuleList)):
            names += [f"{stage}.{c}" for c, _ in module.named_children()]
        elif any(stage.startswith(parent + ".") for parent in _containers(named, modules)):
            names.append(stage)  # a transformer block listed directly in its container
        # else a leaf stem module (ResNet's act1): not a stage of blocks
    names = names or named  # no stage containers: the feature_info modules themselves
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def _containers(named: list[str], modules: dict[str, nn.Module]) -> list[str]:
    """The containers (Sequential, ModuleList) that hold named stages as their entries."""
    parents = {stage.rpartition(".")[0] for stage in named if "." in stage}
    return sorted(p for p in parents if isinstance(modules.get(p), (nn.Sequential, nn.ModuleList)))


def _every_stage(named: list[str], modules: dict[str, nn.Module]) -> list[str]:
    stages: list[str] = []
    for stage in named:
        parent, _, _ = stage.rpartition(".")
        if parent not in _containers(named, modules):
            stages.append(stage)
            continue
        entries = [f"{parent}.{c}" for c, _ in modules[parent].named_children()]
        first = min(entries.index(s) for s in named if s.rpartition(".")[0] == parent)
        last = max(entries.index(s) for s in named if s.rpartition(".")[0] == parent)
        stages += entries[first:last + 1]
    seen: set[str] = set()
    return [s for s in stages if not (s in seen or seen.add(s))]


# timm families whose stages return channels-first maps (they declare no ``output_fmt``)
CHANNELS_FIRST_FAMILIES = ("ResNet", "EfficientNet", "ConvNeXt", "MobileNetV3", "RegNet", "DenseNet", "ByobNet",
                           "CspNet", "DLA", "GhostNet", "RepVit", "MobileNetV4", "Xception", "Res2Net")
OUTPUT_FORMATS = {"NCHW": CHANNELS_FIRST, "NHWC": CHANNELS_LAST}


def net_layout(net: nn.Module) -> Layout | None:
    """The layout of a timm model's stage blocks; None when it cannot be told.

    From the model's ``output_fmt`` (Swin: NHWC), its ``num_prefix_tokens`` (ViT, DeiT, EVA: tokens,
    those prefix tokens left out), or its class being one of the convolutional families.
    """
    fmt = getattr(net, "output_fmt", None)
    if isinstance(fmt, str) and fmt in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[fmt]
    prefix = getattr(net, "num_prefix_tokens", None)
    if isinstance(prefix, int) and not isinstance(prefix, bool):
        return tokens(prefix)
    if any(cls.__name__ in CHANNELS_FIRST_FAMILIES for cls in type(net).__mro__):
        return CHANNELS_FIRST
    return None


def stage_layouts(net: nn.Module) -> dict[str, Layout | None]:
    """``{block: layout}`` for :func:`stage_blocks`; None values: the layout cannot be told."""
    layout = net_layout(net)
    return {name: layout for name in stage_blocks(net)}
