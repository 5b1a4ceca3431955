import torch

from featurenorm.methods import Outputs
from featurenorm.methods.featurenorm import FeatureNorm, featurenorm_score


def test_score_is_the_block_norm(make_head):
    head = make_head([[1.0, 0.0]], [0.0])
    block_norm = torch.tensor([3.5, 0.25, 7.0])
    scores = FeatureNorm().score(Outputs(block_norm=block_norm), head)
    assert torch.equal(scores, torch.tensor([3.5, 0.25, 7.0]))
    assert torch.equal(featurenorm_score(block_norm), block_norm)
    # a larger norm (ID-like) ranks above a smaller one (OOD-like)
    assert scores[2] > scores[0] > scores[1]


def test_needs_only_the_block_norm():
    assert FeatureNorm.needs == frozenset({"block_norm"})
    assert not FeatureNorm.fits
