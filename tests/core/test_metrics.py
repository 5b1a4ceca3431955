"""Tests for featurenorm.core.metrics: hand-computed cases and agreement with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from featurenorm.core.metrics import (METRIC_KEYS, aupr, auroc, average_metrics, fpr_at_ood_recall, fpr_at_tpr,
                                 group_averages, ood_metrics)


def tied_scores(seed: int, n_id: int, n_ood: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussians rounded to one decimal, so many scores tie within and across sets."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(1.0, 1.0, n_id), 1), np.round(rng.normal(0.0, 1.0, n_ood), 1)


def sklearn_inputs(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return labels, np.r_[id_scores, ood_scores]


def test_fpr95_by_hand_with_ties():
    id_scores = np.arange(1, 21, dtype=float)  # 1..20
    # ceil(0.95 * 20) = 19th largest ID score is 2; OOD scores >= 2: {2, 2, 3, 25} -> 4 of 8
    ood_scores = np.array([0.0, 1.0, 2.0, 2.0, 3.0, 0.5, 1.5, 25.0])
    assert fpr_at_tpr(id_scores, ood_scores) == 0.5
    # tpr 0.9 -> 18th largest is 3: OOD >= 3 is {3, 25}
    assert fpr_at_tpr(id_scores, ood_scores, tpr=0.9) == 0.25
    # tpr 0.96 -> ceil(19.2) = 20th largest is 1: OOD >= 1 is {1, 2, 2, 3, 1.5, 25}
    assert fpr_at_tpr(id_scores, ood_scores, tpr=0.96) == 0.75


def test_fpr95_ties_inside_id():
    # Sorted ID: 9, 5, 5, 5; ceil(0.95 * 4) = 4th largest is 5; OOD ties at 5 count as accepted.
    assert fpr_at_tpr([5.0, 9.0, 5.0, 5.0], [5.0, 4.9, 6.0, 1.0]) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr95_matches_sklearn_roc_curve(seed):
    id_scores, ood_scores = tied_scores(seed, 200, 150)
    labels, scores = sklearn_inputs(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = fpr[np.argmax(tpr >= 0.95 - 1e-12)]
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_aupr_match_sklearn(seed):
    id_scores, ood_scores = tied_scores(seed, 120, 90)
    labels, scores = sklearn_inputs(id_scores, ood_scores)
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert aupr(id_scores, ood_scores, positive="id") == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)
    assert aupr(id_scores, ood_scores, positive="ood") == pytest.approx(
        average_precision_score(1 - labels, -scores), abs=1e-12)


def test_auroc_by_hand_with_tie():
    # pairs (id, ood): (1,2)=0 (1,0)=1 (2,2)=1/2 (2,0)=1 (3,2)=1 (3,0)=1 -> 4.5 / 6
    assert auroc([1.0, 2.0, 3.0], [2.0, 0.0]) == 0.75


def test_aupr_by_hand():
    # Ranked: 3 (ID), 2 (OOD), 1 (ID). AUPR-In: recall 1/2 at precision 1, recall 1 at precision 2/3.
    assert aupr([3.0, 1.0], [2.0], positive="id") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # AUPR-Out ranks by -score: -1 (ID), -2 (OOD), -3 (ID); the OOD sample is found at precision 1/2.
    assert aupr([3.0, 1.0], [2.0], positive="ood") == pytest.approx(0.5)


def test_separable_scores_are_perfect():
    m = ood_metrics([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0])
    assert m == {"fpr95": 0.0, "fpr95_openood": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    assert all(type(v) is float for v in m.values())
    assert tuple(m) == METRIC_KEYS


def test_identical_distributions_give_chance_auroc():
    scores = np.array([0.3, 1.2, -0.7, 2.0, 0.0])
    assert auroc(scores, scores.copy()) == 0.5
    # every OOD score equals some ID score, and the ID threshold is the 5th largest = min
    assert fpr_at_tpr(scores, scores.copy()) == 1.0


def test_reversed_scores_give_zero_auroc():
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert fpr_at_tpr([1.0, 2.0], [3.0, 4.0]) == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(ValueError, match="ID scores contain 1 non-finite"):
        ood_metrics([1.0, bad, 2.0], [0.0])
    with pytest.raises(ValueError, match="OOD scores contain 1 non-finite"):
        auroc([1.0, 2.0], [bad, 0.0])


def test_empty_scores_and_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="OOD scores are empty"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0], [0.0], tpr=0.0)
    with pytest.raises(ValueError, match="positive"):
        aupr([1.0], [0.0], positive="both")


def test_average_metrics_means_each_key():
    per_dataset = {
        "svhn": {"fpr95": 0.2, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7},
        "textures": {"fpr95": 0.4, "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5},
    }
    assert average_metrics(per_dataset) == pytest.approx(
        {"fpr95": 0.3, "auroc": 0.8, "aupr_in": 0.7, "aupr_out": 0.6})
    with pytest.raises(ValueError, match="no per-dataset"):
        average_metrics({})
    with pytest.raises(ValueError, match="dataset 'b'"):
        average_metrics({"a": {"auroc": 1.0}, "b": {"fpr95": 0.0}})


# --- OpenOOD's FPR@95 (OOD positive) and the group averages

def openood_fpr95(id_scores, ood_scores) -> float:
    """OpenOOD v1.5's definition: roc_curve on OOD-as-positive, negated scores, first TPR >= 0.95."""
    is_ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = roc_curve(is_ood, -np.r_[id_scores, ood_scores])
    return float(fpr[np.argmax(tpr >= 0.95)])


