"""ViM: energy minus a virtual logit built from the feature's residual off the principal subspace."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..config import Config
from ..errors import UserError
from .base import (Method, Outputs, feature_dim_check, fitted, float64_device, register_method,
                   state_tensor)


def vim_origin(head: nn.Linear) -> Tensor:
    """``u = -pinv(W) b``, the point the logits are measured from. -> (D,) float64."""
    weight = head.weight.detach().double().cpu()
    bias = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    return -torch.linalg.pinv(weight) @ bias


def vim_null_space(train_features: Tensor, origin: Tensor, principal_dim: int) -> Tensor:
    """Eigenvectors of ``(f - u)^T (f - u) / N`` beyond the top ``principal_dim``. -> (D, D - principal_dim).

    The second moment is taken about u, not about the mean (u plays the role of the mean, as in
    the reference code's ``EmpiricalCovariance(assume_centered=True)``).
    """
    shifted = train_features.detach().double().cpu() - origin
    second_moment = shifted.T @ shifted / shifted.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)  # ascending eigenvalues
    order = torch.argsort(eigenvalues, descending=True)
    return eigenvectors[:, order[principal_dim:]].contiguous()


def virtual_logit(features: Tensor, origin: Tensor, null_space: Tensor) -> Tensor:
    """``||(f - u) NS||_2``, the norm of the residual off the principal subspace. (B, D) -> (B,)."""
    return torch.linalg.vector_norm((features.double() - origin) @ null_space, dim=1)


def vim_alpha(train_features: Tensor, train_logits: Tensor, origin: Tensor, null_space: Tensor) -> Tensor:
    """``alpha = sum_i max_c logit_ic / sum_i vlogit_i`` over ID-train: matches the two scales."""
    vlogits = virtual_logit(train_features.detach().cpu(), origin, null_space)
    return train_logits.detach().double().cpu().max(dim=1).values.sum() / vlogits.sum()


def vim_score(features: Tensor, logits: Tensor, origin: Tensor, null_space: Tensor, alpha: Tensor) -> Tensor:
    """``logsumexp(logits) - alpha * ||(f - u) NS||``. features (B, D), logits (B, C) -> (B,) float64.

    Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022,
    https://arxiv.org/abs/2203.10807.
    """
    return torch.logsumexp(logits.double(), dim=1) - alpha * virtual_logit(features, origin, null_space)


def default_vim_dim(feature_dim: int) -> int:
    """The reference's principal dimension: 1000 for D >= 2048, 512 for D >= 768, else D // 2.

    The ViM authors' ``benchmark.py`` (github.com/haoqiwang/vim) sets ``DIM = 1000 if D >= 2048
    else 512``; their models all have D >= 768. Below that, 512 would leave little or no residual
    space (none for a ResNet-18, D = 512), so ``D // 2`` is used there, as in the tiered rule of
    OpenOOD-derived ViM postprocessors (OpenOOD itself reads ``dim`` from its config).
    """
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


@register_method
class ViM(Method):
    """Virtual-logit matching (Wang et al., CVPR 2022, arXiv 2203.10807).

    fit: u = -pinv(W) b; principal subspace = top ``vim_dim`` eigenvectors of the second moment of
    (f - u) over ID-train, NS = the remaining ones; alpha = sum max logit / sum vlogit over
    ID-train. score = ``logsumexp(logits) - alpha * ||(f - u) NS||``.
    ``vim_dim = None`` follows the reference's rule, :func:`default_vim_dim`.
    """

    name = "vim"
    needs = frozenset({"features", "logits"})
    fits = True

    def __init__(self, principal_dim: int | None = None) -> None:
        if principal_dim is not None and principal_dim < 1:
            raise ValueError(f"vim_dim must be at least 1, got {principal_dim}")
        self.principal_dim = principal_dim
        self.origin: Tensor | None = None
        self.null_space: Tensor | None = None
        self.alpha: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> ViM:
        return cls(cfg.vim_dim)

    def hparams(self) -> dict[str, Any]:
        return {"vim_dim": self.principal_dim}

    def resolved_dim(self, feature_dim: int) -> int:
        """The principal dimension for D = ``feature_dim``: ``vim_dim``, or :func:`default_vim_dim` if None."""
        dim = default_vim_dim(feature_dim) if self.principal_dim is None else self.principal_dim
        if not 1 <= dim < feature_dim:
            raise UserError(f"vim_dim={dim} must be in 1..{feature_dim - 1} for {feature_dim}-d features, "
                            "so that a residual space remains; lower vim_dim")
        return dim

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        feature_dim_check(train_features, head, self.name)
        origin = vim_origin(head)
        null_space = vim_null_space(train_features, origin, self.resolved_dim(train_features.shape[1]))
        with torch.no_grad():
            train_logits = head(train_features.to(head.weight.device, head.weight.dtype))
        state = {"origin": origin, "null_space": null_space,
                 "alpha": vim_alpha(train_features, train_logits, origin, null_space)}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        null_space = state_tensor(state, "null_space", self.name).double()
        feature_dim, residual_dim = null_space.shape
        # a state fit under another dimension (e.g. cached before the default rule changed) must be refit
        if feature_dim - residual_dim != self.resolved_dim(feature_dim):
            raise ValueError(f"this ViM state has a {feature_dim - residual_dim}-d principal subspace, not the "
                             f"{self.resolved_dim(feature_dim)}-d one asked for; fit it again")
        self.origin = state_tensor(state, "origin", self.name).double()
        self.null_space = null_space
        self.alpha = state_tensor(state, "alpha", self.name).double()

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        features = out.require("features", self.name)
        logits = out.require("logits", self.name)
        device = float64_device(features.device)
        # Cached on the scoring device, so the copies happen once rather than every batch.
        self.origin = fitted(self.origin, self.name).to(device)
        self.null_space = fitted(self.null_space, self.name).to(device)
        self.alpha = fitted(self.alpha, self.name).to(device)
        scores = vim_score(features.to(device), logits.to(device), self.origin, self.null_space, self.alpha)
        return scores.to(features.device)
