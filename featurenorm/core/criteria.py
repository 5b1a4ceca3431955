"""Block selection criteria: pure functions of the per-block rows (:class:`~featurenorm.core.block_rows.BlockRow`).

A criterion maps the rows to one figure per block; the block with the largest figure is chosen.
:data:`CRITERIA` is the one table of them: the config check, ``select_block.py --criterion`` and
:func:`featurenorm.select_block` all read it, and :func:`register_criterion` adds to it under the rule
every registry follows (:func:`featurenorm.errors.check_new_name`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import check_new_name
from .block_rows import JIGSAW, BlockRow


@dataclass(frozen=True)
class Criterion:
    """One rule for choosing a block.

    Attributes:
        name: the ``criterion`` config value.
        rule: the rule in one sentence (the ``--criterion`` help).
        figure: rows -> one float per row, larger is better (NaN never wins).
        jigsaw_only: it reads the jigsaw puzzles alone (else every measured kind).
        min_kinds: how many pseudo-OOD kinds it needs at least.
    """

    name: str
    rule: str
    figure: Callable[[Sequence[BlockRow]], list[float]]
    jigsaw_only: bool = False
    min_kinds: int = 1


CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to :data:`CRITERIA`, so that the config key ``criterion`` and ``--criterion`` accept it.

    Example::

        register_criterion(Criterion("deepest_separating", "the deepest block whose jigsaw AUROC is above 0.9",
                                     lambda rows: [row.index if row.kinds["jigsaw"].auroc > 0.9 else -1
                                                   for row in rows], jigsaw_only=True))

    Raises:
        ValueError: another criterion holds the name already (the same one again changes nothing).
    """
    check_new_name(CRITERIA, criterion.name, criterion, "criterion")
    CRITERIA[criterion.name] = criterion
    return criterion


def worst_if_nan(value: float) -> float:
    """``value``, or minus infinity for NaN: a figure that could not be computed never wins and ranks last."""
    return -math.inf if math.isnan(value) else float(value)


def average_auroc_ranks(rows: Sequence[BlockRow]) -> list[float]:
    """Per block, its rank by ID-vs-kind AUROC (1 = best; ties share the average rank; NaN ranks last),
    averaged over the kinds the rows hold. -> one float per row."""
    from scipy.stats import rankdata  # lazy: scipy is heavy, and only the ranking criteria need it

    kinds = list(rows[0].kinds)
    ranks = np.zeros(len(rows))
    for kind in kinds:
        ranks += rankdata(-np.array([worst_if_nan(row.kinds[kind].auroc) for row in rows]), method="average")
    return (ranks / len(kinds)).tolist()


def _jigsaw(key: str) -> Callable[[Sequence[BlockRow]], list[float]]:
    return lambda rows: [float(getattr(row.kinds[JIGSAW], key)) for row in rows]


def _over_kinds(reduce) -> Callable[[Sequence[BlockRow]], list[float]]:
    return lambda rows: [float(reduce([figures.auroc for figures in row.kinds.values()])) for row in rows]


register_criterion(Criterion(
    "norm_ratio", "the block with the largest NormRatio of ID images to their jigsaw puzzles (the paper's rule)",
    _jigsaw("norm_ratio"), jigsaw_only=True))
register_criterion(Criterion(
    "auroc", "the block whose FeatureNorm best separates ID images from their jigsaw puzzles (AUROC)",
    _jigsaw("auroc"), jigsaw_only=True))
register_criterion(Criterion(
    "mean_rank", "the block with the best rank by ID-vs-pseudo-OOD AUROC, averaged over the pseudo-OOD kinds",
    lambda rows: [-rank for rank in average_auroc_ranks(rows)], min_kinds=2))
register_criterion(Criterion(
    "mean_auroc", "the block whose FeatureNorm separates ID images from the pseudo-OOD kinds best on average "
                  "(ID-vs-kind AUROC, mean over the kinds)", _over_kinds(np.mean)))
register_criterion(Criterion(
    "min_auroc", "the block whose worst ID-vs-pseudo-OOD AUROC over the kinds is the highest", _over_kinds(np.min)))


def check_kinds(criterion: str, kinds: Sequence[str]) -> None:
    """Raise ValueError when ``criterion`` is unknown or cannot read the measured ``kinds``."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown block selection criterion '{criterion}'; use one of: {', '.join(CRITERIA)}")
    rule = CRITERIA[criterion]
    if rule.jigsaw_only and JIGSAW not in kinds:
        raise ValueError(f"criterion '{criterion}' reads the jigsaw puzzles, which were not measured "
                         f"(pseudo-OOD: {', '.join(kinds) or 'none'}); add jigsaw to the kinds or use "
                         "--criterion mean_rank")
    if len(kinds) < rule.min_kinds:
        raise ValueError(f"criterion '{criterion}' combines several pseudo-OOD kinds; list at least "
                         f"{rule.min_kinds} (measured: {', '.join(kinds) or 'none'}), e.g. "
                         "jigsaw,pixel_shuffle,noise,mixup,blur")


def criterion_values(rows: Sequence[BlockRow], criterion: str) -> list[float]:
    """The figure ``criterion`` maximises, per row (see :data:`CRITERIA`).

    ``mean_rank`` gives minus the average AUROC rank over the kinds (:func:`average_auroc_ranks`), so that
    larger is better for every criterion; ``mean_auroc`` and ``min_auroc`` are NaN where any kind's AUROC is.

    Raises:
        ValueError: an unknown criterion, or one whose kinds were not measured.
    """
    check_kinds(criterion, list(rows[0].kinds) if rows else [])
    return CRITERIA[criterion].figure(rows)


def best_index(values: Sequence[float]) -> int:
    """The position of the largest value; the first one on ties; NaN never wins (unless all are NaN)."""
    clean = [worst_if_nan(v) for v in values]
    return max(range(len(clean)), key=lambda i: (clean[i], -i))


def choose_block(rows: Sequence[BlockRow], criterion: str = "norm_ratio") -> BlockRow:
    """The row maximising ``criterion`` (see :func:`criterion_values`); the first one on ties; NaN never wins."""
    if not rows:
        raise ValueError("no blocks to choose from; list at least one block")
    return rows[best_index(criterion_values(rows, criterion))]


def best_block_per_kind(rows: Sequence[BlockRow]) -> dict[str, str]:
    """``{kind: name of the block with the highest ID-vs-kind AUROC}`` (the first one on ties)."""
    return {kind: rows[best_index([row.kinds[kind].auroc for row in rows])].name for kind in rows[0].kinds}
