import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.ash import ash_s

FEATURES = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                         [10.0, 0, 0, 0, 0, 0, 0, 0, 0, 5]], dtype=torch.float64)


def test_shaping_by_hand():
    shaped = ash_s(FEATURES, 80.0)
    # keep 10 - round(8) = 2 largest entries per sample
    # sample 1: s1 = 55, kept 9 + 10 = 19; sample 2: s1 = 15, kept 10 + 5 = 15 -> scale e
    scale = math.exp(55.0 / 19.0)
    assert shaped[0].tolist() == pytest.approx([0.0] * 8 + [9 * scale, 10 * scale])
    assert shaped[1].tolist() == pytest.approx([10 * math.e] + [0.0] * 8 + [5 * math.e])
    # percentile 90 keeps only the largest entry: sample 1 scale exp(55 / 10)
    assert ash_s(FEATURES, 90.0)[0, 9].item() == pytest.approx(10 * math.exp(5.5))


def test_all_zero_sample_stays_zero():
    assert ash_s(torch.zeros(1, 10), 90.0).tolist() == [[0.0] * 10]


def test_score_by_hand(make_head):
    head = make_head([[0.01] * 10, [0.0] * 9 + [0.02]], [0.0, 1.0])
    method = build_method("ash", Config(ash_percentile=80.0))
    assert not method.fits
    scores = method.score(Outputs(features=FEATURES), head)
    scale = math.exp(55.0 / 19.0)
    z1 = (0.01 * 19 * scale, 0.02 * 10 * scale + 1.0)
    z2 = (0.01 * 15 * math.e, 0.02 * 5 * math.e + 1.0)
    expected = [math.log(math.exp(z1[0]) + math.exp(z1[1])), math.log(math.exp(z2[0]) + math.exp(z2[1]))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)
    # zero features (OOD-like: no strong activations) give the energy of the bias alone
    zero = method.score(Outputs(features=torch.zeros(1, 10, dtype=torch.float64)), head)
    assert zero.item() == pytest.approx(math.log(1.0 + math.e))
    assert scores[0] > zero[0]
