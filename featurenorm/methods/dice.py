"""DICE: sparsify the last layer's weights by their expected contribution on ID data."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn as nn
from torch import Tensor

from ..config import Config, check_percentile
from .base import (Method, Outputs, energy_score, feature_dim_check, fitted, register_method,
                   require_positive, state_tensor)


def dice_mask(mean_feature: Tensor, weight: Tensor, sparsity: float) -> Tensor:
    """Keep the weights whose contribution ``V = m[None, :] * W`` exceeds its ``sparsity``-th percentile.

    Args:
        mean_feature: (D,) mean ID-train penultimate feature m.
        weight: (C, D) last-layer weight W.
        sparsity: percentile p in [0, 100]; about p% of the weights are dropped.
    Returns:
        (C, D) bool mask, ``V > percentile(V, p)``.
    """
    contribution = (mean_feature[None, :] * weight).detach().cpu().double()
    threshold = np.percentile(contribution.numpy().reshape(-1), sparsity)
    return contribution > threshold


def dice_score(features: Tensor, head: nn.Linear, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Energy of the sparsified logits ``(W * mask) f + b``. features: (B, D) -> (B,).

    Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022,
    https://arxiv.org/abs/2111.09805.
    """
    masked_weight = head.weight * mask.to(device=head.weight.device, dtype=head.weight.dtype)
    return energy_score(nn.functional.linear(features, masked_weight, head.bias), temperature)


@register_method
class EnergyDICE(Method):
    """Energy with DICE weight sparsification (Sun & Li, ECCV 2022, arXiv 2111.09805).

    fit: m = mean ID-train feature (D,); mask = ``m * W > percentile(m * W, dice_sparsity)``;
    score = energy((W * mask) f + b) with T = ``energy_temperature``.
    """

    name = "energy_dice"
    needs = frozenset({"features"})
    fits = True

    def __init__(self, sparsity: float = 90.0, temperature: float = 1.0) -> None:
        self.sparsity = check_percentile("dice_sparsity", sparsity)
        self.temperature = require_positive(temperature, "energy_temperature")
        self.mask: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> EnergyDICE:
        return cls(cfg.dice_sparsity, cfg.energy_temperature)

    def hparams(self) -> dict[str, Any]:
        return {"dice_sparsity": self.sparsity, "energy_temperature": self.temperature}

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        feature_dim_check(train_features, head, self.name)
        mean_feature = train_features.detach().double().mean(dim=0).cpu()
        state = {"mean_feature": mean_feature, "mask": dice_mask(mean_feature, head.weight, self.sparsity)}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        # The mask already encodes m and W; the mean is kept so the state explains itself.
        self.mask = state_tensor(state, "mask", self.name).bool()

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        # Kept on the head's device, so the copy happens once rather than every batch.
        self.mask = mask = fitted(self.mask, self.name).to(head.weight.device)
        if mask.shape != head.weight.shape:
            raise ValueError(f"method '{self.name}' was fitted for a head of shape {tuple(mask.shape)}, "
                             f"got {tuple(head.weight.shape)}")
        return dice_score(out.require("features", self.name), head, mask, self.temperature)
