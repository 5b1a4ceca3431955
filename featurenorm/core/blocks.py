"""Which blocks of any classifier a FeatureNorm can be read from, and where its classifier head is.

featurenorm's own architectures declare ``block_names``; timm models name their stages in
``feature_info``; torchvision's classification families have a known block layout. Any other
``nn.Module`` gets a fallback found by one forward pass (see :func:`candidate_blocks`).

The methods that read penultimate features or logits need a split of the model into
``forward_features(x) -> (B, D)`` and a linear ``head``. Our models and timm wrappers provide it;
for any other model :func:`classifier_parts` takes the last ``nn.Linear`` as the head and reads
its input through a forward pre-hook, so no model has to know about OOD methods.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .layouts import CHANNELS_LAST, Layout, tokens
from .timm_stages import stage_blocks, stage_layouts

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]

# The fallback's dummy input: one image, channels first, ImageNet size (CIFAR models accept it too).
DEFAULT_INPUT_SHAPE = (3, 224, 224)


def candidate_blocks(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> list[str]:
    """Module names, in forward order, whose outputs a FeatureNorm can be read from.

    - featurenorm's architectures (and anything with a ``block_names`` attribute): those names;
    - timm models: every block of every stage (see :func:`featurenorm.core.timm_stages.stage_blocks`);
    - torchvision ResNet/WideResNet (``layer1.0 ... layer4.N``), VGG (each conv layer read after its
      ReLU), DenseNet (dense blocks and transitions), MobileNetV2/V3 (every entry of ``features``),
      EfficientNet (every block of every stage, then the last conv), ConvNeXt (every CNBlock), Swin (every
      block of every stage) and ViT (every encoder layer);
    - any other module (fallback): one forward pass of a zero batch of ``(1, *input_shape)`` records
      the modules that sit directly inside an ``nn.Sequential``, run exactly once and return a 4-D
      tensor; nested ones are dropped when their container already qualifies.

    Raises:
        ValueError: when the fallback finds no such module; pass ``blocks=`` explicitly then.
    """
    names = getattr(model, "block_names", None)
    if names is not None:
        return list(names)
    if _is_timm(model):
        return stage_blocks(model)
    known = _torchvision_blocks(model)
    if known is not None:
        return known
    return _fallback_blocks(model, input_shape)


def _is_timm(model: nn.Module) -> bool:
    return hasattr(model, "feature_info") and hasattr(model, "forward_head")


def block_layouts(model: nn.Module) -> dict[str, Layout | None] | None:
    """The output layout of each block a model declares; None when it declares none.

    - a ``block_layouts`` attribute (featurenorm's timm wrapper);
    - timm models: every stage block has the model's layout (see
      :func:`featurenorm.core.timm_stages.net_layout`; None values when it cannot be told);
    - torchvision Swin (channels-last ``features.i.j``) and ViT (tokens after one class token);
    - anything else: None (:class:`featurenorm.core.tap.FeatureTap` reads outputs by their dimensions).
    """
    declared = getattr(model, "block_layouts", None)
    if declared is not None:
        return dict(declared)
    if _is_timm(model):
        return stage_layouts(model)
    try:
        from torchvision import models as tv  # lazy: torchvision loads only on this path
    except Exception:  # torchvision missing or broken
        return None
    if isinstance(model, tv.SwinTransformer):
        return {name: CHANNELS_LAST for name in _torchvision_blocks(model) or []}
    if isinstance(model, tv.VisionTransformer):
        return {name: tokens(1) for name in _torchvision_blocks(model) or []}
    return None


def _children(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_children()]


def _torchvision_blocks(model: nn.Module) -> list[str] | None:
    try:
        from torchvision import models as tv  # lazy: torchvision loads only on this path
    except Exception:  # torchvision missing or broken: only the fallback is left
        return None
    if isinstance(model, tv.ResNet):
        return [name for i in range(1, 5) for name in _children(getattr(model, f"layer{i}"), f"layer{i}")]
    if isinstance(model, tv.VGG):
        # the paper reads VGG after each conv's ReLU (our vgg11 does the same)
        layers = list(model.features)
        return [f"features.{i}" for i, layer in enumerate(layers)
                if isinstance(layer, nn.ReLU) and i > 0 and isinstance(layers[i - 1], (nn.Conv2d, nn.BatchNorm2d))]
    if isinstance(model, tv.DenseNet):
        return [f"features.{name}" for name, _ in model.features.named_children()
                if name.startswith(("denseblock", "transition"))]
    if isinstance(model, (tv.MobileNetV2, tv.MobileNetV3)):
        return _children(model.features, "features")
    if isinstance(model, tv.EfficientNet):
        names = []
        for i, stage in enumerate(model.features):
            names += _children(stage, f"features.{i}") if isinstance(stage, nn.Sequential) and i > 0 \
                and not isinstance(stage[0], nn.Conv2d) else ([f"features.{i}"] if i > 0 else [])
        return names
    if isinstance(model, tv.SwinTransformer):  # stages alternate with PatchMerging; the stem is features.0
        return [name for i, stage in enumerate(model.features) if i > 0 and isinstance(stage, nn.Sequential)
                for name in _children(stage, f"features.{i}")]
    if isinstance(model, tv.VisionTransformer):
        return _children(model.encoder.layers, "encoder.layers")
    if isinstance(model, tv.ConvNeXt):
        return [name for i, stage in enumerate(model.features)
                if isinstance(stage, nn.Sequential) and any(type(m).__name__ == "CNBlock" for m in stage)
                for name in _children(stage, f"features.{i}")]
    return None


def _fallback_blocks(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    inside_sequential = {f"{parent}.{child}" if parent else child
                         for parent, module in model.named_modules() if isinstance(module, nn.Sequential)
                         for child, _ in module.named_children()}
    modules = dict(model.named_modules())
    fired: list[str] = []
    counts: dict[str, int] = {}
    four_d: set[str] = set()

    def hook_for(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            counts[name] = counts.get(name, 0) + 1
            if counts[name] == 1:
                fired.append(name)
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                four_d.add(name)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in sorted(inside_sequential)]
    device = model_device(model)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    qualified = [name for name in fired if name in four_d and counts[name] == 1]
    outermost = [name for name in qualified
                 if not any(name.startswith(other + ".") for other in qualified if other != name)]
    if not outermost:
        raise ValueError(f"found no block of {type(model).__name__} to read a FeatureNorm from (no module inside "
                         "an nn.Sequential returns a 4-D tensor); pass blocks=[...] with module names from "
                         "model.named_modules()")
    return outermost


class _HeadReached(Exception):
    """Raised by the head's pre-hook: the penultimate features are known, the head need not run."""


