"""The schema of ``ood_results.json``, in one place: its key names, its metric convention and its units.

Metrics are fractions in [0, 1]. Per method, the results hold one entry per OOD set, ``average`` (the
mean over the sets) and, for a grouped benchmark such as OpenOOD v1.5, one entry per group (``near``,
``far``). Tables and comparisons show percentages rounded with :func:`to_percent`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import UserError

AVERAGE = "average"
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
