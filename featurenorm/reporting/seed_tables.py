"""Tables over several runs of one recipe (seeds): the block choice of every criterion against the
best block in hindsight, and FeatureNorm's AUROC at every block.

Input per run: its folder, holding ``block_selection.json`` (select_block.py) and
``ood_results.json`` written by ``eval_ood.py --all-blocks``. Output: markdown tables, a JSON dict
and the seeds' mean NormRatio-vs-AUROC plot. ``scripts/summarize_mnist_family.py`` uses them for
the MNIST-family reproduction.

"Best block in hindsight" looks at the OOD test sets, which no selection may; the gap to it is
what a selection rule cost. AUROCs are the average over the run's OOD sets, in percent.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.block_rows import BlockRow, KindFigures
from ..core.criteria import CRITERIA, choose_block
from ..errors import UserError
from ..evaluation.results import AVERAGE
from ..methods import METHODS
from ..methods.base import uses_all_blocks
from ..selection.api import BlockSelection
from .summary import MeanStd, RunsSummary, format_summary, mean_std, summarize_results
from .plots import plot_norm_ratio_vs_auroc


@dataclass
class Run:
    """One run's selection and results, as read from its folder."""

    folder: Path
    selection: BlockSelection
    results: dict[str, Any]

    @property
    def block_aurocs(self) -> dict[str, float]:
        """Block -> FeatureNorm's average OOD AUROC in percent, in forward order."""
        return {block: 100.0 * per_set[AVERAGE]["auroc"] for block, per_set in self.results["per_block"].items()}


def read_run(folder: str | Path) -> Run:
    """A run folder's ``block_selection.json`` and ``ood_results.json`` (with ``per_block``)."""
    folder = Path(folder)
    loaded = []
    for name in ("block_selection.json", "ood_results.json"):
        path = folder / name
        try:
            loaded.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{path} not found; run select_block.py and eval_ood.py --all-blocks for this run") from None
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read {path} ({type(err).__name__}); rerun the stage that writes it") from None
    selection, results = loaded
    if not results.get("per_block"):
        raise UserError(f"{folder / 'ood_results.json'} has no per_block table; rerun eval_ood.py with --all-blocks")
    try:
        return Run(folder, BlockSelection.from_dict(selection), results)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / 'block_selection.json'} is not a block selection; rerun select_block.py") from None


# What the choice tables show for a method that reads every block instead of one (norm_profile).
EVERY_BLOCK = "every block"


def every_block_aurocs(results: Mapping[str, Any]) -> dict[str, float]:
    """Method -> average OOD AUROC (percent) of each method in ``results`` that reads every candidate block
    (:func:`~featurenorm.methods.base.uses_all_blocks`), in table order; such a method needs no block choice."""
    return {name: 100.0 * per_set[AVERAGE]["auroc"] for name, per_set in results.get("methods", {}).items()
            if name in METHODS and uses_all_blocks(METHODS[name]) and AVERAGE in per_set}


def criterion_choices(run: Run, criteria: Sequence[str] = tuple(CRITERIA)) -> dict[str, str]:
    """Criterion -> the block it picks from the run's selection rows."""
    return {criterion: choose_block(run.selection.rows, criterion).name for criterion in criteria}


def _best_block(aurocs: Mapping[str, float]) -> str:
    return max(aurocs, key=lambda block: aurocs[block])  # the first on ties


@dataclass
class ChoiceRow:
    """One way of choosing a block, over the runs: the blocks picked, their AUROC and the gap to the best."""

    rule: str
    blocks: list[str]
    auroc: MeanStd
    gap: MeanStd


