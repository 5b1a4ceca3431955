"""ASH-S: prune all but the largest activations of each sample, rescale them, take the energy."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..config import Config, check_percentile
from .base import Method, Outputs, energy_score, register_method, require_positive


def ash_s(features: Tensor, percentile: float) -> Tensor:
    """ASH-S activation shaping, per sample. (B, D) -> (B, D).

    ``s1 = sum(f)``; keep the ``k = D - round(D * p / 100)`` largest entries (at least one), i.e.
    zero those below the sample's p-th percentile; ``s2 = sum(kept)``; ``f' = kept * exp(s1 / s2)``.
    A sample whose kept entries sum to exactly 0 gets scale ``exp(0) = 1`` instead of 0/0.
    """
    dim = features.shape[1]
    keep = max(1, dim - int(round(dim * percentile / 100.0)))
    values, indices = features.topk(keep, dim=1)
    kept = torch.zeros_like(features).scatter_(1, indices, values)
    total = features.sum(dim=1)
    kept_total = kept.sum(dim=1)
    safe_kept_total = torch.where(kept_total == 0, torch.ones_like(kept_total), kept_total)
    ratio = torch.where(kept_total == 0, torch.zeros_like(total), total / safe_kept_total)
    return kept * torch.exp(ratio)[:, None]


def ash_score(features: Tensor, head: nn.Linear, percentile: float, temperature: float = 1.0) -> Tensor:
    """Energy of the ASH-S-shaped features ``T * logsumexp(head(ash_s(f)) / T)``. (B, D) -> (B,).

    Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
    Detection", ICLR 2023, https://arxiv.org/abs/2209.09858.
    """
    return energy_score(head(ash_s(features, percentile)), temperature)


@register_method
class ASH(Method):
    """ASH-S on penultimate features (Djurisic et al., ICLR 2023, arXiv 2209.09858); no fit.

    p = ``ash_percentile``; score = energy(head(ash_s(f, p))) with T = ``energy_temperature``.
    """

    name = "ash"
    needs = frozenset({"features"})

    def __init__(self, percentile: float = 90.0, temperature: float = 1.0) -> None:
        self.percentile = check_percentile("ash_percentile", percentile)
        self.temperature = require_positive(temperature, "energy_temperature")

    @classmethod
    def from_config(cls, cfg: Config) -> ASH:
        return cls(cfg.ash_percentile, cfg.energy_temperature)

    def hparams(self) -> dict[str, Any]:
        return {"ash_percentile": self.percentile, "energy_temperature": self.temperature}

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        return ash_score(out.require("features", self.name), head, self.percentile, self.temperature)
