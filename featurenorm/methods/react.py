"""ReAct: clip penultimate activations at a high ID percentile, then take the energy score."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..config import Config, check_percentile
from .base import (Method, Outputs, energy_score, feature_dim_check, fitted, register_method,
                   require_positive, state_tensor)


def react_clip_value(train_features: Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of all ID-train activations, flattened. (N, D) -> float.

    numpy (linear interpolation) rather than ``torch.quantile``, which refuses inputs of more than
    16M elements (50,000 x 512 already has 25.6M).
    """
    values = train_features.detach().cpu().numpy().reshape(-1)
    return float(np.percentile(values, percentile))


def react_score(features: Tensor, head: nn.Linear, clip: float, temperature: float = 1.0) -> Tensor:
    """``T * logsumexp(head(min(f, c)) / T)``. features: (B, D) -> (B,).

    Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
    NeurIPS 2021, https://arxiv.org/abs/2111.12797.
    """
    return energy_score(head(features.clamp(max=clip)), temperature)


@register_method
class EnergyReAct(Method):
    """Energy on ReAct-clipped features (Sun et al., NeurIPS 2021, arXiv 2111.12797).

    fit: c = the ``react_percentile``-th percentile of ID-train penultimate activations;
    score = energy(head(min(f, c))) with T = ``energy_temperature``.
    """

    name = "energy_react"
    needs = frozenset({"features"})
    fits = True

    def __init__(self, percentile: float = 90.0, temperature: float = 1.0) -> None:
        self.percentile = check_percentile("react_percentile", percentile)
        self.temperature = require_positive(temperature, "energy_temperature")
        self.clip: float | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> EnergyReAct:
        return cls(cfg.react_percentile, cfg.energy_temperature)

    def hparams(self) -> dict[str, Any]:
        return {"react_percentile": self.percentile, "energy_temperature": self.temperature}

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        feature_dim_check(train_features, head, self.name)
        state = {"clip": torch.tensor(react_clip_value(train_features, self.percentile), dtype=torch.float64)}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.clip = float(state_tensor(state, "clip", self.name))

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        clip = fitted(self.clip, self.name)
        return react_score(out.require("features", self.name), head, clip, self.temperature)
