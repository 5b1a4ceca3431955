"""OOD detection metrics: FPR at a fixed TPR, AUROC, AUPR-In and AUPR-Out.

Convention (project wide): a higher score means "more in-distribution", and ID samples are the
positive class. Inputs are 1-D arrays (numpy or anything ``np.asarray`` accepts); outputs are
plain Python floats, fractions in [0, 1].

One metric follows another convention, under a name of its own: ``fpr95_openood`` is OpenOOD's
FPR@95, with OOD as the positive class (:func:`fpr_at_ood_recall`). AUROC is the same number
under both conventions.
"""
from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import numpy as np

METRIC_KEYS = ("fpr95", "fpr95_openood", "auroc", "aupr_in", "aupr_out")


def _as_scores(scores: object, what: str) -> np.ndarray:
    """Return ``scores`` as a 1-D float64 array; raise ValueError if empty or not finite."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what} scores are empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        kinds = sorted({"NaN" if math.isnan(v) else "inf" for v in arr[bad]})
        raise ValueError(f"{what} scores contain {int(bad.sum())} non-finite value(s) ({', '.join(kinds)})")
    return arr


def fpr_at_tpr(id_scores: object, ood_scores: object, tpr: float = 0.95) -> float:
    """False-positive rate on OOD at the threshold that accepts a fraction ``tpr`` of ID samples.

    Exact on the empirical distribution: with ID scores sorted in descending order, the threshold
    ``t`` is the ``ceil(tpr * n_id)``-th largest ID score, so at least ``tpr`` of ID is accepted
    (``score >= t``); FPR is the fraction of OOD scores ``>= t`` (ties with ``t`` are accepted).

    Args:
        id_scores: (N_id,) scores of in-distribution samples.
        ood_scores: (N_ood,) scores of OOD samples.
        tpr: target true-positive rate in (0, 1].
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    id_arr = _as_scores(id_scores, "ID")
    ood_arr = _as_scores(ood_scores, "OOD")
    # The small tolerance keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20.
    rank = max(1, math.ceil(tpr * id_arr.size - 1e-9))
    threshold = np.sort(id_arr)[::-1][rank - 1]
    return float(np.mean(ood_arr >= threshold))


