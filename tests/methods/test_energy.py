import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.errors import UserError
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.energy import Energy, energy_score


def test_energy_by_hand_default_temperature(make_head):
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, -3.0]], dtype=torch.float64)
    scores = Energy().score(Outputs(logits=logits), make_head([[1.0]] * 2, [0.0, 0.0]))
    expected = [math.log(2.0), math.log(math.exp(2.0) + 1.0), math.log(math.exp(-1.0) + math.exp(-3.0))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)
    assert scores[1] > scores[2]  # large logits (ID-like) beat small ones (OOD-like)


def test_energy_temperature_from_config():
    method = build_method("energy", Config(energy_temperature=2.0))
    assert isinstance(method, Energy) and method.temperature == 2.0
    logits = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    # T * log(exp(2 / T) + exp(0 / T)) with T = 2
    expected = 2.0 * math.log(math.exp(1.0) + 1.0)
    assert method.score(Outputs(logits=logits), None).item() == pytest.approx(expected, abs=1e-12)
    assert energy_score(logits, 2.0).item() == pytest.approx(expected, abs=1e-12)


def test_zero_temperature_is_a_user_error():
    with pytest.raises(UserError, match="energy_temperature"):
        Energy(0.0)
