"""The block-selection study: which pseudo-OOD evidence predicts the block that is best on real OOD data.

Each model contributes, per candidate block, the evidence that selection sees (for every pseudo-OOD
kind, the NormRatio of ID images to it and the AUROC of ID vs. it, from ``block_selection.json``)
and the truth that selection never sees (FeatureNorm's average AUROC on the real OOD sets, from
``ood_results.json --all-blocks``). Beside the criteria, each method in the results that reads every
block (``norm_profile``) is a rule of its own, with no block to pick. Models are split in two parts:
the rules are compared on the *development* part, and the one recommended there is then reported on
the *held-out* part, whose OOD sets played no part in the choice.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.criteria import CRITERIA, choose_block
from ..core.metrics import average_metrics
from ..evaluation.results import AVERAGE, group_names
from .seed_tables import EVERY_BLOCK, Run, every_block_aurocs, read_run
from .summary import mean_std
from ..selection.plot import pyplot, save_figure


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant or has NaN."""
    from scipy.stats import rankdata  # lazy: scipy is heavy, and only this path needs it

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any() or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def evidence(run: Run) -> dict[str, list[float]]:
    """``"<kind> NormRatio"`` and ``"<kind> AUROC"`` -> one value per block, in forward order."""
    rows = run.selection.rows
    found: dict[str, list[float]] = {}
    for kind in rows[0].kinds:
        for key, label in (("norm_ratio", "NormRatio"), ("auroc", "AUROC")):
            found[f"{kind} {label}"] = [float(getattr(row.kinds[kind], key)) for row in rows]
    return found


def real_aurocs(run: Run) -> list[float]:
    """FeatureNorm's average real-OOD AUROC (percent) per block, in the order of the selection rows."""
    aurocs = run.block_aurocs
    return [aurocs[row.name] for row in run.selection.rows]


def gap_of(run: Run, block: str) -> float:
    """AUROC points between the best block in hindsight and ``block``."""
    aurocs = run.block_aurocs
    return max(aurocs.values()) - aurocs[block]


def without_sets(run: Run, sets: Sequence[str]) -> Run:
    """The run with the OOD sets ``sets`` left out of every average AUROC (per block and per method); the
    per-set figures are kept. ValueError if no set is left."""
    left_out = {AVERAGE, *group_names(run.results), *sets}

    def averaged(per_set: dict[str, Any]) -> dict[str, Any]:
        kept = {name: {"auroc": figures["auroc"]} for name, figures in per_set.items() if name not in left_out}
        if not kept:
            raise ValueError(f"{run.folder.name}: no OOD set is left without {', '.join(sets)}")
        return {**per_set, AVERAGE: average_metrics(kept)}

    results = dict(run.results)
    results["per_block"] = {block: averaged(per_set) for block, per_set in run.results["per_block"].items()}
    results["methods"] = {name: averaged(per_set) for name, per_set in run.results.get("methods", {}).items()}
    return Run(run.folder, run.selection, results)


@dataclass
class ModelRow:
    """One model of the study: the block each rule picks (a criterion's block, or :data:`EVERY_BLOCK` for a
    method that reads every block) and what it costs (best block's AUROC minus the rule's, in points)."""

    name: str
    part: str  # "development" or "held-out"
    best_block: str
    best_auroc: float
    last_block_gap: float
    picks: dict[str, str]
    gaps: dict[str, float]
    correlations: dict[str, float]  # evidence -> Spearman rho with the real per-block AUROC


def model_row(run: Run, part: str, criteria: Sequence[str] = tuple(CRITERIA)) -> ModelRow:
    aurocs = run.block_aurocs
    best = max(aurocs, key=lambda block: aurocs[block])
    rows = run.selection.rows
    picks = {c: choose_block(rows, c).name for c in criteria}
    gaps = {c: gap_of(run, block) for c, block in picks.items()}
    for name, auroc in every_block_aurocs(run.results).items():
        picks[name], gaps[name] = EVERY_BLOCK, aurocs[best] - auroc
    truth = real_aurocs(run)
    return ModelRow(run.folder.name, part, best, aurocs[best], gap_of(run, list(aurocs)[-1]), picks, gaps,
                    {name: spearman(values, truth) for name, values in evidence(run).items()})


def recommend(rows: Sequence[ModelRow]) -> str:
    """The rule (criterion or every-block method) with the smallest mean gap on the development models (the
    first on ties)."""
    development = [r for r in rows if r.part == "development"]
    if not development:
        raise ValueError("the study has no development models")
    criteria = list(development[0].gaps)
    means = {c: math.fsum(r.gaps[c] for r in development) / len(development) for c in criteria}
    return min(criteria, key=lambda c: (means[c], criteria.index(c)))


def _part_stats(rows: Sequence[ModelRow], part: str, criterion: str) -> tuple[str, str]:
    gaps = [(r.gaps[criterion], r.name) for r in rows if r.part == part]
    if not gaps:
        return "–", "–"
    stat = mean_std([g for g, _ in gaps])
    worst = max(gaps)
    return f"{stat.mean:.2f} ± {stat.std:.2f}", f"{worst[0]:.2f} ({worst[1]})"