def fpr_at_ood_recall(id_scores: object, ood_scores: object, recall: float = 0.95) -> float:
    """OpenOOD's FPR@95: the fraction of ID samples rejected when a fraction ``recall`` of OOD is caught.

    OOD is the positive class and ``-score`` its score, as in OpenOOD v1.5
    (``openood/evaluators/metrics.py``): ``fpr, tpr, _ = sklearn.metrics.roc_curve(is_ood, -score)``,
    then ``fpr[argmax(tpr >= recall)]``. The ROC points are those of ``roc_curve`` with its default
    ``drop_intermediate=True``: one point per distinct score, the origin prepended, and a point
    dropped when the counts of OOD and of ID samples it adds equal those its successor adds (it then
    lies on a straight segment). On tied scores that drop can move the first point with
    ``tpr >= recall`` to a later one; this function reproduces it.

    Not the paper's FPR95 (:func:`fpr_at_tpr`: OOD accepted at 95% ID acceptance).

    Args:
        id_scores: (N_id,) scores of in-distribution samples, higher = more ID.
        ood_scores: (N_ood,) scores of OOD samples.
        recall: target OOD recall (true-positive rate) in (0, 1].
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    id_arr = _as_scores(id_scores, "ID")
    ood_arr = _as_scores(ood_scores, "OOD")
    outlier_scores = -np.concatenate([ood_arr, id_arr])  # higher = more OOD
    is_ood = np.r_[np.ones(ood_arr.size, bool), np.zeros(id_arr.size, bool)]
    order = np.argsort(-outlier_scores, kind="mergesort")
    sorted_scores = outlier_scores[order]
    # the last index of each run of equal scores: one ROC point per distinct threshold
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    true_pos = np.cumsum(is_ood[order])[run_ends].astype(np.float64)
    false_pos = run_ends + 1.0 - true_pos
    if true_pos.size > 2:
        keep = np.r_[True, (np.diff(false_pos, 2) != 0) | (np.diff(true_pos, 2) != 0), True]
        true_pos, false_pos = true_pos[keep], false_pos[keep]
    tpr = np.r_[0.0, true_pos] / true_pos[-1]
    fpr = np.r_[0.0, false_pos] / false_pos[-1]
    return float(fpr[np.argmax(tpr >= recall)])


def auroc(id_scores: object, ood_scores: object) -> float:
    """Area under the ROC curve with ID as the positive class.

    Computed as the Mann-Whitney statistic ``P(s_id > s_ood) + 0.5 * P(s_id == s_ood)``, using
    average ranks for ties: ``(sum of ID ranks - n_id (n_id + 1) / 2) / (n_id n_ood)``.
    Equal to ``sklearn.metrics.roc_auc_score``.
    """
    id_arr = _as_scores(id_scores, "ID")
    ood_arr = _as_scores(ood_scores, "OOD")
    from scipy.stats import rankdata  # lazy: scipy.stats adds ~0.6 s to every start

    ranks = rankdata(np.concatenate([id_arr, ood_arr]))  # ties get their average rank
    n_id, n_ood = id_arr.size, ood_arr.size
    u_stat = ranks[:n_id].sum() - n_id * (n_id + 1) / 2.0
    return float(u_stat / (n_id * n_ood))


def average_precision(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Average precision ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds.

    Tied scores form a single threshold, as in ``sklearn.metrics.average_precision_score``.

    Args:
        scores: (N,) float, higher = more positive.
        is_positive: (N,) bool.
    """
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_pos = is_positive[order].astype(np.float64)
    # The last index of each run of equal scores: the operating points of the PR curve.
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_pos)[run_ends]
    accepted = run_ends + 1.0
    precision = true_pos / accepted
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def aupr(id_scores: object, ood_scores: object, positive: Literal["id", "ood"] = "id") -> float:
    """Area under the precision-recall curve (average precision).

    ``positive="id"`` gives AUPR-In (ID positive, scores as they are); ``positive="ood"`` gives
    AUPR-Out (OOD positive, scores negated so that higher means more OOD).
    """
    id_arr = _as_scores(id_scores, "ID")
    ood_arr = _as_scores(ood_scores, "OOD")
    scores = np.concatenate([id_arr, ood_arr])
    is_id = np.r_[np.ones(id_arr.size, bool), np.zeros(ood_arr.size, bool)]
    if positive == "id":
        return average_precision(scores, is_id)
    if positive == "ood":
        return average_precision(-scores, ~is_id)
    raise ValueError(f"positive must be 'id' or 'ood', got {positive!r}")


def ood_metrics(id_scores: object, ood_scores: object) -> dict[str, float]:
    """Every metric of :data:`METRIC_KEYS`, in that order, as fractions in [0, 1].

    ``fpr95`` (ID positive: OOD accepted at 95% ID acceptance) and ``fpr95_openood`` (OOD
    positive: ID rejected at 95% OOD recall) are two different numbers.
    """
    return {
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "fpr95_openood": fpr_at_ood_recall(id_scores, ood_scores, 0.95),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr(id_scores, ood_scores, positive="id"),
        "aupr_out": aupr(id_scores, ood_scores, positive="ood"),
    }


def average_metrics(per_dataset: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the OOD datasets.

    Args:
        per_dataset: ``{dataset: {metric: value}}``; every dataset must have the same metric keys.
    """
    if not per_dataset:
        raise ValueError("no per-dataset metrics to average")
    datasets = list(per_dataset)
    keys = list(per_dataset[datasets[0]])
    for name in datasets[1:]:
        if set(per_dataset[name]) != set(keys):
            raise ValueError(f"dataset '{name}' has metrics {sorted(per_dataset[name])}, "
                             f"expected {sorted(keys)}")
    return {k: float(np.mean([per_dataset[d][k] for d in datasets])) for k in keys}


def group_averages(per_dataset: Mapping[str, Mapping[str, float]], groups: Mapping[str, Sequence[str]],
                   keys: Sequence[str] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    """Mean of each metric over the members of each group (OpenOOD's near-OOD and far-OOD).

    Args:
        per_dataset: ``{dataset: {metric: value, ...}}``; other keys of a dataset are ignored.
        groups: ``{group: [dataset, ...]}``.
        keys: the metrics to average.
    Returns:
        ``{group: {metric: mean}}`` over the members present in ``per_dataset``; a group with no
        member present is left out.
    """
    averages = {}
    for group, members in groups.items():
        present = {name: {k: per_dataset[name][k] for k in keys} for name in members if name in per_dataset}
        if present:
            averages[group] = average_metrics(present)
    return averages
