import torch

from featurenorm.methods import Outputs
from featurenorm.methods.maxlogit import MaxLogit, maxlogit_score


def test_max_logit_by_hand(make_head):
    logits = torch.tensor([[3.0, 1.0], [0.5, -1.0], [-2.0, -0.5]])
    scores = MaxLogit().score(Outputs(logits=logits), make_head([[1.0]] * 2, [0.0, 0.0]))
    assert scores.tolist() == [3.0, 0.5, -0.5]
    assert torch.equal(maxlogit_score(logits), scores)
    # the confident sample (ID-like) ranks above the flat one (OOD-like)
    assert scores[0] > scores[2]
