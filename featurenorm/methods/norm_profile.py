"""Norm profile: FeatureNorm over every candidate block at once, as a distance to the ID-train profile.

The paper scores one block's FeatureNorm, and which block separates ID from OOD best differs from model to
model (``results/block_study``). An image's *profile*, the vector of its log FeatureNorms at the K candidate
blocks, sidesteps the choice: OOD images have an atypical norm at whichever block reacts to them, low or high.
The score is the negative squared Mahalanobis distance of the profile to the mean ID-train profile.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .base import Method, Outputs, fitted, float64_device, register_method, state_tensor

# Smallest norm taken before the log: a block whose feature map is all zero gets a large, finite log-norm.
MIN_NORM = 1e-30


def log_profile(block_norms: Tensor) -> Tensor:
    """``log(max(norm, MIN_NORM))`` in float64. (N, K) -> (N, K)."""
    return block_norms.double().clamp_min(MIN_NORM).log()


def profile_mean_and_precision(train_block_norms: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``mu`` and precision ``pinv(Sigma)`` of the ID-train log profiles, in float64.

    ``Sigma = 1/N sum_i (p_i - mu)(p_i - mu)^T`` with ``p_i = log ||F_k(x_i)||_2`` over the K blocks.

    Args:
        train_block_norms: (N, K) FeatureNorms of N ID-train images at the K candidate blocks.
    Returns:
        mean (K,), precision (K, K).
    """
    if train_block_norms.dim() != 2 or train_block_norms.shape[0] < 2:
        raise ValueError(f"the norm profile needs (N >= 2, K) block norms, got {tuple(train_block_norms.shape)}")
    profiles = log_profile(train_block_norms.detach().cpu())
    mean = profiles.mean(0)
    centered = profiles - mean
    covariance = centered.T @ centered / profiles.shape[0]
    return mean, torch.linalg.pinv(covariance, hermitian=True)


def norm_profile_score(block_norms: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """``-(p - mu)^T Sigma^-1 (p - mu)`` with ``p = log block_norms``: (B, K) -> (B,), higher = more ID."""
    centered = log_profile(block_norms) - mean
    return -((centered @ precision) * centered).sum(1)


@register_method
class NormProfile(Method):
    """Score = minus the squared Mahalanobis distance of the image's log-FeatureNorm profile over every
    candidate block to the ID-train mean profile (fit: that mean and the covariance's pseudo-inverse)."""

    name = "norm_profile"
    needs = frozenset({"block_norms"})
    fits = True
    fit_on = "block_norms"

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.precision: Tensor | None = None

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        mean, precision = profile_mean_and_precision(train_features)
        state = {"mean": mean, "precision": precision}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.mean = state_tensor(state, "mean", self.name).double()
        self.precision = state_tensor(state, "precision", self.name).double()

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        block_norms = out.require("block_norms", self.name)
        mean = fitted(self.mean, self.name)
        if block_norms.shape[1] != mean.shape[0]:
            raise ValueError(f"method '{self.name}' was fitted on {mean.shape[0]} blocks, but the scores come "
                             f"with {block_norms.shape[1]}; fit it again on the same candidate blocks")
        device = float64_device(block_norms.device)
        self.mean = mean.to(device)
        self.precision = fitted(self.precision, self.name).to(device)
        return norm_profile_score(block_norms.to(device), self.mean, self.precision).to(block_norms.device)
