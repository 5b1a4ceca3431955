import numpy as np
import pytest
import torch

from featurenorm.methods import Outputs
from featurenorm.methods.mahalanobis import Mahalanobis, mahalanobis_score

HEAD_W = [[1.0, 0.0], [0.0, 1.0]]
# class 0 around (0, 0), class 1 around (5, 0); the same offsets, labels shuffled
OFFSETS = [[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]
TRAIN = torch.tensor([[o[0] + 5 * c, o[1]] for c in (1, 0) for o in OFFSETS], dtype=torch.float64)
LABELS = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
# tied covariance of the centered features: var_x = 8 * 2 / 8 = 2, var_y = 2 * 2 / 8 = 0.5
# so the precision is diag(0.5, 2)


def test_fit_by_hand(make_head):
    state = Mahalanobis().fit(TRAIN, LABELS, make_head(HEAD_W, [0.0, 0.0]))
    assert state["class_means"].tolist() == [[0.0, 0.0], [5.0, 0.0]]
    assert torch.allclose(state["precision"], torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64))


def test_score_is_minus_smallest_squared_distance(make_head):
    head = make_head(HEAD_W, [0.0, 0.0])
    method = Mahalanobis()
    method.fit(TRAIN, LABELS, head)
    features = torch.tensor([[2.0, 1.0], [4.0, 0.0], [0.0, 0.0], [2.5, 10.0]], dtype=torch.float64)
    scores = method.score(Outputs(features=features), head)
    # (2, 1): d0 = 0.5*4 + 2*1 = 4, d1 = 0.5*9 + 2*1 = 6.5; (4, 0): d0 = 8, d1 = 0.5;
    # (0, 0): d0 = 0; (2.5, 10): d0 = d1 = 0.5*6.25 + 2*100 = 203.125
    assert scores.tolist() == pytest.approx([-4.0, -0.5, 0.0, -203.125], abs=1e-9)
    # near a class mean (ID-like) beats far from every mean (OOD-like)
    assert scores[2] > scores[3]


def test_matches_unrolled_computation_on_random_data(make_head):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 4)) + np.repeat(np.eye(3, 4) * 3, 10, axis=0)
    labels = np.repeat([0, 1, 2], 10)
    queries = rng.normal(size=(5, 4)) * 2
    means = np.stack([train[labels == c].mean(0) for c in range(3)])
    centered = train - means[labels]
    precision = np.linalg.pinv(centered.T @ centered / len(train))
    expected = [-min((q - m) @ precision @ (q - m) for m in means) for q in queries]
    method = Mahalanobis()
    method.fit(torch.tensor(train), torch.tensor(labels), make_head(np.ones((3, 4)).tolist(), [0.0] * 3))
    scores = method.score(Outputs(features=torch.tensor(queries)), None)
    assert scores.tolist() == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(mahalanobis_score(torch.tensor(queries), method.class_means, method.precision), scores)


def test_state_round_trip_with_float32_features(make_head):
    state = Mahalanobis().fit(TRAIN.float(), LABELS, make_head(HEAD_W, [0.0, 0.0]))
    restored = Mahalanobis()
    restored.load_state(state)
    score = restored.score(Outputs(features=torch.tensor([[4.0, 0.0]])), None)
    assert score.item() == pytest.approx(-0.5, abs=1e-6)
