"""FeatureNorm as a detector object for any model: pick a block once, then score images by its norm."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from ..core.blocks import model_device
from ..core.tap import block_feature_norms
from ..selection.api import BlockSelection, select_block


class FeatureNormDetector:
    """FeatureNorm of one block (Yu et al., CVPR 2023, arXiv 2212.02295); higher = more in-distribution.

    Example::

        detector = FeatureNormDetector(model).fit(train_loader)   # NormRatio picks the block
        scores = detector.score(images)                           # (B,)
        detector.block, detector.selection.rows

    Args:
        model: any classifier; it is scored in eval mode.
        block: the module name to read; None selects one in :meth:`fit`.

    The keywords ``blocks``, ``grid``, ``num_samples``, ``seed``, ``criterion`` and ``pseudo_ood`` are
    passed to :func:`featurenorm.select_block` by :meth:`fit`.
    """

    def __init__(self, model: nn.Module, block: str | None = None, *, blocks: Sequence[str] | None = None,
                 grid: int = 3, num_samples: int | None = None, seed: int = 0, criterion: str = "norm_ratio",
                 pseudo_ood: str | Sequence[str] = ("jigsaw",)):
        if block is not None and block not in dict(model.named_modules()):
            raise ValueError(f"'{block}' is not a module of {type(model).__name__}; see featurenorm.candidate_blocks")
        self.model = model
        self.block = block
        self.selection: BlockSelection | None = None
        self._selection_options: dict[str, Any] = dict(blocks=blocks, grid=grid, num_samples=num_samples, seed=seed,
                                                        criterion=criterion, pseudo_ood=pseudo_ood)

    def fit(self, loader: Iterable[Any], progress: bool = False) -> "FeatureNormDetector":
        """Select the block by NormRatio on ID training batches (only when no block was given); returns self."""
        if self.block is None:
            options = dict(self._selection_options)
            self.selection = select_block(self.model, loader, options.pop("blocks"), progress=progress, **options)
            self.block = self.selection.block
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """FeatureNorm of the block: (B, 3, H, W) normalized images -> (B,) float32, higher = more ID.

        The forward pass stops right after the block.
        """
        if self.block is None:
            raise RuntimeError("no block: pass block= or call fit(loader) first")
        was_training = self.model.training
        self.model.eval()
        try:
            norms = block_feature_norms(self.model, images.to(model_device(self.model)), [self.block])
        finally:
            self.model.train(was_training)
        return norms[self.block].float()

    __call__ = score

    def to(self, device: torch.device | str) -> "FeatureNormDetector":
        """Move the model to ``device``; returns self."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"FeatureNormDetector({type(self.model).__name__}, block={self.block!r})"
