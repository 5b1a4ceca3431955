"""Per-image FeatureNorms of every block for ID images and their pseudo-OOD images: the collection loops
that block selection (:mod:`featurenorm.selection.api`) reads.

Each batch is one forward pass over the ID images and every pseudo-OOD kind made from them
(:mod:`featurenorm.selection.pseudo_ood`), stopped after the last block; each block's output is reduced to
one FeatureNorm per image inside the hook (:class:`featurenorm.core.tap.FeatureTap`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from ..config import Config
from ..errors import UserError
from ..core.blocks import model_device
from ..core.tap import FeatureTap
from .jigsaw import sample_permutations
from .pseudo_ood import JIGSAW, kind_generator, make_pseudo_ood
from ..runtime import autocast, gather_in_order, progress_bar



@dataclass
class BlockNorms:
    """Per-image FeatureNorms of each block, for ID images and for their pseudo-OOD images (paired by index).

    Attributes:
        id: ``{block: (N,) float32}`` on CPU.
        pseudo: ``{kind: {block: (N,) float32}}`` on CPU, kinds in the order measured; entry i of a
            kind was made from ID image i (e.g. ``pseudo["jigsaw"]``: the puzzles).
        shapes: ``{block: per-image output shape}``, e.g. ``(64, 32, 32)``.
    """

    id: dict[str, torch.Tensor]
    pseudo: dict[str, dict[str, torch.Tensor]]
    shapes: dict[str, tuple[int, ...]]

    @property
    def jigsaw(self) -> dict[str, torch.Tensor]:
        """``{block: (N,)}`` FeatureNorms of the jigsaw puzzles."""
        return self.pseudo[JIGSAW]


def collect_block_norms(model: nn.Module, batches: Iterable[Any], blocks: Sequence[str], grid: int = 3,
                        generator: torch.Generator | None = None, device: torch.device | str | None = None,
                        progress: bool = True, *, kinds: Sequence[str] = (JIGSAW,),
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> BlockNorms:
    """FeatureNorm of every block for ID images and their pseudo-OOD images, drawn batch by batch.

    Each batch goes through ONE forward pass over ``cat([x, kind_1(x), kind_2(x), ...])`` that
    stops after the last block, under inference mode (see :func:`collect_paired_norms`, which
    this feeds). The model is put in eval mode for the pass (so BatchNorm does not mix ID images
    with pseudo-OOD ones) and its mode is restored afterwards.

    Args:
        model: the trained network.
        batches: image batches (B, C, H, W); ``(images, labels, ...)`` tuples are accepted and
            their first element is used.
        blocks: module names to score.
        grid: jigsaw grid size.
        generator: seeds the puzzles (see :func:`featurenorm.selection.jigsaw.jigsaw`); its initial
            seed also seeds the other kinds (one generator each, on the device).
        device: where to run; defaults to the device of the model's parameters.
        progress: show a tqdm bar.
        kinds: pseudo-OOD kinds (see :mod:`featurenorm.selection.pseudo_ood`).
        mean, std: the normalization of the images, per channel (default: the config's defaults).

    Returns:
        BlockNorms with (N,) float32 CPU tensors, N the number of images seen.
    """
    device = torch.device(device) if device is not None else model_device(model)
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()

    def paired() -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        for batch in batches:
            images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            height, width = images.shape[-2:]
            permutations = sample_permutations(images.shape[0], height, width, grid, generator) \
                if JIGSAW in kinds else None
            yield images, permutations

    was_training = model.training
    try:
        return collect_paired_norms(model, paired(), blocks, grid, progress=progress, kinds=kinds, mean=mean,
                                    std=std, seed=seed)
    finally:
        model.train(was_training)


def collect_paired_norms(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                         blocks: Sequence[str], grid: int, amp: torch.dtype | None = None,
                         progress: bool = True, *, kinds: Sequence[str] = (JIGSAW,),
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int = 0,
                         stream: int = 0) -> BlockNorms:
    """Like :func:`collect_block_norms`, with each image's puzzle permutation given by the loader.

    Drawing the permutations once for the whole data set (rather than per batch) ties each
    puzzle to its image, so the jigsaw's result does not depend on batching or on sharding. The
    other kinds are drawn batch by batch on the device, one generator per kind
    (:func:`featurenorm.selection.pseudo_ood.kind_generator` of ``seed`` and ``stream``), so they are
    reproducible for a given seed, batch size and number of ranks.

    Args:
        loader: yields ``(images (B, C, H, W), permutations (B, grid*grid))``; the permutations
            may be None when the jigsaw is not among ``kinds``.
        kinds: pseudo-OOD kinds; each batch is one forward pass over ``cat([x] + [kind(x) ...])``.
        mean, std: the images' normalization per channel (default: the config's defaults).
        seed, stream: seed the kinds other than the jigsaw; ``stream`` separates torchrun ranks.
    """
    kinds = list(kinds)
    # the defaults are one value repeated per channel: one value serves gray and RGB images alike
    mean = list(mean) if mean is not None else Config().mean[:1]
    std = list(std) if std is not None else Config().std[:1]
    id_parts: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    pseudo_parts: dict[str, dict[str, list[torch.Tensor]]] = {kind: {name: [] for name in blocks} for kind in kinds}
    shapes: dict[str, tuple[int, ...]] = {}
    generators: dict[str, torch.Generator] = {}
    model.eval()
    bar = progress_bar(total=len(loader) if hasattr(loader, "__len__") else None, desc="block norms", leave=False,
                       disable=not progress)
    with torch.inference_mode(), FeatureTap(model, blocks, stop_after_last=True) as tap:
        for images, permutations in loader:
            size = images.shape[0]
            pseudo = []
            for kind in kinds:
                if kind not in generators:
                    generators[kind] = kind_generator(seed, kind, images.device, stream)
                pseudo.append(make_pseudo_ood(kind, images, generators[kind], mean=mean, std=std, grid=grid,
                                              permutations=permutations))
            with autocast(amp, images.device):
                tap.run(model, torch.cat([images] + pseudo))
            # kept on the device: a copy to the CPU per block and batch would stall a GPU every batch
            for name in tap.blocks:
                values = tap.values[name].float()
                id_parts[name].append(values[:size])
                for position, kind in enumerate(kinds, start=1):
                    pseudo_parts[kind][name].append(values[position * size:(position + 1) * size])
            shapes.update(tap.shapes)
            bar.update(1)
    bar.close()
    if not shapes:
        raise ValueError("block selection got no images; check the ID training set")
    return BlockNorms(id={n: torch.cat(p).cpu() for n, p in id_parts.items()},
                      pseudo={kind: {n: torch.cat(p).cpu() for n, p in parts.items()}
                              for kind, parts in pseudo_parts.items()},
                      shapes={n: shapes[n] for n in blocks})


def collect_sharded_norms(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any, torch.Tensor]],
                          permutations: torch.Tensor, blocks: Sequence[str], grid: int,
                          amp: torch.dtype | None = None, progress: bool = True, **kinds_args: Any) -> BlockNorms:
    """:func:`collect_paired_norms` over this rank's share of a data set, the norms of every rank gathered
    back in set order.

    Args:
        batches: yields ``(images (B, C, H, W), labels, index (B,))``, the index being each image's position
            in the set (:class:`~featurenorm.data.batches.ImageBatches`).
        permutations: (N, grid*grid), row i the puzzle of image i of the set.
        kinds_args: ``kinds``, ``mean``, ``std``, ``seed``, ``stream`` of :func:`collect_paired_norms`.
    """
    positions: list[torch.Tensor] = []

    def paired():  # each image with its own row of the permutation table
        for images, _, index in batches:
            positions.append(index)
            yield images, permutations[index]

    norms = collect_paired_norms(model, _Sized(paired(), len(batches)), blocks, grid, amp, progress=progress,
                                 **kinds_args)
    values = {("ID", n): v for n, v in norms.id.items()}
    values.update({(kind, n): v for kind, per_block in norms.pseudo.items() for n, v in per_block.items()})
    gathered = gather_in_order(values, torch.cat(positions))
    norms.id = {n: gathered[("ID", n)] for n in norms.id}
    norms.pseudo = {kind: {n: gathered[(kind, n)] for n in per_block} for kind, per_block in norms.pseudo.items()}
    return norms


def check_finite_norms(norms: BlockNorms, checkpoint: str | None) -> None:
    """A NaN/inf FeatureNorm means a broken model, not a worse block: stop instead of selecting around it."""
    for kind, per_block in [("ID", norms.id)] + list(norms.pseudo.items()):
        for name, values in per_block.items():
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                raise UserError(f"block '{name}' gave {bad} NaN/inf FeatureNorm(s) on the {kind} images; check the "
                                f"checkpoint '{checkpoint}' (it may have diverged)")


class _Sized:
    """An iterator with the length of the batches it comes from (for the progress bar)."""

    def __init__(self, iterator, length: int):
        self.iterator, self.length = iterator, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return self.iterator
