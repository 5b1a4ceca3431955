"""MSP: maximum softmax probability."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Method, Outputs, max_softmax, register_method


def msp_score(logits: Tensor) -> Tensor:
    """``max_c softmax(logits)_c``. logits: (B, C) -> (B,).

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples
    in Neural Networks", ICLR 2017, https://arxiv.org/abs/1610.02136.
    """
    return max_softmax(logits)


@register_method
class MSP(Method):
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, arXiv 1610.02136)."""

    name = "msp"
    needs = frozenset({"logits"})

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return msp_score(out.require("logits", self.name))
