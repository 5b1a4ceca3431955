"""Our OpenOOD v1.5 results beside OpenOOD's published CIFAR-10 ResNet-18 post-hoc leaderboard.

The leaderboard lives in ``openood_leaderboard.json`` (package data, with its ``source``). It
ranks methods by near-OOD and far-OOD AUROC: percent, the mean over OpenOOD's three released
checkpoints of each checkpoint's group average (near: CIFAR-100 and TinyImageNet; far: MNIST,
SVHN, Textures, Places365). Our ``ood_results.json`` files (``eval_ood.py --benchmark
openood_v1.5``, one per checkpoint) hold the same group averages as fractions under ``near`` and
``far``; here every figure is in percent, and our mean ± std over the files uses OpenOOD's std
(``numpy.std``, ddof=0) so that the two ± read alike.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from .summary import MeanStd, mean_std
from ..benchmarks import benchmark_entry

LEADERBOARD_PATH = Path(__file__).with_name("openood_leaderboard.json")
GROUPS = ("near", "far")
# OpenOOD's scripts/eval_ood.py reports mean ± numpy.std over the checkpoints: the population std.
STD_DDOF = 0


def load_openood_leaderboard() -> dict[str, Any]:
    """The leaderboard as a fresh dict (callers may modify it without affecting others)."""
    with open(LEADERBOARD_PATH) as f:
        return json.load(f)


@dataclass(frozen=True)
class LeaderboardRow:
    """One published method: AUROC in percent; the stds are None where not at hand."""

    name: str
    ours: str | None
    near: float
    far: float
    near_std: float | None = None
    far_std: float | None = None


@dataclass(frozen=True)
class OurRow:
    """One of our methods over the result files, in percent, with its ranks against the leaderboard."""

    method: str
    near: MeanStd
    far: MeanStd
    near_rank: int
    far_rank: int
    counterpart: LeaderboardRow | None = None


@dataclass
class OpenOODComparison:
    """Everything :func:`format_openood_comparison` prints.

    Attributes:
        n_runs: number of result files.
        leaderboard: the published rows, in the leaderboard's order (near-OOD AUROC, descending).
        leaderboard_ranks: ``{name: (near rank, far rank)}`` among the published rows.
        ours: our methods present in every file, in the files' order.
        highlight: the method whose rank is stated in one sentence (FeatureNorm), if present.
        source: where the published numbers come from.
        warnings: one-line messages for stderr (runs that differ, incomplete groups, ...).
    """

    n_runs: int
    leaderboard: list[LeaderboardRow]
    leaderboard_ranks: dict[str, tuple[int, int]]
    ours: list[OurRow]
    highlight: str | None
    source: str
    warnings: list[str] = field(default_factory=list)


def rank_against(value: float, published: Sequence[float]) -> int:
    """Rank of ``value`` among ``published``: 1 + the number of published values strictly above it.

    Ties share the better rank, so a method equal to the leader is first.
    """
    return 1 + sum(1 for other in published if other > value)


def leaderboard_rows(board: Mapping[str, Any] | None = None) -> list[LeaderboardRow]:
    """The published rows of ``board`` (default: the package's leaderboard)."""
    board = board if board is not None else load_openood_leaderboard()
    return [LeaderboardRow(name=m["name"], ours=m.get("ours"), near=float(m["near_auroc"]), far=float(m["far_auroc"]),
                           near_std=m.get("near_auroc_std"), far_std=m.get("far_auroc_std"))
            for m in board["methods"]]


def _check_results(results: Mapping[str, Any], name: str, board: Mapping[str, Any]) -> list[str]:
    """One-line warnings for a result file that is comparable but imperfect; UserError when it is not."""
    benchmark, id_dataset = results.get("benchmark"), results.get("id_dataset")
    if benchmark != board["benchmark"]:
        raise UserError(f"{name}: results of benchmark '{benchmark or 'paper'}', not {board['benchmark']}; "
                        f"run eval_ood.py --benchmark {board['benchmark']} first")
    if id_dataset != board["id_dataset"]:
        raise UserError(f"{name}: ID dataset '{id_dataset}', but the leaderboard is for {board['id_dataset']}")
    notes = []
    if results.get("arch") != board["arch"]:
        notes.append(f"{name}: arch '{results.get('arch')}', the leaderboard's models are {board['arch']}; "
                     "the numbers are not comparable")
    declared = benchmark_entry(benchmark, id_dataset).groups
    scored = results.get("groups") or {}
    for group in GROUPS:
        missing = [s for s in declared.get(group, ()) if s not in scored.get(group, ())]
        if missing:
            notes.append(f"{name}: {group}-OOD average lacks {', '.join(missing)}; it is not OpenOOD's {group}-OOD")
    return notes


def _group_auroc(results: Mapping[str, Any], name: str, method: str, group: str) -> float:
    try:
        return 100.0 * float(results["methods"][method][group]["auroc"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{name}: methods.{method}.{group} has no numeric 'auroc'; "
                        "is it an ood_results.json of eval_ood.py --benchmark openood_v1.5?") from None


def compare_with_openood(results: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None,
                         highlight: str = "featurenorm") -> OpenOODComparison:
    """Our near/far AUROC (mean ± std over ``results``) beside the leaderboard, with ranks.

    Args:
        results: parsed ``ood_results.json`` dicts of ``--benchmark openood_v1.5`` runs on CIFAR-10,
            one per checkpoint (seed).
        names: a label per result (file names) for messages; default ``run 1``, ``run 2``, ...
        highlight: the method whose ranks :func:`format_openood_comparison` states in a sentence.
    Returns:
        The comparison; a method missing from some file is left out with a warning.
    """
    if not results:
        raise UserError("no results given; pass one ood_results.json per checkpoint")
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(results))]
    board = load_openood_leaderboard()
    published = leaderboard_rows(board)
    warnings = [note for r, name in zip(results, names) for note in _check_results(r, name, board)]
    methods = [m for m in results[0]["methods"] if all(m in r["methods"] for r in results[1:])]
    dropped = sorted({m for r in results for m in r["methods"]} - set(methods))
    if dropped:
        warnings.append(f"left out, not in every result file: {', '.join(dropped)}")
    near_published = [row.near for row in published]
    far_published = [row.far for row in published]
    by_ours = {row.ours: row for row in published if row.ours}
    ours = []
    for method in methods:
        near = mean_std([_group_auroc(r, n, method, "near") for r, n in zip(results, names)], ddof=STD_DDOF)
        far = mean_std([_group_auroc(r, n, method, "far") for r, n in zip(results, names)], ddof=STD_DDOF)
        ours.append(OurRow(method, near, far, rank_against(near.mean, near_published),
                           rank_against(far.mean, far_published), by_ours.get(method)))
    ranks = {row.name: (rank_against(row.near, [o.near for o in published if o is not row]),
                        rank_against(row.far, [o.far for o in published if o is not row])) for row in published}
    return OpenOODComparison(n_runs=len(results), leaderboard=published, leaderboard_ranks=ranks, ours=ours,
                             highlight=highlight if highlight in methods else None, source=board["source"],
                             warnings=warnings)


