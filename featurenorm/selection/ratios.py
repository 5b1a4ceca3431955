"""NormRatio and the per-block rows of ``block_selection.json``: pure functions of the FeatureNorms that
:mod:`featurenorm.selection.collect` collects, and the types of the rows and of the selected block."""
from __future__ import annotations

from typing import Optional, Sequence, TypedDict

import torch

from ..core.metrics import auroc
from .collect import JIGSAW, BlockNorms


class KindFigures(TypedDict):
    """One pseudo-OOD kind at one block."""

    norm_ratio: float
    norm_mean: float
    auroc: float  # ID (positive) against the kind, scored by FeatureNorm


class BlockRow(TypedDict, total=False):
    """One row of ``block_selection.json["blocks"]`` (see :func:`summarize_blocks`); the jigsaw's keys are
    there when the jigsaw was measured."""

    index: int
    name: str
    shape: list[int]
    norm_ratio: float
    id_norm_mean: float
    jigsaw_norm_mean: float
    jigsaw_auroc: float
    pseudo_ood: dict[str, KindFigures]


class SelectedBlock(TypedDict, total=False):
    """The block FeatureNorm reads: ``block_selection.json["selected"]`` holds ``index`` and ``name``; the
    ``block`` of ``ood_results.json`` adds ``source`` (``block_selection.json`` or ``--block``)."""

    index: Optional[int]
    name: str
    source: str


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
    """One row per block, in the order of ``blocks``.

    Row keys: ``index`` (position in ``blocks``), ``name``, ``shape`` (list), ``id_norm_mean``,
    and ``pseudo_ood``: ``{kind: {"norm_ratio", "norm_mean", "auroc"}}`` for every measured kind,
    where ``auroc`` is of ID (positive) against that kind, scored by FeatureNorm. The jigsaw's
    figures are also at the top level: ``norm_ratio``, ``jigsaw_norm_mean``, ``jigsaw_auroc``.
    """
    rows = []
    for index, name in enumerate(blocks):
        if name not in norms.id:
            raise ValueError(f"no FeatureNorms were collected for block '{name}'; collected: {', '.join(norms.id)}")
        id_norms = norms.id[name]
        per_kind = {kind: {"norm_ratio": norm_ratio(id_norms, values[name]),
                           "norm_mean": float(values[name].double().mean()),
                           "auroc": auroc(id_norms.double().numpy(), values[name].double().numpy())}
                    for kind, values in norms.pseudo.items()}
        row: BlockRow = {"index": index, "name": name, "shape": list(norms.shapes[name])}
        if JIGSAW in per_kind:
            row["norm_ratio"] = per_kind[JIGSAW]["norm_ratio"]
        row["id_norm_mean"] = float(id_norms.double().mean())
        if JIGSAW in per_kind:
            row["jigsaw_norm_mean"] = per_kind[JIGSAW]["norm_mean"]
            row["jigsaw_auroc"] = per_kind[JIGSAW]["auroc"]
        row["pseudo_ood"] = per_kind
        rows.append(row)
    return rows
