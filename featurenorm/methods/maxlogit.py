"""MaxLogit: the largest unnormalized logit."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Method, Outputs, register_method


def maxlogit_score(logits: Tensor) -> Tensor:
    """``max_c logits_c``. logits: (B, C) -> (B,).

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022,
    https://arxiv.org/abs/1911.11132.
    """
    return logits.max(dim=1).values


@register_method
class MaxLogit(Method):
    """Maximum logit (Hendrycks et al., ICML 2022, arXiv 1911.11132)."""

    name = "maxlogit"
    needs = frozenset({"logits"})

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return maxlogit_score(out.require("logits", self.name))
