import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.react import EnergyReAct, react_clip_value, react_score

W = [[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]
B = [0.5, -0.5]
# 12 activations 1..12: the 90th percentile (linear) sits at position 0.9 * 11 = 9.9 -> 10 + 0.9 = 10.9
TRAIN = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(4, 3)


def test_clip_value_is_the_flattened_percentile():
    assert react_clip_value(TRAIN, 90.0) == pytest.approx(10.9)
    assert react_clip_value(TRAIN, 50.0) == pytest.approx(6.5)


def test_fit_and_score_by_hand(make_head):
    head = make_head(W, B)
    method = EnergyReAct(percentile=90.0)
    state = method.fit(TRAIN, torch.zeros(4, dtype=torch.long), head)
    assert state["clip"].item() == pytest.approx(10.9)
    features = torch.tensor([[20.0, 0.0, 1.0], [1.0, 30.0, 2.0]], dtype=torch.float64)
    scores = method.score(Outputs(features=features), head)
    # sample 1: clipped [10.9, 0, 1] -> logits [10.9 + 1 + 0.5, 0 - 0.5]
    # sample 2: clipped [1, 10.9, 2] -> logits [1 + 2 + 0.5, 21.8 - 0.5]
    expected = [math.log(math.exp(12.4) + math.exp(-0.5)), math.log(math.exp(3.5) + math.exp(21.3))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)
    assert torch.allclose(react_score(features, head, 10.9), scores)


def test_state_round_trip_and_config(make_head):
    head = make_head(W, B)
    method = build_method("energy_react", Config(react_percentile=50.0, energy_temperature=2.0))
    state = method.fit(TRAIN, torch.zeros(4, dtype=torch.long), head)
    restored = EnergyReAct(50.0, 2.0)
    restored.load_state(state)
    assert restored.clip == pytest.approx(6.5)
    features = torch.tensor([[8.0, 0.0, 0.0]], dtype=torch.float64)
    # clipped [6.5, 0, 0] -> logits [7.0, -0.5]; T = 2
    expected = 2.0 * math.log(math.exp(7.0 / 2.0) + math.exp(-0.5 / 2.0))
    assert restored.score(Outputs(features=features), head).item() == pytest.approx(expected, abs=1e-12)


def test_unfitted_method_says_so(make_head):
    with pytest.raises(RuntimeError, match="not fitted"):
        EnergyReAct().score(Outputs(features=torch.zeros(1, 3)), make_head(W, B))
