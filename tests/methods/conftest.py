"""Shared helpers for the method tests."""
from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch
import torch.nn as nn


def linear_head(weight: Sequence[Sequence[float]], bias: Sequence[float]) -> nn.Linear:
    """An ``nn.Linear`` with hand-picked weight (C, D) and bias (C,), in float64."""
    w = torch.tensor(weight, dtype=torch.float64)
    head = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return head


@pytest.fixture
def make_head() -> Callable[[Sequence[Sequence[float]], Sequence[float]], nn.Linear]:
    return linear_head
