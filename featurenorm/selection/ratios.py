"""NormRatio and the per-block rows of ``block_selection.json``: pure functions of the FeatureNorms that
:mod:`featurenorm.selection.collect` collects (the rows' type is :class:`featurenorm.core.block_rows.BlockRow`)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.block_rows import BlockRow, KindFigures
from ..core.metrics import auroc
from .collect import BlockNorms


# Keeps NormRatio finite when a block is completely silent on a puzzle (all channels dead);
# far below any FeatureNorm of a live block, so other ratios are unaffected.
NORM_EPS = 1e-12


def norm_ratio(id_norms: torch.Tensor, jigsaw_norms: torch.Tensor) -> float:
    """NormRatio = (1/N) * sum_i FN(x_i) / max(FN(jigsaw(x_i)), eps), eps = ``NORM_EPS``.

    Each image is paired with its own puzzle. Computed in float64.

    Args:
        id_norms: (N,) FeatureNorms of ID images.
        jigsaw_norms: (N,) FeatureNorms of their puzzles.
    """
    if id_norms.shape != jigsaw_norms.shape or id_norms.dim() != 1 or id_norms.numel() == 0:
        raise ValueError(f"norm_ratio needs two non-empty (N,) tensors pairing each image with its puzzle, "
                        f"got {tuple(id_norms.shape)} and {tuple(jigsaw_norms.shape)}")
    ratios = id_norms.double() / jigsaw_norms.double().clamp_min(NORM_EPS)
    return float(ratios.mean())


def summarize_blocks(norms: BlockNorms, blocks: Sequence[str]) -> list[BlockRow]:
    """One row per block, in the order of ``blocks``: its ``index`` there, ``name``, ``shape``, the mean ID
    FeatureNorm, and for every measured kind its NormRatio, mean FeatureNorm and the AUROC of ID (positive)
    against it, scored by FeatureNorm."""
    rows = []
    for index, name in enumerate(blocks):
        if name not in norms.id:
            raise ValueError(f"no FeatureNorms were collected for block '{name}'; collected: {', '.join(norms.id)}")
        id_norms = norms.id[name]
        kinds = {kind: KindFigures(norm_ratio=norm_ratio(id_norms, values[name]),
                                   norm_mean=float(values[name].double().mean()),
                                   auroc=auroc(id_norms.double().numpy(), values[name].double().numpy()))
                 for kind, values in norms.pseudo.items()}
        rows.append(BlockRow(index=index, name=name, shape=tuple(norms.shapes[name]),
                             id_norm_mean=float(id_norms.double().mean()), kinds=kinds))
    return rows
