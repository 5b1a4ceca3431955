"""NormRatio block selection (Yu et al., CVPR 2023, arXiv 2212.02295).

The block whose FeatureNorm best separates ID training images from their own jigsaw puzzles
is used for OOD scoring. Separation is measured by NormRatio, the mean over images of
FN(x) / FN(jigsaw(x)); the AUROC of ID vs. puzzles is reported alongside as an alternative
criterion. Pure functions: no file IO, no config parsing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import rankdata
from tqdm.auto import tqdm

from .data.jigsaw import jigsaw
from .errors import UserError
from .features import FeatureTap

# Keeps NormRatio finite when a block is completely silent on a puzzle (all channels dead);
# far below any FeatureNorm of a live block, so other ratios are unaffected.
NORM_EPS = 1e-12

CRITERIA = {"norm_ratio": "norm_ratio", "auroc": "jigsaw_auroc"}


@dataclass
class BlockNorms:
    """Per-image FeatureNorms of each block, for ID images and for their puzzles (paired by index).

    Attributes:
        id: ``{block: (N,) float32}`` on CPU.
        jigsaw: ``{block: (N,) float32}`` on CPU; entry i is the puzzle of ID image i.
        shapes: ``{block: per-image output shape}``, e.g. ``(64, 32, 32)``.
    """

    id: dict[str, torch.Tensor]
    jigsaw: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]


def norm_ratio(id_norms: torch.Tensor, jigsaw_norms: torch.Tensor) -> float:
    """NormRatio = (1/N) * sum_i FN(x_i) / max(FN(jigsaw(x_i)), eps), eps = ``NORM_EPS``.

    Each image is paired with its own puzzle. Computed in float64.

    Args:
        id_norms: (N,) FeatureNorms of ID images.
        jigsaw_norms: (N,) FeatureNorms of their puzzles.
    """
    if id_norms.shape != jigsaw_norms.shape or id_norms.dim() != 1 or id_norms.numel() == 0:
        raise UserError(f"norm_ratio needs two non-empty (N,) tensors pairing each image with its puzzle, "
                        f"got {tuple(id_norms.shape)} and {tuple(jigsaw_norms.shape)}")
    ratios = id_norms.double() / jigsaw_norms.double().clamp_min(NORM_EPS)
    return float(ratios.mean())


def _auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """AUROC = P(score_pos > score_neg) + 1/2 P(equal), via the Mann-Whitney U statistic.

    U = sum of the (average, tie-aware) ranks of the positives - n_pos (n_pos + 1) / 2,
    AUROC = U / (n_pos n_neg).
    """
    n_pos, n_neg = positive.numel(), negative.numel()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = np.concatenate([positive.double().cpu().numpy(), negative.double().cpu().numpy()])
    ranks = rankdata(scores, method="average")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def collect_block_norms(model: nn.Module, batches: Iterable[Any], blocks: Sequence[str], grid: int = 3,
                        generator: torch.Generator | None = None, device: torch.device | str | None = None,
                        progress: bool = True) -> BlockNorms:
    """FeatureNorm of every block for ID images and their jigsaw puzzles.

    Each batch goes through ONE forward pass over ``cat([x, jigsaw(x)])`` that stops after the
    last block, under inference mode. The model is switched to eval mode for the pass (so
    BatchNorm does not mix ID images with puzzles) and restored afterwards.

    Args:
        model: the trained network.
        batches: image batches (B, C, H, W); ``(images, labels, ...)`` tuples are accepted and
            their first element is used.
        blocks: module names to score.
        grid: jigsaw grid size.
        generator: seeds the puzzles (see :func:`featurenorm.data.jigsaw.jigsaw`).
        device: where to run; defaults to the device of the model's parameters.
        progress: show a tqdm bar.

    Returns:
        BlockNorms with (N,) float32 CPU tensors, N the number of images seen.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    id_parts: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    jigsaw_parts: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    shapes: dict[str, tuple[int, ...]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FeatureTap(model, blocks, stop_after_last=True) as tap:
            for batch in tqdm(batches, desc="block norms", disable=not progress, leave=False):
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                images = images.to(device)
                size = images.shape[0]
                puzzles = jigsaw(images, grid, generator)
                tap.run(model, torch.cat([images, puzzles]))
                for name in tap.blocks:
                    values = tap.values[name].float().cpu()
                    id_parts[name].append(values[:size])
                    jigsaw_parts[name].append(values[size:])
                shapes.update(tap.shapes)
    finally:
        model.train(was_training)
    if not shapes:
        raise UserError("block selection got no images; check the selection data set and its split")
    return BlockNorms(id={name: torch.cat(parts) for name, parts in id_parts.items()},
                      jigsaw={name: torch.cat(parts) for name, parts in jigsaw_parts.items()},
                      shapes={name: shapes[name] for name in blocks})


def summarize_blocks(norms: BlockNorms, blocks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per block, in the order of ``blocks``.

    Row keys: ``index`` (position in ``blocks``), ``name``, ``shape`` (list), ``norm_ratio``,
    ``id_norm_mean``, ``jigsaw_norm_mean``, ``jigsaw_auroc`` (ID positive, scored by FeatureNorm).
    """
    rows = []
    for index, name in enumerate(blocks):
        if name not in norms.id:
            raise UserError(f"no FeatureNorms were collected for block '{name}'; collected: {', '.join(norms.id)}")
        id_norms, jigsaw_norms = norms.id[name], norms.jigsaw[name]
        rows.append({
            "index": index,
            "name": name,
            "shape": list(norms.shapes[name]),
            "norm_ratio": norm_ratio(id_norms, jigsaw_norms),
            "id_norm_mean": float(id_norms.double().mean()),
            "jigsaw_norm_mean": float(jigsaw_norms.double().mean()),
            "jigsaw_auroc": _auroc(id_norms, jigsaw_norms),
        })
    return rows


def choose_block(rows: Sequence[dict[str, Any]], criterion: str = "norm_ratio") -> dict[str, Any]:
    """The row maximising ``criterion`` ("norm_ratio" or "auroc"); the first one on ties; NaN never wins.

    Returns:
        ``{"index": int, "name": str}``.
    """
    if criterion not in CRITERIA:
        raise UserError(f"unknown block selection criterion '{criterion}'; use one of: {', '.join(CRITERIA)}")
    if not rows:
        raise UserError("no blocks to choose from; list at least one block")
    key = CRITERIA[criterion]

    def value(row: dict[str, Any]) -> float:
        return -math.inf if math.isnan(row[key]) else row[key]

    best = rows[0]
    for row in rows[1:]:
        if value(row) > value(best):
            best = row
    return {"index": best["index"], "name": best["name"]}


def format_block_table(rows: Sequence[dict[str, Any]], selected: dict[str, Any] | int | None = None) -> str:
    """A fixed-width text table of the block summary, the selected row marked with ``*``.

    Args:
        rows: from :func:`summarize_blocks`.
        selected: from :func:`choose_block` (or its index); None marks nothing.
    """
    selected_index = selected["index"] if isinstance(selected, dict) else selected
    header = [" ", "index", "block", "shape", "id norm", "jigsaw norm", "NormRatio", "AUROC"]
    body = [["*" if row["index"] == selected_index else "",
             str(row["index"]),
             row["name"],
             "x".join(str(d) for d in row["shape"]),
             f"{row['id_norm_mean']:.4f}",
             f"{row['jigsaw_norm_mean']:.4f}",
             f"{row['norm_ratio']:.4f}",
             f"{row['jigsaw_auroc']:.4f}"] for row in rows]
    widths = [max(len(line[col]) for line in [header] + body) for col in range(len(header))]
    text_columns = {2, 3}  # left-aligned; numbers are right-aligned

    def render(line: list[str]) -> str:
        cells = [cell.ljust(width) if col in text_columns else cell.rjust(width)
                 for col, (cell, width) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule] + [render(line) for line in body])
