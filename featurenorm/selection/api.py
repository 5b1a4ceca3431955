"""NormRatio block selection (Yu et al., CVPR 2023, arXiv 2212.02295), and other pseudo-OOD evidence.

The block whose FeatureNorm best separates ID training images from their own jigsaw puzzles
is used for OOD scoring. Separation is measured by NormRatio, the mean over images of
FN(x) / FN(jigsaw(x)); the AUROC of ID vs. puzzles is reported alongside as an alternative
criterion. Other kinds of pseudo-OOD made from the same ID images
(:mod:`featurenorm.selection.pseudo_ood`) can be measured beside the jigsaw, each with its NormRatio
and AUROC at every block, and the ``mean_rank`` criterion combines them. The helpers are pure
functions of the FeatureNorms that :mod:`featurenorm.selection.collect` collects; :func:`run_selection`,
the select_block.py run, loads the checkpoint and data, writes ``block_selection.json`` and the plot.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from ..core.block_rows import JIGSAW, BlockRow, SelectedBlock
from ..core.blocks import candidate_blocks
from ..core.criteria import CRITERIA, check_kinds, choose_block
from .collect import BlockNorms, collect_block_norms
from .evidence import WEAK_AUROC, selection_warnings
from .plot import plot_norm_ratio
from .pseudo_ood import parse_pseudo_ood
from .ratios import summarize_blocks


@dataclass
class BlockSelection:
    """The outcome of block selection: one row per block and the chosen one.

    Attributes:
        rows: per block, in forward order (see :class:`~featurenorm.core.block_rows.BlockRow`).
        selected: the block of the row that maximises ``criterion``.
        criterion: one of :data:`featurenorm.core.criteria.CRITERIA`; ``norm_ratio`` is the paper's rule.
        grid, seed, num_samples: how the puzzles were made, and from how many ID images.
        arch, checkpoint: provenance written into ``block_selection.json`` (None when unknown).
        pseudo_ood: the kinds measured, in order.
    """

    rows: list[BlockRow]
    selected: SelectedBlock
    criterion: str
    grid: int
    seed: int
    num_samples: int
    arch: str | None = None
    checkpoint: str | None = None
    pseudo_ood: tuple[str, ...] = (JIGSAW,)

    @classmethod
    def from_norms(cls, norms: BlockNorms, blocks: Sequence[str], criterion: str, grid: int, seed: int,
                   **provenance: Any) -> "BlockSelection":
        rows = summarize_blocks(norms, blocks)
        num_samples = int(next(iter(norms.id.values())).numel())
        return cls(rows, choose_block(rows, criterion).as_selected(), criterion, grid, seed, num_samples,
                   pseudo_ood=tuple(norms.pseudo), **provenance)

    @property
    def block(self) -> str:
        """The selected block's module name."""
        return self.selected.name

    def to_dict(self) -> dict[str, Any]:
        """The ``block_selection.json`` schema."""
        return {"arch": self.arch, "checkpoint": self.checkpoint, "num_samples": self.num_samples, "grid": self.grid,
                "seed": self.seed, "criterion": self.criterion, "pseudo_ood": list(self.pseudo_ood),
                "blocks": [row.to_dict() for row in self.rows], "selected": self.selected.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BlockSelection":
        """A selection read back from ``block_selection.json`` (as written by :meth:`to_dict`, or older).

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such a dict.
        """
        rows = [BlockRow.from_dict(row) for row in data["blocks"]]
        return cls(rows, SelectedBlock.from_dict(data["selected"]), data.get("criterion", "norm_ratio"),
                   int(data.get("grid", 3)), int(data.get("seed", 0)), int(data.get("num_samples", 0)),
                   arch=data.get("arch"), checkpoint=data.get("checkpoint"),
                   pseudo_ood=tuple(data.get("pseudo_ood") or (rows[0].kinds if rows else (JIGSAW,))))

    @classmethod
    def read(cls, path: str | Path) -> "BlockSelection":
        """:meth:`from_dict` of a ``block_selection.json`` file.

        Raises:
            OSError: the file cannot be read. ValueError: it is not a block selection.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError) as err:  # json.JSONDecodeError is a ValueError already
            raise ValueError(f"{path} is not a block selection ({type(err).__name__}: {err})") from None

    def warnings(self, weak_auroc: float = WEAK_AUROC) -> list[str]:
        """One-line notes on weak or conflicting evidence (see :func:`selection_warnings`)."""
        return selection_warnings(self.rows, self.criterion, weak_auroc)

    def plot(self, path, title: str | None = None):
        """Bar chart of NormRatio per block, the selected one highlighted (with several kinds, also each
        kind's NormRatio and AUROC); returns the path written."""
        what = self.arch or "model"
        title = title or f"{what}: NormRatio per block ({self.num_samples} ID images, grid {self.grid})"
        return plot_norm_ratio(self.rows, self.selected, path, title=title)


def emit_warnings(selection: BlockSelection) -> None:
    for note in selection.warnings():
        warnings.warn(note, stacklevel=3)


def check_options(criterion: str, grid: int, num_samples: int | None, *, flags: bool = False) -> None:
    """Raise ValueError for an unknown criterion, a grid below 1 or ``num_samples`` below 1; ``flags``: name
    them as the command-line flags (``--num-samples``)."""
    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if flags else key

    if criterion not in CRITERIA:
        raise ValueError(f"{name('criterion')} must be one of {', '.join(CRITERIA)}, got '{criterion}'")
    if grid < 1:
        raise ValueError(f"{name('grid')} must be at least 1, got {grid}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"{name('num_samples')} must be at least 1, got {num_samples}")


def check_pseudo_ood(kinds: str | Sequence[str], criterion: str = "norm_ratio") -> list[str]:
    """The kinds to measure, validated: registered names, the jigsaw among them, enough for ``criterion``.

    Raises:
        ValueError: an unknown kind, a list without the jigsaw, or too few kinds for ``criterion``.
    """
    names = parse_pseudo_ood(kinds)
    if JIGSAW not in names:
        raise ValueError(f"pseudo-OOD kinds must include jigsaw, the paper's kind that the table and the norm_ratio "
                         f"and auroc criteria read; got {', '.join(names)}")
    check_kinds(criterion, names)
    return names


def _first_images(loader: Iterable[Any], limit: int | None) -> Iterable[torch.Tensor]:
    """Image batches of ``loader`` (first element of tuples), cut after ``limit`` images in total."""
    seen = 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if limit is not None:
            if seen >= limit:
                return
            images = images[:limit - seen]
        seen += images.shape[0]
        yield images


def select_block(model: nn.Module, loader: Iterable[Any], blocks: Sequence[str] | None = None, *, grid: int = 3,
                 num_samples: int | None = None, seed: int = 0, criterion: str = "norm_ratio",
                 pseudo_ood: str | Sequence[str] = (JIGSAW,), mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, progress: bool = False) -> BlockSelection:
    """NormRatio block selection for any model: ID images against their own jigsaw puzzles.

    Example::

        selection = select_block(model.eval(), train_loader)
        selection.block            # e.g. "layer3.1"
        selection.plot("norm_ratio.png")

    Args:
        model: the trained classifier; it is run in eval mode (its mode is restored afterwards).
        loader: any iterable of normalized image batches (B, 3, H, W), or of ``(images, labels, ...)``
            tuples, e.g. a ``torch.utils.data.DataLoader``. Batches are moved to the model's device.
        blocks: module names to compare; default :func:`featurenorm.candidate_blocks`.
        grid: jigsaw grid (3 = 3x3 tiles, the paper's).
        num_samples: use only the first N images the loader yields (shuffle the loader for a random subset).
        seed: seeds the puzzle permutations.
        criterion: ``norm_ratio`` (the paper's), ``auroc`` (ID vs. puzzles, by FeatureNorm) or
            ``mean_rank`` (several kinds; see :data:`featurenorm.core.criteria.CRITERIA`).
        pseudo_ood: the pseudo-OOD kinds to measure, a list or ``"jigsaw,blur"`` or ``"all"``
            (see :mod:`featurenorm.selection.pseudo_ood`); the jigsaw must be among them.
        mean: the loader's normalization mean per channel (default: the config's, 0.5); the ``noise``
            kind clips to the valid pixel range with ``mean`` and ``std``.
        std: the loader's normalization std per channel (default: the config's, 0.5).
        progress: show a progress bar.

    Weak or conflicting evidence (see :meth:`BlockSelection.warnings`) is reported with ``warnings.warn``.
    """
    check_options(criterion, grid, num_samples)
    kinds = check_pseudo_ood(pseudo_ood, criterion)
    blocks = list(blocks) if blocks is not None else candidate_blocks(model)
    norms = collect_block_norms(model, _first_images(loader, num_samples), blocks, grid,
                                generator=torch.Generator().manual_seed(seed), progress=progress, kinds=kinds,
                                mean=mean, std=std)
    selection = BlockSelection.from_norms(norms, blocks, criterion, grid, seed, arch=type(model).__name__)
    emit_warnings(selection)
    return selection
