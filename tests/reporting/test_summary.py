"""Mean ± sample std over runs (featurenorm/reporting/summary.py)."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from featurenorm.errors import UserError
from featurenorm.reporting.summary import (
    MeanStd,
    format_summary,
    load_results_files,
    mean_std,
    summarize_results,
)


def run(fpr_svhn: float, auroc_svhn: float, fpr_tex: float = 0.30, auroc_tex: float = 0.80,
        arch: str = "resnet18", id_dataset: str = "cifar10", extra_methods: dict | None = None) -> dict:
    """A crafted ood_results.json with featurenorm on svhn and textures."""
    methods = {"featurenorm": {
        "svhn": {"fpr95": fpr_svhn, "auroc": auroc_svhn, "aupr_in": 0.5, "aupr_out": 0.5, "num_ood": 10},
        "textures": {"fpr95": fpr_tex, "auroc": auroc_tex, "aupr_in": 0.5, "aupr_out": 0.5, "num_ood": 10},
        "average": {"fpr95": -1.0, "auroc": -1.0},  # deliberately wrong: recomputed from the columns
    }}
    methods.update(extra_methods or {})
    return {"id_dataset": id_dataset, "arch": arch, "methods": methods}


THREE_RUNS = [run(0.05, 0.90, fpr_tex=0.20), run(0.07, 0.92, fpr_tex=0.30), run(0.12, 0.94, fpr_tex=0.40)]


def test_mean_std_is_sample_std():
    assert mean_std([90.0, 92.0, 94.0]) == MeanStd(92.0, 2.0, 3)
    assert mean_std([5.0]) == MeanStd(5.0, 0.0, 1)
    values = [1.0, 2.0, 4.0, 8.5]
    stat = mean_std(values)
    assert stat.mean == pytest.approx(np.mean(values))
    assert stat.std == pytest.approx(np.std(values, ddof=1))
    with pytest.raises(ValueError):
        mean_std([])


def test_summarize_three_runs_hand_values():
    summary = summarize_results(THREE_RUNS)
    assert summary.n_runs == 3 and summary.warnings == []
    assert summary.datasets == ["svhn", "textures"]
    stats = summary.methods["featurenorm"].stats
    assert summary.methods["featurenorm"].n == 3
    assert stats["svhn"]["auroc"].mean == pytest.approx(92.0)
    assert stats["svhn"]["auroc"].std == pytest.approx(2.0)
    # fpr95 5, 7, 12: deviations -3, -1, +4 -> variance 26 / 2 = 13
    assert stats["svhn"]["fpr95"].mean == pytest.approx(8.0)
    assert stats["svhn"]["fpr95"].std == pytest.approx(13 ** 0.5)
    # per-run average fpr95: (5+20)/2, (7+30)/2, (12+40)/2 = 12.5, 18.5, 26 -> mean 19, std sqrt(45.75)
    assert stats["average"]["fpr95"].mean == pytest.approx(19.0)
    assert stats["average"]["fpr95"].std == pytest.approx(45.75 ** 0.5)
    assert stats["average"]["auroc"].mean == pytest.approx(86.0)
    assert stats["average"]["auroc"].std == pytest.approx(1.0)


def test_single_run_has_zero_std():
    stats = summarize_results([run(0.10, 0.95)]).methods["featurenorm"].stats
    assert stats["svhn"]["fpr95"] == MeanStd(pytest.approx(10.0), 0.0, 1)


def test_format_md_row():
    lines = format_summary(summarize_results(THREE_RUNS), "md").splitlines()
    assert lines[2] == ("| method | n | svhn FPR95 | svhn AUROC | textures FPR95 | textures AUROC "
                        "| average FPR95 | average AUROC |")
    assert lines[4] == ("| featurenorm | 3 | 8.00 ± 3.61 | 92.00 ± 2.00 | 30.00 ± 10.00 | 80.00 ± 0.00 "
                        "| 19.00 ± 6.76 | 86.00 ± 1.00 |")
    assert "sample std, ddof=1" in lines[0]


def test_format_csv_values():
    rows = list(csv.DictReader(io.StringIO(format_summary(summarize_results(THREE_RUNS), "csv"))))
    assert len(rows) == 1
    row = rows[0]
    assert row["method"] == "featurenorm" and row["n"] == "3"
    assert float(row["svhn_auroc_mean"]) == 92.0 and float(row["svhn_auroc_std"]) == 2.0
    assert float(row["svhn_fpr95_std"]) == pytest.approx(3.6056, abs=1e-4)
    assert float(row["average_fpr95_mean"]) == 19.0
    with pytest.raises(UserError, match="use md or csv"):
        format_summary(summarize_results(THREE_RUNS), "tex")


def test_warns_when_arch_or_id_dataset_differ():
    summary = summarize_results([run(0.1, 0.9), run(0.1, 0.9, arch="vgg11", id_dataset="cifar100")],
                                names=["a.json", "b.json"])
    assert summary.archs == ["resnet18", "vgg11"]
    assert any("differ in arch (a.json: resnet18, b.json: vgg11)" in w for w in summary.warnings)
    assert any("differ in id_dataset" in w for w in summary.warnings)


def test_differing_ood_sets_keep_the_common_ones():
    other = run(0.20, 0.80)
    other["methods"]["featurenorm"]["lsun"] = other["methods"]["featurenorm"].pop("textures")
    summary = summarize_results([run(0.10, 0.90), other])
    assert summary.datasets == ["svhn"]
    assert summary.warnings == ["runs differ in their OOD sets; summarizing only the 1 sets common to all runs "
                                "(svhn); left out: lsun, textures"]
    # average over svhn only: 10 and 20 -> 15 ± 7.07
    average = summary.methods["featurenorm"].stats["average"]["fpr95"]
    assert (average.mean, average.std) == pytest.approx((15.0, 50 ** 0.5))


def test_method_missing_from_a_run_uses_fewer_runs():
    msp = {"msp": {"svhn": {"fpr95": 0.5, "auroc": 0.9}, "textures": {"fpr95": 0.6, "auroc": 0.8}}}
    summary = summarize_results([run(0.1, 0.9, extra_methods=msp), run(0.1, 0.9)])
    assert list(summary.methods) == ["featurenorm", "msp"]
    assert summary.methods["msp"].n == 1
    assert summary.methods["msp"].stats["textures"]["fpr95"] == MeanStd(pytest.approx(60.0), 0.0, 1)
    assert any("msp (1 of 2)" in w for w in summary.warnings)


def test_load_results_files_errors(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(run(0.1, 0.9)))
    assert load_results_files([good])[0]["arch"] == "resnet18"
    with pytest.raises(UserError, match="missing.json not found"):
        load_results_files([good, tmp_path / "missing.json"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read results file .*bad.json"):
        load_results_files([bad])
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(UserError, match="no 'methods' table"):
        load_results_files([empty])
    with pytest.raises(UserError, match="no results files"):
        load_results_files([])