# ----------------------------------------------------------------------------------------- output
def _cell(mean: float, std: float | None) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], body: list[list[str]], fmt: str, left: int = 1) -> list[str]:
    """Rows as aligned text (first ``left`` columns left-aligned) or as a Markdown table."""
    if fmt == "md":
        rule = "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"
        return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in body)]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    return ["  ".join(cell.ljust(widths[i]) if i < left else cell.rjust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in [header] + body]


def format_openood_comparison(comparison: OpenOODComparison, fmt: str = "text") -> str:
    """Render a comparison as ``text`` (aligned columns) or ``md`` (Markdown tables).

    First table: the leaderboard and our methods together, sorted by near-OOD AUROC (the
    leaderboard's order), each with its near and far rank among the published methods. Then one
    sentence with the highlighted method's ranks, and a table of our methods beside the
    published method that computes the same score (ours - published, in points).
    """
    if fmt not in ("text", "md"):
        raise UserError(f"unknown format '{fmt}'; use text or md")
    n_published = len(comparison.leaderboard)
    rows: list[tuple[float, int, list[str]]] = []
    for row in comparison.leaderboard:
        near_rank, far_rank = comparison.leaderboard_ranks[row.name]
        rows.append((row.near, 1, [row.name, _cell(row.near, row.near_std), _cell(row.far, row.far_std),
                                   str(near_rank), str(far_rank)]))
    for row in comparison.ours:
        rows.append((row.near.mean, 0, [f"{row.method} (ours)", _cell(row.near.mean, row.near.std),
                                        _cell(row.far.mean, row.far.std), str(row.near_rank), str(row.far_rank)]))
    rows.sort(key=lambda item: (-item[0], item[1]))
    lines = [
        f"OpenOOD v1.5, CIFAR-10, ResNet-18: near-OOD and far-OOD AUROC in % (higher is better); ours: mean ± std "
        f"over {comparison.n_runs} result file{'s' if comparison.n_runs != 1 else ''} (numpy.std, ddof=0, as "
        "OpenOOD); ranks among the published methods",
        f"published: {comparison.source}",
        "",
        *_table(["method", "near-OOD AUROC", "far-OOD AUROC", "near rank", "far rank"], [r[2] for r in rows], fmt),
        "",
        f"rank: the position among the {n_published} published methods (for ours: where it would enter)",
    ]
    highlighted = next((row for row in comparison.ours if row.method == comparison.highlight), None)
    if highlighted is not None:
        lines.append(f"{highlighted.method} ranks {highlighted.near_rank} of {n_published + 1} by near-OOD AUROC "
                     f"and {highlighted.far_rank} of {n_published + 1} by far-OOD AUROC "
                     f"(the {n_published} published methods and {highlighted.method})")
    paired = [row for row in comparison.ours if row.counterpart is not None]
    if paired:
        body = [[row.method, row.counterpart.name, f"{row.near.mean:.2f}", f"{row.counterpart.near:.2f}",
                 f"{row.near.mean - row.counterpart.near:+.2f}", f"{row.far.mean:.2f}", f"{row.counterpart.far:.2f}",
                 f"{row.far.mean - row.counterpart.far:+.2f}"] for row in paired]
        lines += ["", "ours beside the same score on the leaderboard (diff = ours - published, in points):", "",
                  *_table(["ours", "published", "near ours", "near published", "near diff", "far ours",
                           "far published", "far diff"], body, fmt, left=2)]
    return "\n".join(lines) + "\n"
