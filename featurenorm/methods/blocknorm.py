"""Block-norm logits: the penultimate direction with the selected block's FeatureNorm as magnitude.

The paper's "block selection improves existing methods": logit-based scores use the norm of the
penultimate feature implicitly (the logits scale with it); replacing that norm by the FeatureNorm
of the NormRatio-selected block carries the better ID/OOD separation into MSP, energy and ODIN.

Yu et al., "Block Selection Method for Using Feature Norm in Out-of-distribution Detection",
CVPR 2023, https://arxiv.org/abs/2212.02295.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def blocknorm_features(features: Tensor, block_norm: Tensor) -> Tensor:
    """``f' = f / ||f||_2 * block_norm``. features (B, D), block_norm (B,) -> (B, D).

    A zero feature vector stays zero (it has no direction to keep).
    """
    return F.normalize(features, dim=1) * block_norm[:, None].to(features.dtype)


def blocknorm_logits(features: Tensor, block_norm: Tensor, head: nn.Linear) -> Tensor:
    """``head(f / ||f|| * block_norm)``. features (B, D), block_norm (B,) -> logits (B, C)."""
    return head(blocknorm_features(features, block_norm))


def blocknorm_logits_fn(features_and_norm: Callable[[Tensor], tuple[Tensor, Tensor]],
                        head: nn.Linear) -> Callable[[Tensor], Tensor]:
    """Wrap ``images -> (features (B, D), block_norm (B,))`` into ``images -> blocknorm logits``.

    For ``odin_blocknorm``: the result is differentiable in the images through both the
    features and the block norm, as ODIN's input perturbation requires.
    """
    def logits_fn(images: Tensor) -> Tensor:
        features, block_norm = features_and_norm(images)
        return blocknorm_logits(features, block_norm, head)
    return logits_fn
