"""The schema of ``ood_results.json``, in one place: its key names, its metric convention, its units, and
:func:`assemble_results`, which builds it from the per-image scores.

Metrics are fractions in [0, 1]. Per method, the results hold one entry per OOD set, ``average`` (the
mean over the sets) and, for a grouped benchmark such as OpenOOD v1.5, one entry per group (``near``,
``far``). Tables and comparisons show percentages rounded with :func:`to_percent`.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import UserError
from ..core.block_rows import SelectedBlock
from ..core.metrics import METRIC_KEYS, average_metrics, group_averages, ood_metrics

if TYPE_CHECKING:  # torch stays out of this module, which the tables and the comparisons import
    from .scoring import DatasetScores

AVERAGE = "average"


class FitStatus(str, enum.Enum):
    """How a method that learns ID-train statistics got them; ``fit`` in the results holds the values."""

    CACHED = "cached"  # read back from the fit cache
    FITTED = "fitted"  # computed in this run


CONVENTION = ("ID positive; FPR95 = fraction of OOD accepted at 95% ID acceptance; fpr95_openood = OpenOOD's "
              "FPR@95, OOD positive: fraction of ID rejected at 95% OOD recall")
# The paper's two metrics: the table columns of results that name none.
DEFAULT_TABLE_METRICS = ("fpr95", "auroc")
# Table headers of the metrics, with the direction in which they are better.
METRIC_LABELS = {"fpr95": ("FPR95", "↓"), "fpr95_openood": ("FPR@95 OpenOOD", "↓"), "auroc": ("AUROC", "↑"),
                 "aupr_in": ("AUPR-In", "↑"), "aupr_out": ("AUPR-Out", "↑")}


def to_percent(value: Any) -> float | None:
    """Fraction -> percent with 2 decimals, ``round(100 * x, 2)``; None for missing or NaN."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return round(100.0 * value, 2)


def methods_of(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    methods = results.get("methods") if isinstance(results, Mapping) else None
    if not isinstance(methods, Mapping) or not methods:
        raise UserError("results have no 'methods' entries; pass the dict written by eval_ood.py "
                        "(ood_results.json) with at least one method")
    return dict(methods)


def group_names(results: Mapping[str, Any]) -> list[str]:
    """The benchmark's groups of OOD sets (``near``, ``far``), in report order; none for the paper's."""
    groups = results.get("groups") if isinstance(results, Mapping) else None
    return list(groups) if isinstance(groups, Mapping) else []


def ood_set_names(results: Mapping[str, Any]) -> list[str]:
    """OOD set names in benchmark order: first appearance over the methods, ``average`` and groups excluded."""
    names: list[str] = []
    excluded = {AVERAGE, *group_names(results)}
    for per_set in methods_of(results).values():
        for name in per_set:
            if name not in excluded and name not in names:
                names.append(name)
    return names


@dataclass
class ResultsMeta:
    """The provenance fields of ``ood_results.json``."""

    arch: str | None
    block: SelectedBlock | None
    hyperparameters: dict[str, Any]
    fit: Mapping[str, FitStatus]
    id_dataset: str | None = None
    checkpoint: str | None = None
    seed: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, str] = field(default_factory=dict)  # OOD set -> how its channels were converted
    benchmark: str | None = None
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # e.g. OpenOOD's near and far
    table_metrics: Sequence[str] = DEFAULT_TABLE_METRICS


def assemble_results(meta: ResultsMeta, names: Sequence[str], id_scores: DatasetScores,
                     ood_scores: Mapping[str, DatasetScores], *, with_logits: bool, all_blocks: bool) -> dict[str, Any]:
    """The ``ood_results.json`` dict: metrics per method and OOD set (plus ``average``), and provenance."""
    methods: dict[str, Any] = {}
    for name in names:
        per_set = {}
        for set_name, result in ood_scores.items():
            metrics = ood_metrics(id_scores.scores[name].numpy(), result.scores[name].numpy())
            per_set[set_name] = {**metrics, "num_ood": int(result.scores[name].numel())}
        per_set[AVERAGE] = average_metrics({k: {m: v[m] for m in METRIC_KEYS}
                                              for k, v in per_set.items()})
        per_set.update(group_averages(per_set, meta.groups))
        methods[name] = per_set
    # without logits (FeatureNorm alone, early exit) there is no accuracy to report
    accuracy = id_scores.correct / id_scores.labelled if with_logits and id_scores.labelled else None
    num_id = id_scores.count
    results: dict[str, Any] = {
        "id_dataset": meta.id_dataset, "arch": meta.arch, "id_accuracy": accuracy, "num_id": num_id,
        "checkpoint": meta.checkpoint, "seed": meta.seed, "block": meta.block.to_dict() if meta.block else None,
        "convention": CONVENTION,
        "skipped": meta.skipped, "unreadable": meta.unreadable, "conversions": meta.conversions,
        "benchmark": meta.benchmark,
        "table_metrics": list(meta.table_metrics),
        "groups": {g: [s for s in members if s in ood_scores] for g, members in meta.groups.items()},
        "hyperparameters": meta.hyperparameters,
        "fit": {name: FitStatus(status).value for name, status in meta.fit.items()}, "methods": methods,
    }
    if all_blocks:
        per_block = {}
        for block in id_scores.block_norms:
            per_set = {s: ood_metrics(id_scores.block_norms[block].numpy(), r.block_norms[block].numpy())
                       for s, r in ood_scores.items()}
            per_set[AVERAGE] = average_metrics(per_set)
            per_set.update(group_averages(per_set, meta.groups))
            per_block[block] = per_set
        results["per_block"] = per_block
        if meta.block and meta.block.name in per_block:
            results["oracle"] = oracle_gap(per_block, meta.block.name)
    return results


def oracle_gap(per_block: Mapping[str, Mapping[str, Any]], selected: str) -> dict[str, Any]:
    """How far the selected block falls short of the best block in hindsight, by average OOD AUROC.

    The "oracle" looks at the OOD test sets, which selection never may; the gap says what the
    selection rule cost on this run. The first block wins ties.

    Args:
        per_block: ``ood_results.json["per_block"]``: ``{block: {set: metrics, "average": metrics}}``.
        selected: the block FeatureNorm was scored at (one of ``per_block``).

    Returns:
        ``{"best_block", "best_auroc", "selected_block", "selected_auroc", "difference"}``, AUROCs as
        fractions and ``difference = best_auroc - selected_auroc`` (>= 0).
    """
    averages = {block: per_set[AVERAGE]["auroc"] for block, per_set in per_block.items()}
    best = max(averages, key=lambda block: averages[block])
    return {"best_block": best, "best_auroc": averages[best], "selected_block": selected,
            "selected_auroc": averages[selected], "difference": averages[best] - averages[selected]}