def criteria_table(rows: Sequence[ModelRow], recommended: str) -> str:
    """Markdown: per rule, mean ± std of the gap on each part and the held-out worst model."""
    lines = ["| rule | development gap (points) | held-out gap (points) | held-out worst |",
             "|---|---:|---:|---|"]
    for criterion in rows[0].gaps:
        dev, _ = _part_stats(rows, "development", criterion)
        held, worst = _part_stats(rows, "held-out", criterion)
        mark = " (recommended)" if criterion == recommended else ""
        lines.append(f"| {criterion}{mark} | {dev} | {held} | {worst} |")
    for part in ("development", "held-out"):
        last = [r.last_block_gap for r in rows if r.part == part]
        if last:
            stat = mean_std(last)
            lines.append(f"| (last block, {part}) | {stat.mean:.2f} ± {stat.std:.2f} | | |" if part == "development"
                         else f"| (last block, {part}) | | {stat.mean:.2f} ± {stat.std:.2f} | |")
    return "\n".join(lines) + "\n"


def models_table(rows: Sequence[ModelRow]) -> str:
    """Markdown: per model, the best block and each rule's pick with its gap."""
    criteria = list(rows[0].gaps)
    lines = ["| model | part | best block (AUROC %) | last block gap | " + " | ".join(criteria) + " |",
             "|---|---|---|---:|" + "---|" * len(criteria)]
    for r in rows:
        picks = " | ".join(f"{r.picks[c]} ({r.gaps[c]:.2f})" for c in criteria)
        lines.append(f"| {r.name} | {r.part} | {r.best_block} ({r.best_auroc:.2f}) | {r.last_block_gap:.2f} | {picks} |")
    return "\n".join(lines) + "\n"


def evidence_table(rows: Sequence[ModelRow]) -> str:
    """Markdown: per evidence, the mean Spearman rho with the real per-block AUROC on each part."""
    names = list(rows[0].correlations)
    lines = ["| evidence (per block) | development rho | held-out rho |", "|---|---:|---:|"]
    for name in names:
        cells = []
        for part in ("development", "held-out"):
            values = [r.correlations.get(name, math.nan) for r in rows if r.part == part]
            values = [v for v in values if not math.isnan(v)]
            cells.append(f"{mean_std(values).mean:+.2f} (n={len(values)})" if values else "–")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot_evidence(rows: Sequence[ModelRow], path: str | Path) -> Path:
    """Heatmap of Spearman rho (evidence x model), development models first."""
    plt = pyplot()
    names = list(rows[0].correlations)
    grid = np.array([[r.correlations.get(n, math.nan) for r in rows] for n in names])
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(rows), 1.2 + 0.35 * len(names)))
    image = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.name}{' *' if r.part == 'held-out' else ''}" for r in rows], rotation=60, ha="right",
                       fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_title("Spearman rho over blocks: evidence vs. real OOD AUROC (* = held-out)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save_figure(fig, path)


def plot_gaps(rows: Sequence[ModelRow], path: str | Path) -> Path:
    """Bars: per model (held-out ones marked *), each rule's gap to the best block in AUROC points."""
    plt = pyplot()
    rules = list(rows[0].gaps)
    width = 0.8 / len(rules)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(rows), 5.5))
    for number, rule in enumerate(rules):
        ax.bar(np.arange(len(rows)) + (number - (len(rules) - 1) / 2) * width, [r.gaps[rule] for r in rows],
               width, label=rule)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.name}{' *' if r.part == 'held-out' else ''}" for r in rows], rotation=60, ha="right",
                       fontsize=7)
    ax.set_ylabel("gap (AUROC points)")
    ax.set_title("Each rule's gap to the best block in hindsight (* = held-out; below 0: better than it)")
    ax.legend(fontsize=7, ncol=3)
    return save_figure(fig, path)


def run_study(development: Sequence[str | Path], held_out: Sequence[str | Path], out: str | Path,
              without: Sequence[str] = ()) -> dict[str, Any]:
    """Read the run folders, write ``study.md``, ``study.json``, ``evidence.png`` and ``gaps.png`` to ``out``; return
    the report.

    ``without``: OOD sets to leave out of a second rules table (e.g. the synthetic noise sets, which any
    rule that reacts to noise passes easily); the recommendation is made on all sets.
    """
    runs = [(read_run(f), "development") for f in development] + [(read_run(f), "held-out") for f in held_out]
    rows = [model_row(run, part) for run, part in runs]
    recommended = recommend(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_evidence(rows, out / "evidence.png")
    plot_gaps(rows, out / "gaps.png")
    text = ["# Block-selection study", "",
            f"{sum(r.part == 'development' for r in rows)} development and {sum(r.part == 'held-out' for r in rows)} "
            f"held-out models. Gap: AUROC points between the best block in hindsight and the block picked "
            f"(FeatureNorm, average over each model's real OOD sets). Recommended on the development part: "
            f"**{recommended}**.", "",
            "## Rules", "", criteria_table(rows, recommended),
            "## Models", "", models_table(rows),
            "## Evidence", "", "Spearman rank correlation over each model's blocks between the evidence and "
            "the real OOD AUROC, averaged over models (+1: the evidence ranks the blocks as the real OOD sets do).",
            "", evidence_table(rows)]
    report = {"recommended": recommended, "models": [asdict(r) for r in rows]}
    if without:
        restricted = [model_row(without_sets(run, without), part) for run, part in runs]
        text[text.index("## Models"):text.index("## Models")] = [
            f"## Rules without {', '.join(without)}", "", "The same gaps with these OOD sets left out of every "
            "average (the recommendation above is kept).", "", criteria_table(restricted, recommended)]
        report["without"] = {"sets": list(without), "models": [asdict(r) for r in restricted]}
    (out / "study.md").write_text("\n".join(text))
    (out / "study.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return report
