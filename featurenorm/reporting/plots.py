"""The figures of evaluation: FeatureNorm histograms of ID against each OOD set, and NormRatio beside the
per-block OOD AUROC (NormRatio per block: :mod:`featurenorm.selection.plot`).

Every figure is saved atomically (``featurenorm.files``) at :data:`DPI` and closed. Metrics are fractions
in the results and percent on the axes, like the tables of :mod:`featurenorm.reporting.tables`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.block_rows import BlockRow, SelectedBlock
from ..evaluation.results import AVERAGE, to_percent
from ..selection.plot import (ID_COLOR, KIND_MARKERS, OOD_COLOR, SELECTED_COLOR, bar_figure_size, block_rows,
                              draw_norm_ratio_bars, kind_figures, kind_offset, legend_outside, pyplot, save_figure,
                              selected_position)


def _descending_ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = largest; ties share the average rank; NaN ranks last."""
    from scipy.stats import rankdata  # lazy: scipy is heavy, and only this figure ranks

    return rankdata(-np.where(np.isnan(values), -np.inf, values), method="average")


def hist_grid_shape(num_sets: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) of the histogram grid: at most ``max_cols`` subplots per row, at least one cell."""
    num_sets = max(num_sets, 1)
    cols = min(num_sets, max_cols)
    return math.ceil(num_sets / cols), cols


def hist_figure_size(num_sets: int) -> tuple[float, float]:
    """Figure size (inches) of the histogram grid: 4 x 3.2 inches per subplot."""
    rows, cols = hist_grid_shape(num_sets)
    return (4.0 * cols, 3.2 * rows + 0.6)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def shared_bin_edges(arrays: Sequence[np.ndarray], bins: int = 60) -> np.ndarray:
    """Common histogram bin edges over the finite values of all ``arrays``: (bins + 1,) float."""
    values = np.concatenate([_finite(a) for a in arrays]) if arrays else np.empty(0)
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(values.min()), float(values.max())
    if low == high:  # a constant input still needs a bin of non-zero width
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def plot_feature_norm_hist(id_norms: np.ndarray, ood_norms: dict[str, np.ndarray], block: str,
                           path: str | os.PathLike) -> Path:
    """Density histograms of FeatureNorm, ID against each OOD set (cf. Fig. 1 of Yu et al.).

    One subplot per OOD set on a grid of at most 3 columns; each overlays the ID and
    that set's norms on bins shared within the subplot. Non-finite values are dropped.

    Args:
        id_norms: (N_id,) float, FeatureNorm of ID samples at ``block``.
        ood_norms: set name -> (N_set,) float FeatureNorm.
        block: block name, for the title.
        path: PNG file to write.

    Returns:
        ``Path(path)``.
    """
    plt = pyplot()
    id_values = _finite(id_norms)
    sets = list(ood_norms.items())
    rows, cols = hist_grid_shape(len(sets))
    fig, axes = plt.subplots(rows, cols, figsize=hist_figure_size(len(sets)), squeeze=False)
    flat_axes = axes.ravel()
    # Without OOD sets the single cell shows ID alone rather than failing.
    panels = sets or [("", np.empty(0))]
    for ax, (set_name, norms) in zip(flat_axes, panels):
        ood_values = _finite(norms)
        edges = shared_bin_edges([id_values, ood_values])
        ax.hist(id_values, bins=edges, density=True, histtype="stepfilled", alpha=0.5,
                color=ID_COLOR, label=f"ID (n={id_values.size})")
        if set_name:
            ax.hist(ood_values, bins=edges, density=True, histtype="stepfilled", alpha=0.5,
                    color=OOD_COLOR, label=f"{set_name} (n={ood_values.size})")
        ax.set_title(f"ID vs {set_name}" if set_name else "ID")
        ax.set_xlabel("FeatureNorm")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    for ax in flat_axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"FeatureNorm at block {block}")
    return save_figure(fig, path)


def _per_block_auroc_percent(names: Sequence[str], per_block: Mapping[str, Any]) -> np.ndarray:
    """Average AUROC in percent per block name; NaN where a block has no result."""
    values = []
    for name in names:
        percent = to_percent(((per_block.get(name) or {}).get(AVERAGE) or {}).get("auroc"))
        values.append(np.nan if percent is None else percent)
    return np.array(values, dtype=np.float64)


def plot_norm_ratio_vs_auroc(rows: Sequence[BlockRow], per_block: dict, path: str | os.PathLike,
                             selected: SelectedBlock | None = None) -> Path:
    """NormRatio per block (bars, left axis) beside the block's average OOD AUROC (line, right axis), and
    below, the blocks' ranking by the real average AUROC beside their ranking by each pseudo-OOD kind.

    Shows whether the NormRatio choice, and each kind's evidence, agrees with the block that is
    best on the real OOD sets (cf. the block-wise analysis of Yu et al., CVPR 2023).

    Args:
        rows: one per block (``BlockRow.from_dict`` reads ``block_selection.json["blocks"]``).
        per_block: ``ood_results.json["per_block"]``: block name -> {set: metrics, "average": metrics}.
        path: PNG file to write.
        selected: the block to highlight, or None.

    Returns:
        ``Path(path)``.
    """
    plt = pyplot()
    names, ratios = block_rows(rows)
    aurocs = _per_block_auroc_percent(names, per_block)
    selected_at = selected_position(names, selected)

    fig, (ax_ratio, ax_rank) = plt.subplots(2, 1, figsize=bar_figure_size(len(names), 2))
    draw_norm_ratio_bars(ax_ratio, names, ratios, selected_at)
    ax_auroc = ax_ratio.twinx()
    ax_auroc.plot(np.arange(len(names)), aurocs, color=ID_COLOR, marker="o", label="average AUROC")
    ax_auroc.set_ylabel("average OOD AUROC (%)", color=ID_COLOR)
    ax_auroc.tick_params(axis="y", colors=ID_COLOR)
    finite = aurocs[np.isfinite(aurocs)]
    if finite.size:
        ax_auroc.set_ylim(max(0.0, float(finite.min()) - 5.0), min(100.0, float(finite.max()) + 5.0))

    handles, labels = ax_ratio.get_legend_handles_labels()
    more_handles, more_labels = ax_auroc.get_legend_handles_labels()
    # On the twin axis, "best" keeps the legend off the AUROC line; the bars' headroom keeps it off them.
    ax_auroc.legend(handles + more_handles, labels + more_labels, loc="best")
    label = f"; selected: {names[selected_at]}" if selected_at is not None else ""
    ax_ratio.set_title(f"NormRatio vs. per-block OOD AUROC{label}")
    _draw_rankings(ax_rank, names, aurocs, kind_figures(rows, "auroc"), selected_at)
    return save_figure(fig, path)


def _draw_rankings(ax, names: Sequence[str], real_auroc: np.ndarray, kind_aurocs: Mapping[str, np.ndarray],
                   selected_at: int | None) -> None:
    """Rank of each block (1 = best) by the real OOD AUROC, and by each pseudo-OOD kind's AUROC."""
    positions = np.arange(len(names))
    ax.plot(positions, _descending_ranks(real_auroc), color="black", marker="s", linewidth=3.0,
            label="real OOD sets\n(average AUROC)")
    for number, (kind, values) in enumerate(kind_aurocs.items()):
        if np.isfinite(values).any():
            ax.plot(positions + kind_offset(number, len(kind_aurocs)), _descending_ranks(values),
                    marker=KIND_MARKERS[number % len(KIND_MARKERS)], linewidth=1.3, alpha=0.85,
                    label=f"{kind}\n(ID vs. {kind} AUROC)")
    if selected_at is not None:
        ax.axvline(selected_at, color=SELECTED_COLOR, linewidth=1.0, alpha=0.6, label="selected block")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticks(np.arange(1, len(names) + 1))
    ax.set_ylim(len(names) + 0.5, 0.5)  # rank 1 on top
    ax.set_xlabel("block")
    ax.set_ylabel("rank of the block (1 = best)")
    ax.set_title("Ranking of the blocks: real OOD sets vs. pseudo-OOD kinds")
    legend_outside(ax)
