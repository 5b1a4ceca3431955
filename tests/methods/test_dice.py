import math

import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.dice import EnergyDICE, dice_mask

W = [[1.0, 2.0, 3.0], [4.0, -1.0, 0.5]]
B = [0.5, -1.0]
# mean feature m = [1, 2, 0]
TRAIN = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]], dtype=torch.float64)
# contribution V = m * W = [[1, 4, 0], [4, -2, 0]]; sorted [-2, 0, 0, 1, 4, 4]; median = 0.5
EXPECTED_MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_mask_by_hand():
    mask = dice_mask(torch.tensor([1.0, 2.0, 0.0]), torch.tensor(W), 50.0)
    assert torch.equal(mask, EXPECTED_MASK)
    # sparsity 60: threshold at position 0.6 * 5 = 3 of the sorted V, i.e. 1; V > 1 drops V = 1 too
    assert torch.equal(dice_mask(torch.tensor([1.0, 2.0, 0.0]), torch.tensor(W), 60.0),
                       torch.tensor([[False, True, False], [True, False, False]]))
    # sparsity 0: threshold is the minimum -2, so all but that weight stay
    assert dice_mask(torch.tensor([1.0, 2.0, 0.0]), torch.tensor(W), 0.0).sum().item() == 5


def test_fit_and_score_by_hand(make_head):
    head = make_head(W, B)
    method = build_method("energy_dice", Config(dice_sparsity=50.0))
    state = method.fit(TRAIN, torch.zeros(2, dtype=torch.long), head)
    assert torch.equal(state["mask"], EXPECTED_MASK)
    assert state["mean_feature"].tolist() == [1.0, 2.0, 0.0]
    features = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    scores = method.score(Outputs(features=features), head)
    # masked W = [[1, 2, 0], [4, 0, 0]]: logits = [f0 + 2 f1 + 0.5, 4 f0 - 1]
    expected = [math.log(math.exp(5.5) + math.exp(3.0)), math.log(math.exp(0.5) + math.exp(-1.0))]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)
    # the head itself is left unchanged
    assert head.weight.tolist() == W


def test_state_round_trip(make_head):
    head = make_head(W, B)
    state = EnergyDICE(50.0).fit(TRAIN, torch.zeros(2, dtype=torch.long), head)
    restored = EnergyDICE(50.0)
    restored.load_state(state)
    features = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    assert restored.score(Outputs(features=features), head).item() == pytest.approx(
        math.log(math.exp(3.5) + math.exp(3.0)), abs=1e-12)