def test_openood_fpr95_by_hand():
    # 20 OOD, 10 ID. Ranked most-OOD first: 18 OOD at -10; then an OOD and an ID tied at 0; then an OOD
    # and an ID tied at 1; then 8 ID at 5. The ROC points are (0, 18/20), (1/10, 19/20), (2/10, 1), (1, 1);
    # the middle one adds the same (1 ID, 1 OOD) as the next, so roc_curve drops it, and the first point
    # with TPR >= 0.95 becomes (2/10, 1): 0.2, where the undropped curve would give 0.1.
    id_scores = [0.0, 1.0] + [5.0] * 8
    ood_scores = [-10.0] * 18 + [0.0, 1.0]
    assert fpr_at_ood_recall(id_scores, ood_scores) == 0.2
    assert openood_fpr95(id_scores, ood_scores) == 0.2
    # no ties: the 19 lowest scores are OOD, so 95% OOD recall (19 of 20, exactly 0.95) rejects no ID;
    # the 20th OOD (25) lies above the ID score 19.5, so full recall would reject 1 of 4
    id_scores, ood_scores = [19.5, 30.0, 31.0, 32.0], [float(v) for v in range(19)] + [25.0]
    assert fpr_at_ood_recall(id_scores, ood_scores) == 0.0
    assert fpr_at_ood_recall(id_scores, ood_scores, recall=1.0) == 0.25
    assert openood_fpr95(id_scores, ood_scores) == 0.0


def test_openood_fpr95_differs_from_ours():
    # ours: the ID threshold keeping 95% of the 20 ID scores 1..20 is the 19th largest, 2; OOD >= 2 is
    # {2.5}: 1 of 2 -> 0.5. OpenOOD's: catching 95% of 2 OOD means both, so everything <= 2.5 is
    # rejected, ID {1, 2}: 2 of 20 -> 0.1.
    id_scores, ood_scores = list(range(1, 21)), [0.5, 2.5]
    assert fpr_at_tpr(id_scores, ood_scores) == 0.5
    assert fpr_at_ood_recall(id_scores, ood_scores) == 0.1


@pytest.mark.parametrize("seed", range(6))
def test_openood_fpr95_equals_roc_curve_with_ties(seed):
    id_scores, ood_scores = tied_scores(seed, 37, 23)
    assert fpr_at_ood_recall(id_scores, ood_scores) == openood_fpr95(id_scores, ood_scores)
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1, 1, 50), rng.normal(0, 1, 41)
    assert fpr_at_ood_recall(id_scores, ood_scores) == openood_fpr95(id_scores, ood_scores)


def test_group_averages_by_hand():
    per_set = {"a": {"fpr95": 0.2, "fpr95_openood": 0.1, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7, "num_ood": 5},
               "b": {"fpr95": 0.4, "fpr95_openood": 0.3, "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5, "num_ood": 9},
               "c": {"fpr95": 0.9, "fpr95_openood": 0.8, "auroc": 0.5, "aupr_in": 0.4, "aupr_out": 0.3, "num_ood": 2}}
    averages = group_averages(per_set, {"near": ["a", "b"], "far": ["c", "missing"], "none": ["x"]})
    assert list(averages) == ["near", "far"]  # a group with no member present is left out
    assert averages["near"] == pytest.approx({"fpr95": 0.3, "fpr95_openood": 0.2, "auroc": 0.8, "aupr_in": 0.7,
                                              "aupr_out": 0.6})
    assert averages["far"] == {k: per_set["c"][k] for k in METRIC_KEYS}