class _HeadInput:
    """``forward_features`` of a model that does not define one: the input of its head, flattened."""

    def __init__(self, model: nn.Module, head: nn.Module):
        self.model, self.head = model, head

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def pre_hook(module: nn.Module, inputs) -> None:
            captured.append(inputs[0].flatten(1))
            raise _HeadReached

        handle = self.head.register_forward_pre_hook(pre_hook)
        try:
            self.model(images)
        except _HeadReached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"the head of {type(self.model).__name__} did not run in its forward pass")
        return captured[0]


def find_head(model: nn.Module) -> nn.Linear:
    """The classifier: ``model.head`` / ``model.get_classifier()`` when linear, else the last ``nn.Linear``."""
    for candidate in (getattr(model, "head", None),
                      model.get_classifier() if hasattr(model, "get_classifier") else None):
        if isinstance(candidate, nn.Linear):
            return candidate
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier; methods that need logits or "
                         "penultimate features cannot run on it (FeatureNorm can)")
    return linears[-1]


def classifier_parts(model: nn.Module) -> tuple[FeaturesFn, nn.Linear]:
    """``(forward_features, head)`` with ``model(x) == head(forward_features(x))`` for a linear-headed model.

    Models built by featurenorm define both; for any other model the head is :func:`find_head`'s and
    the features are its input, read by a pre-hook (the head itself is skipped).
    """
    if hasattr(model, "forward_features") and isinstance(getattr(model, "head", None), nn.Linear) \
            and hasattr(model, "block_names"):
        return model.forward_features, model.head
    head = find_head(model)
    return _HeadInput(model, head), head


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