def choice_rows(runs: Sequence[Run], criteria: Sequence[str] = tuple(CRITERIA)) -> list[ChoiceRow]:
    """Each criterion, the last block, the best block in hindsight, and each method that reads every block
    (its blocks shown as :data:`EVERY_BLOCK`; only when every run has it), over ``runs``.

    The gap is per run ``best AUROC - AUROC of the picked block`` (>= 0; for an every-block method, best
    block minus the method's AUROC, which is negative where it beats the best block), then mean ± std.
    """
    if not runs:
        raise ValueError("no runs to tabulate")
    picks: dict[str, list[str]] = {c: [] for c in criteria}
    picks["last block"], picks["best block (hindsight)"] = [], []
    for run in runs:
        aurocs = run.block_aurocs
        for criterion, block in criterion_choices(run, criteria).items():
            picks[criterion].append(block)
        picks["last block"].append(list(aurocs)[-1])
        picks["best block (hindsight)"].append(_best_block(aurocs))
    rows = []
    for rule, blocks in picks.items():
        values = [run.block_aurocs[block] for run, block in zip(runs, blocks)]
        gaps = [max(run.block_aurocs.values()) - value for run, value in zip(runs, values)]
        rows.append(ChoiceRow(rule, blocks, mean_std(values), mean_std(gaps)))
    methods = [every_block_aurocs(run.results) for run in runs]
    for name in [name for name in methods[0] if all(name in found for found in methods)]:
        values = [found[name] for found in methods]
        gaps = [max(run.block_aurocs.values()) - value for run, value in zip(runs, values)]
        rows.append(ChoiceRow(name, [EVERY_BLOCK] * len(runs), mean_std(values), mean_std(gaps)))
    return rows


def _cell(stat: MeanStd) -> str:
    return f"{stat.mean:.2f} ± {stat.std:.2f}"


def _blocks_cell(blocks: Sequence[str]) -> str:
    counts = {block: blocks.count(block) for block in dict.fromkeys(blocks)}
    return ", ".join(block if n == 1 else f"{block} ×{n}" for block, n in counts.items())


def choice_table(rows: Sequence[ChoiceRow]) -> str:
    """Markdown: rule | blocks picked | average AUROC | gap to the best block."""
    lines = ["| rule | block picked (per seed) | average AUROC (%) | short of the best block (points) |",
             "|---|---|---:|---:|"]
    lines += [f"| {r.rule} | {_blocks_cell(r.blocks)} | {_cell(r.auroc)} | {_cell(r.gap)} |" for r in rows]
    return "\n".join(lines) + "\n"


def _mean_rows(runs: Sequence[Run]) -> list[BlockRow]:
    """The runs' selection rows averaged block by block (the ID norm and each kind's figures)."""
    rows = []
    for position, first in enumerate(runs[0].selection.rows):
        here = [run.selection.rows[position] for run in runs]
        kinds = {kind: KindFigures(*(_mean(getattr(r.kinds[kind], key) for r in here)
                                     for key in ("norm_ratio", "norm_mean", "auroc")))
                 for kind in first.kinds}
        rows.append(BlockRow(first.index, first.name, first.shape, _mean(r.id_norm_mean for r in here), kinds))
    return rows


def _mean(values) -> float:
    values = [float(v) for v in values]
    return math.fsum(values) / len(values)


def _check_same_blocks(runs: Sequence[Run]) -> list[str]:
    names = [row.name for row in runs[0].selection.rows]
    for run in runs[1:]:
        if [row.name for row in run.selection.rows] != names:
            raise UserError(f"{run.folder} has other blocks than {runs[0].folder}; tabulate runs of one model only")
    return names


