"""Mean ± std of OOD metrics over several runs (seeds), laid out like the paper's table.

Input: ``ood_results.json`` files written by ``eval_ood.py`` (metrics as fractions in [0, 1]).
Output: one row per method, FPR95 and AUROC columns per OOD set plus their average, in percent.
The std is the *sample* standard deviation (ddof=1, Bessel-corrected), and 0 for a single run.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..evaluation.results import AVERAGE

METRICS = ("fpr95", "auroc")
METRIC_LABELS = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
_BETTER = {"fpr95": "lower is better", "auroc": "higher is better", "aupr_in": "higher is better",
           "aupr_out": "higher is better"}


@dataclass(frozen=True)
class MeanStd:
    """Mean and std (sample, ddof=1, unless asked otherwise; 0 when ``n == 1``) of ``n`` values."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float], ddof: int = 1) -> MeanStd:
    """Mean and standard deviation of ``values``.

    std = sqrt(sum_i (x_i - mean)^2 / (n - ddof)). The default ddof=1 is the sample
    (Bessel-corrected) estimate across runs; ddof=0 is the population std that OpenOOD reports
    (``numpy.std``). With a single run there is no spread to estimate and std is reported as 0.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")
    mean = math.fsum(values) / n
    if n == 1:
        return MeanStd(mean, 0.0, 1)
    variance = math.fsum((x - mean) ** 2 for x in values) / (n - ddof)
    return MeanStd(mean, math.sqrt(variance), n)


@dataclass
class MethodSummary:
    """Per-dataset (and ``average``) statistics of one method, in percent, over ``n`` runs."""

    n: int
    stats: dict[str, dict[str, MeanStd]] = field(default_factory=dict)  # dataset -> metric -> MeanStd


@dataclass
class RunsSummary:
    """Everything :func:`format_summary` prints.

    Attributes:
        n_runs: number of result files.
        id_datasets / archs: the distinct values seen, in first-seen order.
        datasets: the OOD sets summarized (common to all runs), in benchmark order.
        methods: method name -> :class:`MethodSummary`, in first-seen order.
        warnings: one-line messages for stderr (runs that differ).
        metrics: the metrics summarized, in column order.
    """

    n_runs: int
    id_datasets: list[str]
    archs: list[str]
    datasets: list[str]
    methods: dict[str, MethodSummary]
    warnings: list[str] = field(default_factory=list)
    metrics: tuple[str, ...] = METRICS


def load_results_files(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read and minimally validate ``ood_results.json`` files; any problem is a :class:`UserError`."""
    if not paths:
        raise UserError("no results files given; pass one or more runs/*/ood_results.json")
    loaded = []
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
        except FileNotFoundError:
            raise UserError(f"results file {path} not found; run eval_ood.py first or fix the path") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read results file {path} ({type(err).__name__}: {err}); "
                            "is it an ood_results.json written by eval_ood.py?") from None
        if not isinstance(results, dict) or not isinstance(results.get("methods"), dict) or not results["methods"]:
            raise UserError(f"results file {path} has no 'methods' table; "
                            "is it an ood_results.json written by eval_ood.py?")
        loaded.append(results)
    return loaded


def _ood_sets(results: Mapping[str, Any]) -> list[str]:
    """The OOD sets every method of one run has, in that run's (benchmark) order (no average, no groups)."""
    excluded = {AVERAGE, *(results.get("groups") or {})}
    per_method = [[d for d in table if d not in excluded] for table in results["methods"].values()]
    first = per_method[0]
    return [d for d in first if all(d in sets for sets in per_method[1:])]


def _metric_percent(results: Mapping[str, Any], name: str, method: str, dataset: str, metric: str) -> float:
    try:
        return 100.0 * float(results["methods"][method][dataset][metric])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{name}: methods.{method}.{dataset} has no numeric '{metric}'") from None


