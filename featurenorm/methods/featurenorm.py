"""FeatureNorm: the norm of the selected block's feature map as the OOD score."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Method, Outputs, register_method


def featurenorm_score(block_norm: Tensor) -> Tensor:
    """The score is the FeatureNorm itself. (B,) -> (B,).

    FeatureNorm is the norm of a block's (ReLU) feature map, computed by the feature-extraction
    code (``featurenorm.core.tap``), not here. ID images give larger norms than OOD images at the
    block that NormRatio selects, so the norm itself is an ID score.

    Yu et al., "Block Selection Method for Using Feature Norm in Out-of-distribution Detection",
    CVPR 2023, https://arxiv.org/abs/2212.02295.
    """
    return block_norm


@register_method
class FeatureNorm(Method):
    """Score = FeatureNorm of the selected block (Yu et al., CVPR 2023, arXiv 2212.02295)."""

    name = "featurenorm"
    needs = frozenset({"block_norm"})

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return featurenorm_score(out.require("block_norm", self.name))
