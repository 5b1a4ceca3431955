import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import Outputs, build_method

FEATURES = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)
BLOCK_NORM = torch.tensor([10.0, 0.5], dtype=torch.float64)


def test_energy_of_blocknorm_logits_by_hand(make_head):
    head = make_head([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    method = build_method("energy_blocknorm", Config())
    scores = method.score(Outputs(features=FEATURES, block_norm=BLOCK_NORM), head)
    # logits (6, 8) and (0.3, 0.4)
    expected = [math.log(math.exp(6.0) + math.exp(8.0)), math.log(math.exp(0.3) + math.exp(0.4))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)
    assert scores[0] > scores[1]  # larger block norm (ID-like) scores higher


def test_temperature_from_config(make_head):
    head = make_head([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    method = build_method("energy_blocknorm", Config(energy_temperature=2.0))
    score = method.score(Outputs(features=FEATURES[:1], block_norm=BLOCK_NORM[:1]), head)
    assert score.item() == pytest.approx(2.0 * math.log(math.exp(3.0) + math.exp(4.0)), abs=1e-12)
