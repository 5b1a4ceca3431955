"""Mahalanobis: distance to the closest class mean under a shared (tied) covariance."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .base import (Method, Outputs, feature_dim_check, fitted, float64_device, register_method,
                   state_tensor)


def class_means_and_precision(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class means and the pseudo-inverse of the tied covariance, in float64.

    ``Sigma = 1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T``; precision = ``pinv(Sigma)``.
    Only the classes present in ``labels`` get a mean.

    Args:
        features: (N, D) float.
        labels: (N,) int.
    Returns:
        class_means (K, D) for the K present classes (ascending label), precision (D, D).
    """
    features = features.detach().double().cpu()
    labels = labels.detach().long().cpu()
    classes, inverse = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    sums = torch.zeros(len(classes), features.shape[1], dtype=torch.float64).index_add_(0, inverse, features)
    class_means = sums / counts[:, None]
    centered = features - class_means[inverse]
    covariance = centered.T @ centered / features.shape[0]
    return class_means, torch.linalg.pinv(covariance, hermitian=True)


def mahalanobis_score(features: Tensor, class_means: Tensor, precision: Tensor) -> Tensor:
    """``-min_c (f - mu_c)^T Sigma^-1 (f - mu_c)``: minus the smallest *squared* distance. (B, D) -> (B,).

    Expanded as ``f P f - 2 f P mu_c + mu_c P mu_c`` so no (B, C, D) tensor is formed; float64
    keeps the cancellation harmless.

    Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018, https://arxiv.org/abs/1807.03888.
    """
    f = features.double()
    f_p = f @ precision
    mu_p = class_means @ precision
    squared = ((f_p * f).sum(1)[:, None] - 2.0 * f_p @ class_means.T
               + (mu_p * class_means).sum(1)[None, :])
    return -squared.min(dim=1).values


@register_method
class Mahalanobis(Method):
    """Mahalanobis on penultimate features, no input preprocessing (Lee et al., NeurIPS 2018,
    arXiv 1807.03888).

    fit: class means mu_c and the tied covariance Sigma of class-centered ID-train features,
    precision = pinv(Sigma); score = ``-min_c (f - mu_c)^T Sigma^-1 (f - mu_c)``, the negative
    *squared* Mahalanobis distance to the closest class mean (float64).
    """

    name = "mahalanobis"
    needs = frozenset({"features"})
    fits = True

    def __init__(self) -> None:
        self.class_means: Tensor | None = None
        self.precision: Tensor | None = None

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        feature_dim_check(train_features, head, self.name)
        class_means, precision = class_means_and_precision(train_features, train_labels)
        state = {"class_means": class_means, "precision": precision}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.class_means = state_tensor(state, "class_means", self.name).double()
        self.precision = state_tensor(state, "precision", self.name).double()

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        features = out.require("features", self.name)
        device = float64_device(features.device)
        # Cached on the scoring device, so the copy happens once rather than every batch.
        self.class_means = fitted(self.class_means, self.name).to(device)
        self.precision = fitted(self.precision, self.name).to(device)
        scores = mahalanobis_score(features.to(device), self.class_means, self.precision)
        return scores.to(features.device)
