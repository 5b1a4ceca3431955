"""The figure of block selection: NormRatio per block, the selected block highlighted, and with several
pseudo-OOD kinds each kind's AUROC per block; and the plumbing every figure shares (pyplot with the Agg
backend, imported lazily; atomic saves at :data:`DPI`).

The figures of evaluation (FeatureNorm histograms, NormRatio beside the OOD AUROC) are
:mod:`featurenorm.reporting.plots`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..core.block_rows import JIGSAW, BlockRow, SelectedBlock
from ..errors import UserError
from ..files import atomic_path
from .evidence import WEAK_AUROC

if TYPE_CHECKING:  # pyplot is imported lazily so that importing this module stays cheap
    from matplotlib.figure import Figure

DPI = 120
ID_COLOR = "tab:blue"
OOD_COLOR = "tab:orange"
BAR_COLOR = "tab:gray"
SELECTED_COLOR = "tab:red"


def pyplot():
    import matplotlib  # lazy: matplotlib is heavy, and only the figures need it

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt  # lazy: matplotlib is heavy, and only the figures need it

    return plt


def save_figure(fig: "Figure", path: str | os.PathLike) -> Path:
    """Save ``fig`` atomically at ``DPI`` and close it (also on failure).

    The format follows the suffix (PNG when there is none).
    """
    plt = pyplot()
    path = Path(path)
    image_format = path.suffix.lstrip(".").lower() or "png"
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=f".{image_format}") as tmp:
            fig.savefig(tmp, dpi=DPI, format=image_format)
    finally:
        plt.close(fig)
    return path


def bar_figure_size(num_blocks: int, panels: int = 1) -> tuple[float, float]:
    """Figure size (inches) of the per-block charts: wider with more blocks, 4.5 inches per panel, and
    2.5 inches more for the legend beside the per-kind panel when there are two."""
    return (max(6.0, 0.55 * num_blocks + 2.5) + (2.5 if panels > 1 else 0.0), 4.5 * panels)


def kind_figures(rows: Sequence[BlockRow], key: str) -> dict[str, np.ndarray]:
    """``{kind: (num_blocks,) float}`` of one per-kind figure (``norm_ratio`` or ``auroc``); NaN where missing."""
    kinds = list(rows[0].kinds) if rows else []
    return {kind: np.array([getattr(row.kinds[kind], key) if kind in row.kinds else np.nan for row in rows])
            for kind in kinds}


KIND_MARKERS = "os^vDPX*"


def kind_offset(position: int, count: int) -> float:
    """A small horizontal shift per kind, so that kinds with equal values stay visible side by side."""
    return 0.1 * (position - (count - 1) / 2)


def legend_outside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)


def block_rows(rows: Sequence[BlockRow]) -> tuple[list[str], np.ndarray]:
    if not rows:
        raise UserError("no block rows to plot; pass the 'blocks' list of block_selection.json")
    return [row.name for row in rows], np.array([row.norm_ratio for row in rows])


def selected_position(names: Sequence[str], selected: SelectedBlock | None) -> int | None:
    """Position of the selected block among ``names``, by name first, then by index."""
    if not selected:
        return None
    if selected.name in names:
        return names.index(selected.name)
    index = selected.index
    return int(index) if index is not None and 0 <= int(index) < len(names) else None


def draw_norm_ratio_bars(ax, names: Sequence[str], ratios: np.ndarray, selected_at: int | None) -> None:
    positions = np.arange(len(names))
    colors = [SELECTED_COLOR if i == selected_at else BAR_COLOR for i in range(len(names))]
    ax.bar(positions, ratios, color=colors, width=0.7)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="NormRatio = 1")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_xlabel("block")
    ax.set_ylabel("NormRatio (ID / jigsaw FeatureNorm)")
    if selected_at is not None and np.isfinite(ratios[selected_at]):
        ax.annotate(f"{ratios[selected_at]:.3f}", (selected_at, ratios[selected_at]),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    color=SELECTED_COLOR, fontweight="bold")
    finite = ratios[np.isfinite(ratios)]
    top = max(float(finite.max()) if finite.size else 1.0, 1.0)
    ax.set_ylim(0.0, top * 1.3)  # headroom for the annotation and the legend above the bars


def plot_norm_ratio(rows: Sequence[BlockRow], selected: SelectedBlock | None, path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart of NormRatio per block, the selected block highlighted and annotated.

    NormRatio = (1/N) sum_i FN(x_i) / FN(jigsaw(x_i)) at a block, the per-image ratio of the
    FeatureNorm of an ID image to that of its own jigsaw puzzle, averaged (Yu et al., CVPR
    2023; see :func:`featurenorm.selection.ratios.norm_ratio`); the block with the largest ratio is
    selected. A dashed line marks 1.0. When the rows hold several pseudo-OOD kinds, a second
    panel draws each kind's ID-vs-kind AUROC per block (its NormRatio range in the legend).

    Args:
        rows: one per block (``BlockRow.from_dict`` reads ``block_selection.json["blocks"]``).
        selected: the chosen block, or None.
        path: PNG file to write.
        title: figure title; the default names the selected block.

    Returns:
        ``Path(path)``.
    """
    plt = pyplot()
    names, ratios = block_rows(rows)
    selected_at = selected_position(names, selected)
    aurocs = kind_figures(rows, "auroc")
    panels = 2 if len(aurocs) > 1 else 1
    fig, axes = plt.subplots(panels, 1, figsize=bar_figure_size(len(names), panels), squeeze=False)
    ax = axes[0, 0]
    draw_norm_ratio_bars(ax, names, ratios, selected_at)
    label = f"; selected: {names[selected_at]}" if selected_at is not None else ""
    ax.set_title(title or f"NormRatio per block{label}")
    ax.legend(loc="best")
    if panels == 2:
        _draw_kind_aurocs(axes[1, 0], names, aurocs, kind_figures(rows, "norm_ratio"), selected_at)
    return save_figure(fig, path)


def _draw_kind_aurocs(ax, names: Sequence[str], aurocs: Mapping[str, np.ndarray],
                      ratios: Mapping[str, np.ndarray], selected_at: int | None) -> None:
    """One line per pseudo-OOD kind: the ID-vs-kind AUROC at each block, its NormRatio in the legend's range."""
    positions = np.arange(len(names))
    for number, (kind, values) in enumerate(aurocs.items()):
        finite = ratios[kind][np.isfinite(ratios[kind])]
        span = f"\nNormRatio {finite.min():.2f}-{finite.max():.2f}" if finite.size else ""
        ax.plot(positions + kind_offset(number, len(aurocs)), values, marker=KIND_MARKERS[number % len(KIND_MARKERS)],
                linewidth=2.5 if kind == JIGSAW else 1.5, label=f"{kind}{span}")
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1.0, label="chance (0.5)")
    ax.axhline(WEAK_AUROC, color="gray", linestyle="--", linewidth=1.0, label=f"weak evidence ({WEAK_AUROC})")
    if selected_at is not None:
        ax.axvline(selected_at, color=SELECTED_COLOR, linewidth=1.0, alpha=0.6)
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_xlabel("block")
    ax.set_ylabel("AUROC, ID vs. pseudo-OOD kind")
    ax.set_ylim(0.0, 1.05)
    ax.set_title("AUROC of ID vs. each pseudo-OOD kind, by FeatureNorm")
    legend_outside(ax)
