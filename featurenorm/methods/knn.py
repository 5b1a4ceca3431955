"""KNN: distance to the k-th nearest ID-train feature, after L2 normalization."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..errors import UserError
from .base import Method, Outputs, feature_dim_check, fitted, register_method, state_tensor

BANK_CHUNK_ROWS = 4096


def kth_nearest_distance(queries: Tensor, bank: Tensor, k: int, chunk_rows: int = BANK_CHUNK_ROWS) -> Tensor:
    """Exact Euclidean distance from each unit-norm query to its k-th nearest unit-norm bank row.

    For unit vectors ``||q - b||^2 = 2 - 2 q.b``, so the k nearest rows are the k largest dot
    products. The bank is read ``chunk_rows`` rows at a time while a running top-k of the dot
    products (and their row indices) is kept, so memory is O(B * (chunk_rows + k)) whatever the
    bank size. The final distance is ``||q - b_(k)||`` computed directly, not ``sqrt(2 - 2 s)``,
    which loses precision to cancellation when s is close to 1.

    Args:
        queries: (B, D) float, L2-normalized.
        bank: (N, D) float, L2-normalized, N >= k.
        k: which neighbour, 1-based.
    Returns:
        (B,) float distances.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in 1..{bank.shape[0]} (the bank size), got {k}")
    num_queries = queries.shape[0]
    top_similarity = queries.new_empty((num_queries, 0))
    top_index = torch.empty((num_queries, 0), dtype=torch.long, device=queries.device)
    for start in range(0, bank.shape[0], chunk_rows):
        chunk = bank[start:start + chunk_rows]
        similarity = torch.cat([top_similarity, queries @ chunk.T], dim=1)
        chunk_index = torch.arange(start, start + chunk.shape[0], device=queries.device)
        index = torch.cat([top_index, chunk_index.expand(num_queries, -1)], dim=1)
        top_similarity, position = similarity.topk(min(k, similarity.shape[1]), dim=1)
        top_index = index.gather(1, position)
    kth_neighbour = bank[top_index[:, k - 1]]
    return torch.linalg.vector_norm(queries - kth_neighbour, dim=1)


def knn_score(features: Tensor, bank: Tensor, k: int, chunk_rows: int = BANK_CHUNK_ROWS) -> Tensor:
    """``-||z - z_(k)||_2`` with ``z = f / ||f||`` and ``z_(k)`` its k-th nearest bank feature.

    The reference code (faiss ``IndexFlatL2``) uses the squared distance; that is a monotonic
    transform, so every metric is the same.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022,
    https://arxiv.org/abs/2204.06507.

    Args:
        features: (B, D) float, raw penultimate features.
        bank: (N, D) float, L2-normalized ID-train features.
    Returns:
        (B,) float, higher = more ID.
    """
    queries = F.normalize(features.to(bank.dtype), dim=1)
    return -kth_nearest_distance(queries, bank, k, chunk_rows)


@register_method
class KNN(Method):
    """Deep nearest neighbours (Sun et al., ICML 2022, arXiv 2204.06507), k = ``knn_k``.

    fit: bank = L2-normalized ID-train features; score = minus the distance from the normalized
    feature to its k-th nearest bank feature (exact search, in chunks of bank rows).
    """

    name = "knn"
    needs = frozenset({"features"})
    fits = True

    def __init__(self, k: int = 50, chunk_rows: int = BANK_CHUNK_ROWS) -> None:
        if k < 1:
            raise ValueError(f"knn_k must be at least 1, got {k}")
        self.k = int(k)
        self.chunk_rows = int(chunk_rows)
        self.bank: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> KNN:
        return cls(cfg.knn_k)

    def hparams(self) -> dict[str, Any]:
        return {"knn_k": self.k}

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        feature_dim_check(train_features, head, self.name)
        state = {"bank": F.normalize(train_features.detach().float(), dim=1).cpu()}
        self.load_state(state)
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        bank = state_tensor(state, "bank", self.name)
        if self.k > bank.shape[0]:
            raise UserError(f"knn_k={self.k} exceeds the {bank.shape[0]} ID-train features in the bank; "
                            "lower knn_k")
        self.bank = bank

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        features = out.require("features", self.name)
        # Cached on the scoring device, so the bank is copied once rather than every batch.
        self.bank = fitted(self.bank, self.name).to(features.device)
        return knn_score(features, self.bank, self.k, self.chunk_rows)
