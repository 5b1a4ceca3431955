"""FeatureNorm of intermediate block outputs, read through forward hooks.

FeatureNorm (Yu et al., CVPR 2023, arXiv 2212.02295) scores an image by how strongly
a block's channels respond to it: higher means more in-distribution.

:class:`FeatureTap` hooks the named blocks of a model, reduces each block's output to one number
per image inside the hook (full feature maps are never kept), and can stop the forward pass once
the last requested block has run.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .layouts import CHANNELS_FIRST, Layout
from .blocks import block_layouts


Reducer = Callable[[torch.Tensor], torch.Tensor]


def feature_norm(z: torch.Tensor) -> torch.Tensor:
    """FeatureNorm of a block output, one value per image.

    For ``z`` of shape (B, C, *spatial) with spatial positions ``p``:

        FN(z) = (1 / C) * sum_c sqrt( sum_p ReLU(z[c, p])^2 )

    i.e. the L2 norm of each rectified channel over its spatial positions, averaged over
    channels (Yu et al., 2023). For a (B, C) output each channel has a single
    position, so its L2 norm is ``|ReLU(z_c)| = ReLU(z_c)`` and FN(z) = mean_c ReLU(z_c).

    Differentiable (the norm's subgradient at a dead channel is 0, not NaN). Low-precision
    inputs (bf16, fp16) are computed in float32; float64 stays float64.

    Args:
        z: (B, C, *spatial) block output.

    Returns:
        (B,) float32 (float64 for float64 input).
    """
    if z.dim() < 2:
        raise ValueError(f"feature_norm needs a (batch, channels, ...) tensor, got shape {tuple(z.shape)}")
    if z.dtype != torch.float64:
        z = z.float()
    rectified = torch.relu(z)
    if z.dim() == 2:
        return rectified.mean(dim=1)
    # norm over the position axes in place: a permuted (channels-last, token) view needs no copy
    per_channel = torch.linalg.vector_norm(rectified, ord=2, dim=tuple(range(2, z.dim())))  # (B, C)
    return per_channel.mean(dim=1)


class BlockError(ValueError):
    """A block cannot be read: it is unknown, listed twice, reused within one forward pass, returns no
    tensor, or did not run. The command-line runs report it as a one-line error."""


class _StopForward(Exception):
    """Raised inside a hook to skip the rest of the forward pass; caught by :meth:`FeatureTap.run`."""


class FeatureTap:
    """Context manager that records a per-image reduction of named block outputs.

    Example::

        with FeatureTap(model, ["layer3.1", "layer4.1"], stop_after_last=True) as tap:
            tap.run(model, images)
        tap.values["layer3.1"]  # (B,) FeatureNorm
        tap.shapes["layer3.1"]  # (C, H, W)

    Values keep their autograd graph (so input-gradient methods such as ODIN can
    differentiate through them); run under ``torch.inference_mode()`` when no gradient is
    needed. Call the model through :meth:`run`: there each block may fire once, and a module
    that is called twice in one forward pass (a reused activation) is refused, because its
    value would be ambiguous. Forward passes made directly inside the ``with`` block still
    record values (the last call wins) but get neither that check nor the early exit.

    Each output is brought to channels-first ``(B, C, *positions)`` by its block's
    :class:`~featurenorm.core.layouts.Layout` before ``reduce`` sees it (``shapes`` records that shape):
    token outputs (ViT) and channels-last maps (Swin) are read per channel, like conv maps. A
    block's layout is ``layouts[name]`` when given, else what the model declares
    (:func:`featurenorm.core.blocks.block_layouts`). An undeclared output of 2 or 4+ dimensions is
    read channels-first (PyTorch's layout for linear and conv outputs). An undeclared 3-D output is
    refused, since (B, N, C) tokens and (B, C, L) sequences look alike, and so is any undeclared block
    of a model whose declared blocks are not all channels-first.

    Args:
        model: the network; block names are as ``model.named_modules()`` lists them.
        blocks: names of the modules whose outputs are reduced.
        reduce: maps a channels-first block output (B, C, ...) to (B,) values; FeatureNorm by default.
        stop_after_last: in :meth:`run`, stop the forward pass once every block has fired.
        layouts: layouts of (some of) the blocks, overriding the model's declaration.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str], reduce: Reducer = feature_norm,
                 stop_after_last: bool = False, layouts: Mapping[str, Layout] | None = None):
        if isinstance(blocks, str):
            blocks = [blocks]
        self.blocks = list(blocks)
        if not self.blocks:
            raise BlockError("no blocks to tap; name at least one module of the model")
        duplicates = sorted({b for b in self.blocks if self.blocks.count(b) > 1})
        if duplicates:
            raise BlockError(f"block(s) listed more than once: {', '.join(duplicates)}; list each block once")
        modules = dict(model.named_modules())
        unknown = [b for b in self.blocks if b not in modules]
        if unknown:
            valid = getattr(model, "block_names", None) or [n for n in modules if n]
            raise BlockError(f"unknown block(s) {', '.join(repr(b) for b in unknown)} for "
                            f"{type(model).__name__}; valid names: {', '.join(valid)}")
        self.model = model
        self.layouts = _resolve_layouts(model, self.blocks, layouts or {})
        self.reduce = reduce
        self.stop_after_last = stop_after_last
        self.values: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._modules = {name: modules[name] for name in self.blocks}
        self._calls = {name: 0 for name in self.blocks}
        self._handles: list[Any] = []
        self._in_run = False

    def __enter__(self) -> "FeatureTap":
        if self._handles:
            raise RuntimeError("FeatureTap is already active; it cannot be entered twice")
        self.clear()
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget recorded values and reset the per-block call counters."""
        self.values = {}
        self.shapes = {}
        self._calls = {name: 0 for name in self.blocks}

    def _make_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._in_run and self._calls[name] > 0:
                raise BlockError(
                    f"module '{name}' ({type(module).__name__}) ran more than once in one forward pass: it is "
                    "reused, so its output is ambiguous; tap a module that runs once")
            self._calls[name] += 1
            if not isinstance(output, torch.Tensor):
                raise BlockError(f"block '{name}' returns {type(output).__name__}, not a tensor; "
                                "tap a module whose output is a single tensor")
            output = self._channels_first(name, output)
            self.shapes[name] = tuple(output.shape[1:])
            self.values[name] = self.reduce(output)
            if self._in_run and self.stop_after_last and all(self._calls.values()):
                raise _StopForward
        return hook

    def _channels_first(self, name: str, output: torch.Tensor) -> torch.Tensor:
        layout = self.layouts[name]
        if layout is None and output.dim() == 3:
            declare = "{'%s': featurenorm.core.layouts.tokens(k)}" % name
            raise BlockError(f"block '{name}' returns a 3-D output {tuple(output.shape)}: (B, N, C) tokens or "
                             f"(B, C, L)? declare it: FeatureTap(..., layouts={declare})")
        try:
            return (layout or CHANNELS_FIRST).channels_first(output)
        except ValueError as err:
            raise BlockError(f"block '{name}': {err}") from None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Clear, call ``fn(*args, **kwargs)`` with the hooks active, and return its output.

        With ``stop_after_last`` the forward pass ends once every block has fired and None is
        returned. Raises BlockError when a block did not run at all during ``fn``.
        """
        if not self._handles:
            raise RuntimeError("FeatureTap.run needs the hooks: use it inside 'with FeatureTap(...) as tap:'")
        self.clear()
        self._in_run = True
        try:
            output = fn(*args, **kwargs)
        except _StopForward:
            output = None
        finally:
            self._in_run = False
        missing = [name for name in self.blocks if not self._calls[name]]
        if missing:
            raise BlockError(f"block(s) {', '.join(missing)} did not run during the forward pass; "
                            "tap modules that the called function uses")
        return output


def _resolve_layouts(model: nn.Module, blocks: Sequence[str],
                     given: Mapping[str, Layout]) -> dict[str, Layout | None]:
    """Each block's layout: ``given``, else the model's declaration, else None (read by dimensions)."""
    declared = block_layouts(model)
    resolved: dict[str, Layout | None] = {}
    for name in blocks:
        layout = given.get(name) or (declared or {}).get(name)
        if layout is None and declared and any(v != CHANNELS_FIRST for v in declared.values()):
            raise BlockError(f"the output layout of block '{name}' of {type(model).__name__} cannot be told (its "
                             "blocks are not all channels-first); tap one of candidate_blocks(model) or pass layouts=")
        resolved[name] = layout
    return resolved


def block_feature_norms(model: nn.Module, images: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """FeatureNorm of each block from one forward pass that stops after the last block.

    The model is used as given: put it in eval mode first (BatchNorm).

    Args:
        model: the network, on the same device as ``images``.
        images: (B, C, H, W).
        blocks: module names.

    Returns:
        ``{block: (B,) float32}`` in the order of ``blocks``, on the model's device.
    """
    with torch.inference_mode(), FeatureTap(model, blocks, stop_after_last=True) as tap:
        tap.run(model, images)
    return {name: tap.values[name] for name in tap.blocks}
