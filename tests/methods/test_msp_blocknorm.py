import math

import pytest
import torch

from featurenorm.methods import Outputs, blocknorm_logits
from featurenorm.methods.blocknorm import blocknorm_features
from featurenorm.methods.msp_blocknorm import MSPBlockNorm

W = [[1.0, 0.0], [0.0, 1.0]]
FEATURES = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
BLOCK_NORM = torch.tensor([10.0, 0.5, 2.0], dtype=torch.float64)


def test_blocknorm_logits_by_hand(make_head):
    head = make_head(W, [0.0, 1.0])
    # direction (0.6, 0.8) for both non-zero samples; magnitudes 10 and 0.5; zero stays zero
    assert torch.allclose(blocknorm_features(FEATURES, BLOCK_NORM),
                          torch.tensor([[6.0, 8.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(blocknorm_logits(FEATURES, BLOCK_NORM, head),
                          torch.tensor([[6.0, 9.0], [0.3, 1.4], [0.0, 1.0]], dtype=torch.float64))


def test_msp_of_blocknorm_logits_by_hand(make_head):
    head = make_head(W, [0.0, 0.0])
    scores = MSPBlockNorm().score(Outputs(features=FEATURES, block_norm=BLOCK_NORM), head)
    # logits (6, 8), (0.3, 0.4), (0, 0): MSP = 1 / (1 + exp(-gap))
    expected = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-0.1)), 0.5]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)
    # the same direction with a larger block norm (ID-like) is more confident
    assert scores[0] > scores[1]
    assert MSPBlockNorm.needs == frozenset({"features", "block_norm"})
