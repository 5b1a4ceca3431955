"""Energy of block-norm logits."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Outputs, energy_score, register_method
from .blocknorm import blocknorm_logits
from .energy import Energy


def energy_blocknorm_score(features: Tensor, block_norm: Tensor, head: nn.Linear,
                           temperature: float = 1.0) -> Tensor:
    """``T * logsumexp(head(f / ||f|| * block_norm) / T)``. (B, D), (B,) -> (B,).

    Energy (Liu et al., NeurIPS 2020, https://arxiv.org/abs/2010.03759) with block selection
    (Yu et al., CVPR 2023, https://arxiv.org/abs/2212.02295).
    """
    return energy_score(blocknorm_logits(features, block_norm, head), temperature)


@register_method
class EnergyBlockNorm(Energy):
    """Energy on logits whose feature magnitude is the selected block's FeatureNorm
    (arXiv 2212.02295); T = ``energy_temperature``."""

    name = "energy_blocknorm"
    needs = frozenset({"features", "block_norm"})

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return energy_blocknorm_score(out.require("features", self.name), out.require("block_norm", self.name),
                                      head, self.temperature)
