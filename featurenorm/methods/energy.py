"""Energy score: the negative free energy of the logits."""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from ..config import Config
from .base import Method, Outputs, energy_score, register_method, require_positive

__all__ = ["Energy", "energy_score"]


@register_method
class Energy(Method):
    """Score = ``T * logsumexp(logits / T)`` (the negative free energy), T = ``energy_temperature``.

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020,
    https://arxiv.org/abs/2010.03759.
    """

    name = "energy"
    needs = frozenset({"logits"})

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = require_positive(temperature, "energy_temperature")

    @classmethod
    def from_config(cls, cfg: Config) -> Energy:
        return cls(cfg.energy_temperature)

    def hparams(self) -> dict[str, Any]:
        return {"energy_temperature": self.temperature}

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return energy_score(out.require("logits", self.name), self.temperature)
