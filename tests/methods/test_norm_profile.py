import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from featurenorm import evaluate
from featurenorm.evaluation.api import evaluate_scores
from featurenorm.methods import METHODS, Outputs, method_names
from featurenorm.methods.base import uses_all_blocks, uses_block
from featurenorm.methods.norm_profile import NormProfile, norm_profile_score

# log profiles (0, 0), (2, 0), (0, 2), (2, 2): mean (1, 1), covariance I (population), so precision I
TRAIN = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64).exp()


def test_fit_and_score_by_hand():
    method = NormProfile()
    state = method.fit(TRAIN, torch.zeros(4, dtype=torch.long), None)
    assert state["mean"].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert torch.allclose(state["precision"], torch.eye(2, dtype=torch.float64), atol=1e-12)
    queries = torch.tensor([[1.0, 1.0], [1.0, 3.0], [-1.0, 2.0]], dtype=torch.float64).exp()
    # centered (0, 0), (0, 2), (-2, 1): squared distances 0, 4, 5
    assert method.score(Outputs(block_norms=queries), None).tolist() == pytest.approx([0.0, -4.0, -5.0], abs=1e-9)


def test_a_norm_higher_or_lower_than_on_id_images_both_count_as_ood():
    method = NormProfile()
    method.fit(TRAIN, torch.zeros(4, dtype=torch.long), None)
    e = math.e
    low, typical, high = method.score(Outputs(block_norms=torch.tensor([[e, e ** -2], [e, e], [e, e ** 4]])), None)
    assert low < typical and high < typical and low == pytest.approx(-9.0) and high == pytest.approx(-9.0)


def test_matches_the_mahalanobis_distance_of_numpy_on_correlated_blocks():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 1))
    logs = np.hstack([base, 0.8 * base + 0.3 * rng.normal(size=(200, 1)), rng.normal(size=(200, 1)) * 2 + 1])
    queries = rng.normal(size=(6, 3)) * 2
    mean = logs.mean(0)
    precision = np.linalg.inv(np.cov(logs, rowvar=False, bias=True))
    expected = [-(q - mean) @ precision @ (q - mean) for q in queries]
    method = NormProfile()
    method.fit(torch.tensor(np.exp(logs)), torch.zeros(200, dtype=torch.long), None)
    scores = method.score(Outputs(block_norms=torch.tensor(np.exp(queries))), None)
    assert scores.tolist() == pytest.approx(expected, rel=1e-8)
    assert torch.equal(norm_profile_score(torch.tensor(np.exp(queries)), method.mean, method.precision), scores)


def test_a_block_with_zero_norm_gives_a_finite_very_low_score():
    method = NormProfile()
    method.fit(TRAIN, torch.zeros(4, dtype=torch.long), None)
    score = method.score(Outputs(block_norms=torch.tensor([[0.0, math.e]])), None)
    assert torch.isfinite(score).all() and score.item() < -1000


def test_state_round_trip_and_errors():
    state = NormProfile().fit(TRAIN.float(), torch.zeros(4, dtype=torch.long), None)
    restored = NormProfile()
    restored.load_state(state)
    assert restored.score(Outputs(block_norms=torch.tensor([[math.e, math.e ** 3]])), None).item() == \
        pytest.approx(-4.0, abs=1e-5)
    with pytest.raises(ValueError, match="fitted on 2 blocks"):
        restored.score(Outputs(block_norms=torch.ones(1, 3)), None)
    with pytest.raises(RuntimeError, match="not fitted"):
        NormProfile().score(Outputs(block_norms=torch.ones(1, 2)), None)
    with pytest.raises(ValueError, match="needs Outputs.block_norms"):
        restored.score(Outputs(block_norm=torch.ones(1)), None)
    with pytest.raises(ValueError, match="N >= 2"):
        NormProfile().fit(torch.ones(1, 2), torch.zeros(1, dtype=torch.long), None)