def _distinct(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def summarize_results(results: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None,
                      metrics: Sequence[str] = METRICS) -> RunsSummary:
    """Mean ± sample std, in percent, of every method's metrics (FPR95 and AUROC unless told) over runs.

    Args:
        results: parsed ``ood_results.json`` dicts, one per run.
        names: labels of the runs for messages (e.g. their paths); defaults to ``run 1`` … .
        metrics: keys of :data:`METRIC_LABELS`, in column order.

    Only the OOD sets present in every run are summarized (a warning says so when runs
    differ). A method missing from some runs is summarized over the runs that have it (its
    ``n`` shows how many). The ``average`` column is, per run, the mean over the summarized sets
    (so it always matches the columns shown), then mean ± std over runs.
    """
    if not results:
        raise UserError("no results to summarize")
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be some of {', '.join(METRIC_LABELS)}, got {list(metrics)}")
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(results))]
    warnings = []
    for key in ("id_dataset", "arch"):
        values = [str(r.get(key)) for r in results]
        if len(set(values)) > 1:
            listing = ", ".join(f"{name}: {value}" for name, value in zip(names, values))
            warnings.append(f"runs differ in {key} ({listing}); their mean may not mean much")

    sets_per_run = [_ood_sets(r) for r in results]
    common = [d for d in sets_per_run[0] if all(d in sets for sets in sets_per_run[1:])]
    if any(set(sets) != set(sets_per_run[0]) for sets in sets_per_run[1:]):
        dropped = sorted({d for sets in sets_per_run for d in sets} - set(common))
        warnings.append(f"runs differ in their OOD sets; summarizing only the {len(common)} sets common to all "
                        f"runs ({', '.join(common) or 'none'}); left out: {', '.join(dropped)}")
    if not common:
        raise UserError("the runs share no OOD set; nothing to summarize")

    method_names = _distinct([m for r in results for m in r["methods"]])
    partial = []
    methods = {}
    for method in method_names:
        runs = [(name, r) for name, r in zip(names, results) if method in r["methods"]]
        if len(runs) < len(results):
            partial.append(f"{method} ({len(runs)} of {len(results)})")
        per_dataset: dict[str, dict[str, MeanStd]] = {}
        for metric in metrics:
            # values[run][dataset], in percent
            values = [[_metric_percent(r, name, method, d, metric) for d in common] for name, r in runs]
            for j, dataset in enumerate(common):
                per_dataset.setdefault(dataset, {})[metric] = mean_std([row[j] for row in values])
            per_dataset.setdefault(AVERAGE, {})[metric] = mean_std([math.fsum(row) / len(row) for row in values])
        methods[method] = MethodSummary(n=len(runs), stats=per_dataset)
    if partial:
        warnings.append("some methods are missing from some runs and are summarized over fewer runs: "
                        + ", ".join(partial))

    return RunsSummary(n_runs=len(results),
                       id_datasets=_distinct([str(r.get("id_dataset")) for r in results]),
                       archs=_distinct([str(r.get("arch")) for r in results]),
                       datasets=common, methods=methods, warnings=warnings, metrics=tuple(metrics))


def _columns(summary: RunsSummary) -> list[str]:
    return summary.datasets + [AVERAGE]


def format_summary(summary: RunsSummary, fmt: str = "md") -> str:
    """Render a :class:`RunsSummary` as ``md`` (cells ``mean ± std``, 2 decimals) or ``csv``.

    The CSV has one row per method with columns ``method, n`` then
    ``<set>_<metric>_mean, <set>_<metric>_std`` for every set and ``average`` (4 decimals).
    """
    if fmt == "md":
        return _format_md(summary)
    if fmt == "csv":
        return _format_csv(summary)
    raise UserError(f"unknown format '{fmt}'; use md or csv")


def _format_md(summary: RunsSummary) -> str:
    header = ["method", "n"] + [f"{d} {METRIC_LABELS[m]}" for d in _columns(summary) for m in summary.metrics]
    described = [f"{METRIC_LABELS[m]} ({_BETTER[m]})" for m in summary.metrics]
    listing = " and ".join(described) if len(described) <= 2 else ", ".join(described[:-1]) + " and " + described[-1]
    lines = [
        f"{'/'.join(summary.id_datasets)} vs OOD, arch {'/'.join(summary.archs)}: {listing} in %, mean ± std over the n runs (sample std, ddof=1; 0 when n=1); "
        f"{summary.n_runs} result file(s); average = mean over the OOD sets shown",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for method, ms in summary.methods.items():
        cells = [method, str(ms.n)]
        for dataset in _columns(summary):
            for metric in summary.metrics:
                stat = ms.stats[dataset][metric]
                cells.append(f"{stat.mean:.2f} ± {stat.std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_csv(summary: RunsSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "n"] + [f"{d}_{m}_{s}" for d in _columns(summary) for m in summary.metrics
                                       for s in ("mean", "std")])
    for method, ms in summary.methods.items():
        row: list[str] = [method, str(ms.n)]
        for dataset in _columns(summary):
            for metric in summary.metrics:
                stat = ms.stats[dataset][metric]
                row += [f"{stat.mean:.4f}", f"{stat.std:.4f}"]
        writer.writerow(row)
    return buffer.getvalue()
