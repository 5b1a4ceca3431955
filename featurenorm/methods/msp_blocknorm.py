"""MSP of block-norm logits."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Method, Outputs, max_softmax, register_method
from .blocknorm import blocknorm_logits


def msp_blocknorm_score(features: Tensor, block_norm: Tensor, head: nn.Linear) -> Tensor:
    """``max_c softmax(head(f / ||f|| * block_norm))_c``. (B, D), (B,) -> (B,).

    MSP (Hendrycks & Gimpel, ICLR 2017, https://arxiv.org/abs/1610.02136) with block selection
    (Yu et al., CVPR 2023, https://arxiv.org/abs/2212.02295).
    """
    return max_softmax(blocknorm_logits(features, block_norm, head))


@register_method
class MSPBlockNorm(Method):
    """MSP on logits whose feature magnitude is the selected block's FeatureNorm (arXiv 2212.02295)."""

    name = "msp_blocknorm"
    needs = frozenset({"features", "block_norm"})

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return msp_blocknorm_score(out.require("features", self.name), out.require("block_norm", self.name), head)
