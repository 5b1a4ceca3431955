import math

import pytest
import torch

from featurenorm.methods import Outputs
from featurenorm.methods.msp import MSP, msp_score


def test_max_softmax_by_hand(make_head):
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    scores = MSP().score(Outputs(logits=logits), make_head([[1.0]] * 2, [0.0, 0.0]))
    expected = [1 / (1 + math.exp(-2.0)), 0.5, 1 / (1 + math.exp(-4.0))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-7)
    assert torch.equal(msp_score(logits), scores)


def test_confident_sample_scores_higher():
    scores = msp_score(torch.tensor([[9.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert scores[0] > scores[1]
    assert scores[1].item() == pytest.approx(1 / 3)


def test_missing_logits_are_reported(make_head):
    with pytest.raises(ValueError, match="needs Outputs.logits"):
        MSP().score(Outputs(features=torch.zeros(1, 1)), make_head([[1.0]], [0.0]))
