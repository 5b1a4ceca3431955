"""The whole chain on bundled data: train on digits, select the block, evaluate against synthetic OOD sets.

Each stage is skipped when its output is already there and newer than its input, so a rerun
finishes at once; ``fresh=True`` starts over.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

from ..config import Config, load_config
from ..core.block_rows import BlockRow
from ..core.criteria import CRITERIA, choose_block
from ..data.synthetic import MANIFEST, write_synthetic_ood
from ..evaluation.results import AVERAGE
from ..reporting.seed_tables import EVERY_BLOCK, every_block_aurocs
from ..selection.api import BlockSelection
from ..training.checkpoint import read_checkpoint
from ..training.loop import train
from .evaluate import run_evaluation
from ..reporting.tables import format_block_table, per_block_text, results_table
from .select import run_selection


def criteria_gaps_text(rows: Sequence[BlockRow], per_block: dict, every_block: Mapping[str, float] = {}) -> str:
    """One line: the block each criterion picks and its gap to the best block (average AUROC points), then the
    gap of each method that reads every block (``every_block``: method -> its average AUROC in percent)."""
    aurocs = {block: 100.0 * per_set[AVERAGE]["auroc"] for block, per_set in per_block.items()}
    best = max(aurocs.values())
    picks = []
    for criterion in CRITERIA:
        try:
            block = choose_block(rows, criterion).name
        except ValueError:  # a criterion whose kinds were not measured
            continue
        picks.append(f"{criterion} {block} ({best - aurocs[block]:.2f})")
    picks += [f"{name} {EVERY_BLOCK} ({best - auroc:.2f})" for name, auroc in every_block.items()]
    return "each criterion's block (points short of the best): " + ", ".join(picks)


def _newer(output: Path, source: Path) -> bool:
    return output.is_file() and source.is_file() and output.stat().st_mtime >= source.stat().st_mtime


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_quickstart(config: str | Path = "conf/digits.json", overrides: Sequence[str] = (), fresh: bool = False,
                   ood_count: int = 200, progress: bool = True) -> dict:
    """Run train -> select_block -> eval_ood on the config; return the OOD results dict."""
    cfg: Config = load_config(config, overrides)
    save_dir = cfg.save_dir
    if fresh and save_dir.exists():
        shutil.rmtree(save_dir)
    started = time.perf_counter()
    last = save_dir / "last.pt"

    _banner(f"1/3 train {cfg.arch} (width {cfg.width}) on {cfg.id_dataset}, {cfg.epochs} epochs -> {last}")
    state = read_checkpoint(last) if last.is_file() else None
    if state is not None and state.get("finished") and state["epoch"] >= cfg.epochs:
        print(f"reusing the finished run in {save_dir} (test accuracy {state['metrics'].get('test_acc', 0):.4f})")
    else:
        metrics = train(cfg, resume=state is not None, progress=progress)
        print(f"test accuracy {metrics['test_acc']:.4f}")

    selection_path = save_dir / "block_selection.json"
    _banner(f"2/3 select the block by {cfg.criterion} (ID training images vs. pseudo-OOD made from them: "
            f"{', '.join(cfg.pseudo_ood)})")
    if _newer(selection_path, last):
        selection = BlockSelection.read(selection_path)
        print(f"reusing {selection_path}")
    else:
        selection = run_selection(cfg, progress=progress)
    print(format_block_table(selection.rows, selection.selected))

    _banner("3/3 evaluate on synthetic OOD sets (made from data that installed packages ship)")
    ood_root = save_dir / "ood"
    folders = write_synthetic_ood(ood_root, cfg.image_size, ood_count, seed=0)
    specs = [f"{name}={path}" for name, path in folders.items()]
    results_path = save_dir / "ood_results.json"
    manifests = [folder / MANIFEST for folder in folders.values()]
    if _newer(results_path, selection_path) and all(_newer(results_path, m) for m in manifests) and not fresh:
        results = json.loads(results_path.read_text())
        print(f"reusing {results_path}")
    else:
        results = run_evaluation(cfg, ood_specs=specs, all_blocks=True, save_scores=True, progress=progress).results
    print(results_table(results, "md"))
    if results.get("per_block"):
        print(f"\nFeatureNorm AUROC (%) at every block (* = selected by {selection.criterion}):")
        print(per_block_text(results))
    if results.get("oracle"):
        oracle = results["oracle"]
        print(f"oracle gap: best block {oracle['best_block']} {100 * oracle['best_auroc']:.2f}, selected block "
              f"{oracle['selected_block']} {100 * oracle['selected_auroc']:.2f}, difference "
              f"{100 * oracle['difference']:.2f} AUROC points")
        print(criteria_gaps_text(selection.rows, results["per_block"], every_block_aurocs(results)))
    plots = [save_dir / name for name in ("norm_ratio.png", "feature_norm_hist.png", "norm_ratio_vs_auroc.png")]
    print("\nplots:")
    for plot in plots:
        print(f"  {plot}{'' if plot.is_file() else '  (missing)'}")
    print(f"\nfinished in {time.perf_counter() - started:.0f}s; results in {save_dir}/")
    print("next, real images: bash scripts/reproduce_mnist_family.sh trains, selects and scores on MNIST and "
          "Fashion-MNIST (3 seeds each way; README, Real data)")
    return results