def test_registered_last_and_reads_every_block_not_the_selected_one():
    assert method_names()[-1] == "norm_profile" and METHODS["norm_profile"] is NormProfile
    assert uses_all_blocks(NormProfile) and not uses_block(NormProfile)


class TwoBlocks(nn.Module):
    """conv -> relu (block a) -> conv -> relu (block b) -> pool -> head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward_features(self, x):
        return self.b(self.a(x)).mean((2, 3))

    def forward(self, x):
        return self.head(self.forward_features(x))


def _norms(model, images):
    """The paper's FeatureNorm by hand: each rectified channel's L2 norm over its positions, averaged over channels."""
    with torch.no_grad():
        a = model.a(images)
        b = model.b(a)
    return torch.stack([x.relu().flatten(2).norm(dim=2).mean(1) for x in (a, b)], 1)


def test_evaluate_fits_on_the_id_train_block_norms_and_scores_every_block():
    model = TwoBlocks().eval()
    generator = torch.Generator().manual_seed(1)
    train = torch.rand(16, 3, 6, 6, generator=generator)
    test = torch.rand(8, 3, 6, 6, generator=generator)
    ood = torch.rand(8, 3, 6, 6, generator=generator) * 3
    labels = torch.zeros(16, dtype=torch.long)
    fit_loader = [(train[:8], labels[:8]), (train[8:], labels[8:])]
    run = evaluate_scores(model, [test], {"bright": [ood]}, ["norm_profile"], fit_loader=fit_loader,
                          blocks=["a", "b"])
    logs = _norms(model, train).double().log()
    mean = logs.mean(0)
    precision = torch.linalg.pinv((logs - mean).T @ (logs - mean) / 16)
    for images, got in ((test, run.id_scores.scores["norm_profile"]),
                        (ood, run.ood_scores["bright"].scores["norm_profile"])):
        centered = _norms(model, images).double().log() - mean
        assert got.tolist() == pytest.approx((-((centered @ precision) * centered).sum(1)).tolist(), rel=1e-4)
    results = evaluate(model, [test], {"bright": [ood]}, ["norm_profile"], fit_loader=fit_loader)
    assert 0.0 <= results["methods"]["norm_profile"]["bright"]["auroc"] <= 1.0


def test_one_block_is_the_squared_z_score_of_its_log_norm():
    train = torch.tensor([[1.0], [math.e ** 2]], dtype=torch.float64)  # log norms 0 and 2: mean 1, variance 1
    method = NormProfile()
    method.fit(train, torch.zeros(2, dtype=torch.long), None)
    scores = method.score(Outputs(block_norms=torch.tensor([[math.e], [math.e ** 4], [1 / math.e]],
                                                           dtype=torch.float64)), None)
    assert scores.tolist() == pytest.approx([0.0, -9.0, -4.0], abs=1e-9)


def test_a_block_constant_on_id_train_is_ignored_and_ties_stay_ties():
    # block 2 has the same norm on every ID-train image: no variance, so pinv gives it no weight
    train = torch.cat([TRAIN[:, :1], torch.full((4, 1), 5.0, dtype=torch.float64)], 1)
    method = NormProfile()
    method.fit(train, torch.zeros(4, dtype=torch.long), None)
    e = math.e
    scores = method.score(Outputs(block_norms=torch.tensor([[e ** 3, 5.0], [e ** 3, 500.0], [e ** -1, 5.0]],
                                                           dtype=torch.float64)), None)
    # block 1: log norms 0, 2, 0, 2 -> mean 1, variance 1; queries at log 3, 3, -1: all 4 from the mean
    assert scores.tolist() == pytest.approx([-4.0, -4.0, -4.0], abs=1e-9)


def test_a_nan_norm_gives_a_nan_score_for_the_evaluator_to_report():
    method = NormProfile()
    method.fit(TRAIN, torch.zeros(4, dtype=torch.long), None)
    scores = method.score(Outputs(block_norms=torch.tensor([[float("nan"), 1.0], [1.0, 1.0]])), None)
    assert math.isnan(scores[0].item()) and math.isfinite(scores[1].item())