def block_table(runs: Sequence[Run], primary: str | None = None) -> str:
    """Markdown, one row per block: NormRatio (jigsaw), FeatureNorm's average AUROC and on ``primary``,
    each mean ± std over the runs, and how often ``norm_ratio`` picked the block."""
    names = _check_same_blocks(runs)
    picked = [choose_block(run.selection.rows, "norm_ratio").name for run in runs]
    header = "| block | NormRatio (jigsaw) | average AUROC (%) |"
    rule = "|---|---:|---:|"
    if primary:
        header += f" {primary} AUROC (%) |"
        rule += "---:|"
    lines = [header + " picked by norm_ratio |", rule + "---:|"]
    for position, name in enumerate(names):
        ratio = mean_std([run.selection.rows[position].norm_ratio for run in runs])
        cells = [name, f"{ratio.mean:.3f} ± {ratio.std:.3f}", _cell(mean_std([run.block_aurocs[name] for run in runs]))]
        if primary:
            cells.append(_cell(mean_std([100.0 * run.results["per_block"][name][primary]["auroc"] for run in runs])))
        cells.append(f"{picked.count(name)} of {len(runs)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_mean_norm_ratio_vs_auroc(runs: Sequence[Run], path: str | Path) -> Path:
    """``norm_ratio_vs_auroc.png`` of the runs' block-by-block means (see :func:`plots.plot_norm_ratio_vs_auroc`)."""
    names = _check_same_blocks(runs)
    per_block = {name: {AVERAGE: {"auroc": _mean(run.block_aurocs[name] / 100.0 for run in runs)}} for name in names}
    rows = _mean_rows(runs)
    return plot_norm_ratio_vs_auroc(rows, per_block, path, selected=choose_block(rows, "norm_ratio").as_selected())


def compact_methods_table(summary: RunsSummary, primary: str) -> str:
    """Markdown, one row per method: AUROC on ``primary``, then FPR95 / AUROC / AUPR-In averaged over the sets."""
    lines = [f"| method | n | {primary} AUROC | average FPR95 | average AUROC | average AUPR-In |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, stats in summary.methods.items():
        cells = [method, str(stats.n), _cell(stats.stats[primary]["auroc"])]
        cells += [_cell(stats.stats[AVERAGE][metric]) for metric in ("fpr95", "auroc", "aupr_in")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FAMILY = {"fashion_mnist": ("Fashion-MNIST", "mnist"), "mnist": ("MNIST", "fashion_mnist")}  # id -> (title, primary OOD)


def find_runs(root: str | Path, id_name: str) -> list[Run]:
    """The runs ``<root>/<id_name>_seed<N>/``, by seed."""
    folders = sorted(Path(root).glob(f"{id_name}_seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    if not folders:
        raise UserError(f"no runs {root}/{id_name}_seed*/; run scripts/reproduce_mnist_family.sh first")
    return [read_run(folder) for folder in folders]


def stage_seconds(timing_file: Path) -> dict[str, int]:
    """Total wall seconds per stage from the reproduction's ``timing.tsv`` (stage, run, seconds)."""
    totals: dict[str, int] = {}
    if timing_file.is_file():
        for line in timing_file.read_text().splitlines():
            stage, _, seconds = line.split("\t")
            totals[stage] = totals.get(stage, 0) + int(seconds)
    return totals


def write_family_summary(root: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.json``, ``<id>_methods.md`` and ``<id>_norm_ratio_vs_auroc.png`` to ``out``."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = stage_seconds(root / "timing.tsv")
    text = ["# featurenorm on MNIST and Fashion-MNIST", "",
            f"Wall time per stage, summed over all runs (s): {json.dumps(seconds)}; total {sum(seconds.values())} s.",
            ""]
    report: dict[str, Any] = {"seconds": seconds, "directions": {}}
    for id_name, (title, primary) in FAMILY.items():
        runs = find_runs(root, id_name)
        results = [run.results for run in runs]
        summary = summarize_results(results, names=[str(run.folder) for run in runs],
                                    metrics=("fpr95", "auroc", "aupr_in"))
        accuracy = mean_std([100.0 * r["id_accuracy"] for r in results])
        rows = choice_rows(runs)
        (out / f"{id_name}_methods.md").write_text(format_summary(summary, "md"))
        plot_mean_norm_ratio_vs_auroc(runs, out / f"{id_name}_norm_ratio_vs_auroc.png")
        text += [f"## {title} (ID) against {', '.join(summary.datasets)}", "",
                 f"{len(runs)} seeds; test accuracy {_cell(accuracy)} %. Mean ± std over the seeds (sample std).", "",
                 compact_methods_table(summary, primary), "Block choice:", "", choice_table(rows),
                 "FeatureNorm at every block:", "", block_table(runs, primary)]
        report["directions"][id_name] = {
            "n": len(runs), "ood_sets": summary.datasets, "test_accuracy": asdict(accuracy),
            "choices": [{"rule": r.rule, "blocks": r.blocks, "auroc": asdict(r.auroc), "gap": asdict(r.gap)}
                        for r in rows],
            "block_auroc": {name: asdict(mean_std([run.block_aurocs[name] for run in runs]))
                            for name in runs[0].block_aurocs}}
    (out / "summary.md").write_text("\n".join(text))
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
