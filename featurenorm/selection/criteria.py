"""Block selection criteria: pure functions of the per-block rows that block selection writes.

A row (one per candidate block, ``block_selection.json["blocks"]``) holds, for each pseudo-OOD kind,
the NormRatio of ID images to that kind and the AUROC of ID vs. that kind scored by FeatureNorm.
A criterion maps the rows to one figure per block; the block with the largest figure is chosen
(:data:`featurenorm.config.CRITERIA` describes each in one sentence).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .collect import JIGSAW
from ..config import CRITERIA

# The criteria that read the jigsaw puzzles alone; the others read every measured kind.
JIGSAW_CRITERIA = ("norm_ratio", "auroc")

# A best ID-vs-pseudo-OOD AUROC at or below this, at every block, is weak evidence for any choice.
WEAK_AUROC = 0.6


def row_kinds(row: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{kind: {"norm_ratio", "auroc", ...}}`` of a block row; rows written before the kinds existed hold the
    jigsaw's figures at the top level only."""
    if row.get("pseudo_ood"):
        return dict(row["pseudo_ood"])
    return {JIGSAW: {"norm_ratio": row.get("norm_ratio"), "norm_mean": row.get("jigsaw_norm_mean"),
                     "auroc": row.get("jigsaw_auroc")}}


def _finite_or(value: float | None, fallback: float) -> float:
    return fallback if value is None or math.isnan(value) else float(value)


def average_auroc_ranks(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per block, its rank by ID-vs-kind AUROC (1 = best; ties share the average rank; NaN ranks last),
    averaged over the kinds the rows hold. -> one float per row."""
    from scipy.stats import rankdata

    kinds = list(row_kinds(rows[0]))
    ranks = np.zeros(len(rows))
    for kind in kinds:
        aurocs = np.array([_finite_or(row_kinds(row)[kind]["auroc"], -math.inf) for row in rows])
        ranks += rankdata(-aurocs, method="average")
    return (ranks / len(kinds)).tolist()


def criterion_values(rows: Sequence[Mapping[str, Any]], criterion: str) -> list[float]:
    """The figure ``criterion`` maximises, per row (see :data:`featurenorm.config.CRITERIA`).

    ``norm_ratio`` and ``auroc`` read the jigsaw; ``mean_rank`` gives minus the average AUROC rank
    over the kinds (:func:`average_auroc_ranks`), so that larger is better for every criterion;
    ``mean_auroc`` and ``min_auroc`` give the mean and the minimum over the kinds of the ID-vs-kind
    AUROC (NaN, which never wins, where any kind's AUROC is NaN).

    Raises:
        ValueError: an unknown criterion, or one whose kinds were not measured.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown block selection criterion '{criterion}'; use one of: {', '.join(CRITERIA)}")
    kinds = row_kinds(rows[0]) if rows else {}
    if criterion == "mean_rank":
        if len(kinds) < 2:
            raise ValueError(f"criterion 'mean_rank' combines several pseudo-OOD kinds, but only "
                            f"{', '.join(kinds) or 'none'} was measured; pass e.g. --pseudo-ood "
                            "jigsaw,pixel_shuffle,noise,mixup,blur")
        return [-rank for rank in average_auroc_ranks(rows)]
    if criterion in ("mean_auroc", "min_auroc"):
        if not kinds:
            raise ValueError(f"criterion '{criterion}' reads the pseudo-OOD kinds' AUROCs, but none was measured")
        reduce = np.mean if criterion == "mean_auroc" else np.min
        return [float(reduce([_finite_or(figures["auroc"], math.nan) for figures in row_kinds(row).values()]))
                for row in rows]
    if JIGSAW not in kinds:
        raise ValueError(f"criterion '{criterion}' reads the jigsaw puzzles, which were not measured "
                        f"(pseudo-OOD: {', '.join(kinds)}); add jigsaw to the kinds or use --criterion mean_rank")
    key = "norm_ratio" if criterion == "norm_ratio" else "auroc"
    return [_finite_or(row_kinds(row)[JIGSAW][key], math.nan) for row in rows]


def choose_block(rows: Sequence[dict[str, Any]], criterion: str = "norm_ratio") -> dict[str, Any]:
    """The row maximising ``criterion`` (see :func:`criterion_values`); the first one on ties; NaN never wins.

    Returns:
        ``{"index": int, "name": str}``.
    """
    if not rows:
        raise ValueError("no blocks to choose from; list at least one block")
    values = [-math.inf if math.isnan(v) else v for v in criterion_values(rows, criterion)]
    best = max(range(len(rows)), key=lambda i: (values[i], -i))
    return {"index": rows[best]["index"], "name": rows[best]["name"]}


def best_block_per_kind(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{kind: name of the block with the highest ID-vs-kind AUROC}`` (the first one on ties)."""
    best = {}
    for kind in row_kinds(rows[0]):
        aurocs = [_finite_or(row_kinds(row)[kind]["auroc"], -math.inf) for row in rows]
        best[kind] = rows[max(range(len(rows)), key=lambda i: (aurocs[i], -i))]["name"]
    return best


def selection_warnings(rows: Sequence[Mapping[str, Any]], criterion: str,
                       weak_auroc: float = WEAK_AUROC) -> list[str]:
    """One-line warnings about the evidence behind a choice (empty when there is nothing to say).

    - weak: at every block, ID-vs-pseudo-OOD AUROC is at most ``weak_auroc`` for every kind the
      criterion reads (the jigsaw for ``norm_ratio``/``auroc``, every kind for the others);
    - disagreement: the measured kinds' best blocks (by AUROC) differ; each is named with its AUROC;
    - strong disagreement: some kinds rank the chosen block in the bottom half of the blocks by
      AUROC; each is named with its AUROC and rank there, and its own best block.
    """
    if not rows:
        return []
    kinds = list(row_kinds(rows[0]))
    read = [JIGSAW] if criterion in JIGSAW_CRITERIA else kinds
    notes = []
    aurocs = {kind: [_finite_or(row_kinds(row)[kind]["auroc"], -math.inf) for row in rows] for kind in kinds}
    best_auroc = {kind: max(aurocs[kind]) for kind in read if kind in kinds}
    if best_auroc and all(value <= weak_auroc for value in best_auroc.values()):
        figures = ", ".join(f"{kind} {value:.2f}" for kind, value in best_auroc.items())
        notes.append(f"the block choice is weakly supported: the best ID-vs-pseudo-OOD AUROC over all blocks is "
                     f"{figures} (at most {weak_auroc:.2f}); these pseudo-OOD images barely differ from ID ones "
                     "at any block")
    best = best_block_per_kind(rows)
    if len(set(best.values())) > 1:
        notes.append("the pseudo-OOD kinds disagree on the best block (by AUROC): "
                     + ", ".join(f"{kind} {name} ({max(aurocs[kind]):.2f})" for kind, name in best.items()))
        chosen = choose_block(rows, criterion)
        position = next(i for i, row in enumerate(rows) if row["name"] == chosen["name"])
        against = []
        for kind, values in aurocs.items():
            rank = 1 + sum(value > values[position] for value in values)
            if rank > (len(rows) + 1) / 2:
                against.append(f"{kind} (AUROC {values[position]:.2f}, rank {rank} of {len(rows)}; "
                               f"best {best[kind]} {max(values):.2f})")
        if against:
            notes.append(f"strong disagreement: the chosen block {chosen['name']} ranks in the bottom half for "
                         + ", ".join(against) + "; compare --criterion mean_auroc and the per-kind table")
    return notes
