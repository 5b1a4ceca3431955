"""Tables over seeds (featurenorm/reporting/seed_tables.py), the MNIST-family scripts and the block-selection study
(featurenorm/reporting/block_study.py), on hand-made runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from featurenorm.reporting.block_study import evidence, model_row, recommend, run_study, spearman, without_sets
from featurenorm.errors import UserError
from featurenorm.reporting.seed_tables import block_table, choice_rows, choice_table, read_run, write_family_summary
from featurenorm.reporting.summary import format_summary, summarize_results
from featurenorm.runs.quickstart import criteria_gaps_text
from featurenorm.selection.api import BlockSelection

REPO = Path(__file__).resolve().parents[2]
BLOCKS = ("b0", "b1", "b2")


def selection(jigsaw_ratio, jigsaw_auroc, noise_auroc):
    rows = []
    for i, name in enumerate(BLOCKS):
        kinds = {"jigsaw": {"norm_ratio": jigsaw_ratio[i], "norm_mean": 1.0, "auroc": jigsaw_auroc[i]},
                 "noise": {"norm_ratio": 1.0, "norm_mean": 1.0, "auroc": noise_auroc[i]}}
        rows.append({"index": i, "name": name, "norm_ratio": jigsaw_ratio[i], "jigsaw_auroc": jigsaw_auroc[i],
                     "pseudo_ood": kinds})
    return {"blocks": rows, "selected": {"index": 0, "name": "b0"}, "criterion": "norm_ratio"}


def results(block_aurocs, accuracy, msp_auroc, sets=("a", "b")):
    """Two OOD sets; each block's average AUROC is the given value (the sets straddle it by 0.1)."""
    a, b = sets
    per_block = {name: {a: {"auroc": v - 0.1}, b: {"auroc": v + 0.1}, "average": {"auroc": v}}
                 for name, v in zip(BLOCKS, block_aurocs)}
    metrics = lambda auroc: {"fpr95": 1 - auroc, "auroc": auroc, "aupr_in": auroc, "aupr_out": auroc}  # noqa: E731
    methods = {"msp": {a: metrics(msp_auroc), b: metrics(msp_auroc + 0.1), "average": metrics(msp_auroc + 0.05)}}
    return {"id_dataset": "x", "arch": "resnet18", "id_accuracy": accuracy, "methods": methods,
            "per_block": per_block}


def write_run(folder: Path, sel, res) -> Path:
    folder.mkdir(parents=True)
    (folder / "block_selection.json").write_text(json.dumps(sel))
    (folder / "ood_results.json").write_text(json.dumps(res))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    # run 0: norm_ratio -> b2, auroc -> b1, mean_rank (average ranks 2, 1.5, 2.5) -> b1; real best b1
    first = write_run(tmp_path / "x_seed0", selection([0.9, 1.0, 1.1], [0.2, 0.7, 0.6], [0.8, 0.7, 0.1]),
                      results([0.60, 0.90, 0.70], 0.91, 0.5))
    # run 1: norm_ratio -> b0, auroc -> b2, mean_rank -> b2; real best b2
    second = write_run(tmp_path / "x_seed1", selection([1.3, 1.0, 1.1], [0.5, 0.4, 0.9], [0.3, 0.2, 0.8]),
                       results([0.80, 0.50, 0.95], 0.93, 0.7))
    return [read_run(first), read_run(second)]


def test_each_rule_picks_its_block_and_its_gap_is_best_minus_picked(two_runs):
    rows = {row.rule: row for row in choice_rows(two_runs)}
    assert rows["norm_ratio"].blocks == ["b2", "b0"]
    assert rows["auroc"].blocks == ["b1", "b2"]
    assert rows["mean_rank"].blocks == ["b1", "b2"]
    assert rows["last block"].blocks == ["b2", "b2"]
    assert rows["best block (hindsight)"].blocks == ["b1", "b2"]
    # norm_ratio: AUROCs 70 and 80 (percent), gaps 90-70 = 20 and 95-80 = 15
    assert rows["norm_ratio"].auroc.mean == pytest.approx(75.0)
    assert rows["norm_ratio"].auroc.std == pytest.approx(math.sqrt(50.0))  # sample std of (70, 80)
    assert rows["norm_ratio"].gap.mean == pytest.approx(17.5)
    assert rows["best block (hindsight)"].gap.mean == 0.0
    assert rows["last block"].gap.mean == pytest.approx((20.0 + 0.0) / 2)
    table = choice_table(choice_rows(two_runs))
    assert "| norm_ratio | b2, b0 | 75.00 ± 7.07 | 17.50 ± 3.54 |" in table
    assert "| last block | b2 ×2 | 82.50 ± 17.68 | 10.00 ± 14.14 |" in table


def test_block_table_is_the_mean_over_seeds_per_block(two_runs):
    lines = block_table(two_runs, primary="a").splitlines()
    assert lines[0] == "| block | NormRatio (jigsaw) | average AUROC (%) | a AUROC (%) | picked by norm_ratio |"
    # b0: NormRatio (0.9, 1.3) -> 1.100 ± 0.283; average AUROC (60, 80) -> 70 ± 14.14; on a (50, 70)
    assert lines[2] == "| b0 | 1.100 ± 0.283 | 70.00 ± 14.14 | 60.00 ± 14.14 | 1 of 2 |"
    assert lines[4] == "| b2 | 1.100 ± 0.000 | 82.50 ± 17.68 | 72.50 ± 17.68 | 1 of 2 |"


def test_runs_of_other_models_are_refused(two_runs, tmp_path):
    other = selection([1, 1, 1], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    other["blocks"][2]["name"] = "c2"
    odd = read_run(write_run(tmp_path / "odd", other, results([0.5, 0.5, 0.5], 0.9, 0.5)))
    with pytest.raises(UserError, match="other blocks"):
        block_table([two_runs[0], odd])


def test_a_run_without_per_block_says_to_rerun_with_all_blocks(tmp_path):
    res = results([0.5, 0.5, 0.5], 0.9, 0.5)
    del res["per_block"]
    folder = write_run(tmp_path / "r", selection([1, 1, 1], [0.5] * 3, [0.5] * 3), res)
    with pytest.raises(UserError, match="--all-blocks"):
        read_run(folder)
    with pytest.raises(UserError, match="block_selection.json not found"):
        read_run(tmp_path / "missing")


def test_summary_with_aupr_columns_is_mean_and_sample_std_in_percent(two_runs):
    summary = summarize_results([run.results for run in two_runs], metrics=("fpr95", "auroc", "aupr_in"))
    stats = summary.methods["msp"].stats
    assert stats["a"]["aupr_in"].mean == pytest.approx(60.0) and stats["a"]["aupr_in"].std == pytest.approx(
        math.sqrt(200.0))
    assert stats["average"]["fpr95"].mean == pytest.approx(100 - 65.0)  # per run: mean over a, b of 1 - auroc
    text = format_summary(summary)
    assert "FPR95 (lower is better), AUROC (higher is better) and AUPR-In (higher is better)" in text
    assert text.splitlines()[2].endswith("| average FPR95 | average AUROC | average AUPR-In |")
    with pytest.raises(ValueError, match="metrics must be some of"):
        summarize_results([run.results for run in two_runs], metrics=("accuracy",))


def test_family_summary_writes_both_directions(tmp_path):
    for id_name in ("fashion_mnist", "mnist"):
        for seed, auroc in ((0, 0.6), (1, 0.8)):
            primary = "mnist" if id_name == "fashion_mnist" else "fashion_mnist"
            res = results([auroc, 0.9, 0.7], 0.9 + seed / 100, 0.5, sets=(primary, "b"))
            write_run(tmp_path / "runs" / f"{id_name}_seed{seed}", selection([0.9, 1.0, 1.1], [0.2, 0.7, 0.6],
                                                                              [0.8, 0.7, 0.1]), res)
    (tmp_path / "runs" / "timing.tsv").write_text("train\tr0\t10\ntrain\tr1\t12\neval\tr0\t3\n")
    report = write_family_summary(tmp_path / "runs", tmp_path / "out")
    assert report["seconds"] == {"train": 22, "eval": 3}
    assert report["directions"]["mnist"]["test_accuracy"]["mean"] == pytest.approx(90.5)
    assert report["directions"]["fashion_mnist"]["block_auroc"]["b0"]["mean"] == pytest.approx(70.0)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "## Fashion-MNIST (ID) against mnist, b" in text and "## MNIST (ID) against fashion_mnist, b" in text
    assert (tmp_path / "out" / "mnist_norm_ratio_vs_auroc.png").stat().st_size > 0
    assert "| msp | 2 |" in (tmp_path / "out" / "fashion_mnist_methods.md").read_text()


def test_reproduce_mnist_family_dry_run_prints_the_chain():
    out = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_mnist_family.sh"), "--dry-run", "--seeds", "4",
                          "--data", "/d"], capture_output=True, text=True, check=True).stdout
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    assert len(commands) == 1 + 2 * 3 + 1
    assert "train.py --config conf/fashion_mnist.json --set save_path=runs/mnist_family/fashion_mnist_seed4" \
           in commands[1]
    assert "--set id_dataset=/d/fashion-mnist --set mnist=/d/mnist" in commands[1]
    assert "--set id_dataset=/d/mnist --set fashion_mnist=/d/fashion-mnist" in commands[4]
    assert "--methods all --all-blocks --ood photos=runs/mnist_family/extra_ood/photos" in commands[3]
    assert commands[-1].endswith("scripts/summarize_mnist_family.py runs/mnist_family --out results/mnist_family")


def test_reproduce_mnist_family_without_data_says_where_to_put_it(tmp_path):
    done = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_mnist_family.sh"), "--data", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and f"{tmp_path}/mnist not found" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_make_synthetic_ood_writes_the_four_sets(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic_ood.py"), str(tmp_path),
                           "--count", "3", "--image-size", "8"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [f"{name}={tmp_path / name}" for name in
                                   ("photos", "letters", "gaussian_noise", "uniform_noise")]
    assert len(list((tmp_path / "photos").glob("*.png"))) == 3

def test_spearman_hand_numbers_ties_and_constants():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) against (1.5, 1.5, 3): Pearson of the ranks = 0.8660...
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, float("nan"), 2], [1, 2, 3]))


@pytest.fixture
def study_runs(two_runs, tmp_path):
    """The two runs above as development models, and one held-out model."""
    # held-out: the jigsaw's AUROC prefers b0 (0.9), the real sets b2 (90 %)
    held = write_run(tmp_path / "held", selection([1.0, 1.2, 1.1], [0.9, 0.3, 0.4], [0.9, 0.1, 0.2]),
                     results([0.50, 0.55, 0.90], 0.9, 0.5))
    return two_runs[0].folder, two_runs[1].folder, held


def test_each_model_row_holds_picks_gaps_and_correlations(study_runs):
    row = model_row(read_run(study_runs[0]), "development")
    assert row.best_block == "b1" and row.best_auroc == pytest.approx(90.0)
    assert row.picks["norm_ratio"] == "b2" and row.gaps["norm_ratio"] == pytest.approx(20.0)
    assert row.picks["auroc"] == "b1" and row.gaps["auroc"] == 0.0
    assert row.last_block_gap == pytest.approx(20.0)
    # jigsaw AUROC (0.2, 0.7, 0.6) vs real (60, 90, 70): identical ranks -> 1; noise (0.8, 0.7, 0.1): ranks 3,2,1 vs 1,3,2
    assert row.correlations["jigsaw AUROC"] == pytest.approx(1.0)
    assert row.correlations["noise AUROC"] == pytest.approx(-0.5)
    assert list(evidence(read_run(study_runs[0]))) == ["jigsaw NormRatio", "jigsaw AUROC", "noise NormRatio",
                                                       "noise AUROC"]


def test_the_recommendation_uses_the_development_models_only(study_runs):
    dev = [model_row(read_run(f), "development") for f in study_runs[:2]]
    held = model_row(read_run(study_runs[2]), "held-out")
    # development mean gaps: norm_ratio 17.5, auroc 0, mean_rank (b1, b2) 0, mean_auroc (b1, b2) 0: auroc first
    assert recommend(dev + [held]) == "auroc"
    assert held.gaps["auroc"] == pytest.approx(40.0)  # picks b0 on the held-out model; the table reports it
    with pytest.raises(ValueError, match="no development models"):
        recommend([held])


def test_run_study_writes_tables_and_plot(study_runs, tmp_path):
    report = run_study(study_runs[:2], study_runs[2:], tmp_path / "out")
    assert report["recommended"] == "auroc"
    text = (tmp_path / "out" / "study.md").read_text()
    assert "| auroc (recommended) | 0.00 ± 0.00 | 40.00 ± 0.00 | 40.00 (held) |" in text
    assert "| norm_ratio | 17.50 ± 3.54 |" in text
    assert json.loads((tmp_path / "out" / "study.json").read_text())["models"][2]["part"] == "held-out"
    assert (tmp_path / "out" / "evidence.png").stat().st_size > 0 and (tmp_path / "out" / "gaps.png").stat().st_size > 0


def test_the_quick_start_line_gives_each_criterions_block_and_gap():
    rows = BlockSelection.from_dict(selection([0.9, 1.0, 1.1], [0.2, 0.7, 0.6], [0.8, 0.7, 0.1])).rows
    per_block = results([0.60, 0.90, 0.70], 0.9, 0.5)["per_block"]
    assert criteria_gaps_text(rows, per_block) == (
        "each criterion's block (points short of the best): norm_ratio b2 (20.00), auroc b1 (0.00), "
        "mean_rank b1 (0.00), mean_auroc b1 (0.00), min_auroc b1 (0.00)")


def _with_profile(folder: Path, auroc: float) -> Path:
    """Add a norm_profile (every-block method) result with average AUROC ``auroc`` to a run folder."""
    path = folder / "ood_results.json"
    res = json.loads(path.read_text())
    res["methods"]["norm_profile"] = {"a": {"auroc": auroc}, "average": {"auroc": auroc}}
    path.write_text(json.dumps(res))
    return folder


def test_a_method_that_reads_every_block_is_a_rule_with_no_block_and_can_beat_the_best(two_runs, study_runs,
                                                                                      tmp_path):
    # runs' best blocks: 90 % and 95 %; norm_profile 93 % and 96 %: gaps -3 and -1
    _with_profile(two_runs[0].folder, 0.93)
    _with_profile(two_runs[1].folder, 0.96)
    runs = [read_run(run.folder) for run in two_runs]
    rows = {row.rule: row for row in choice_rows(runs)}
    assert rows["norm_profile"].blocks == ["every block", "every block"]
    assert rows["norm_profile"].auroc.mean == pytest.approx(94.5) and rows["norm_profile"].gap.mean == \
        pytest.approx(-2.0)
    assert "| norm_profile | every block ×2 | 94.50 ± 2.12 | -2.00 ± 1.41 |" in choice_table(list(rows.values()))
    # only when every run has it
    assert "norm_profile" not in {row.rule for row in choice_rows([runs[0], read_run(study_runs[2])])}
    # the study: norm_profile's development gap (-2) is the smallest, so it is recommended; held-out 90 - 85 = 5
    _with_profile(study_runs[2], 0.85)
    report = run_study(study_runs[:2], study_runs[2:], tmp_path / "out")
    assert report["recommended"] == "norm_profile"
    assert report["models"][0]["picks"]["norm_profile"] == "every block"
    assert "| norm_profile (recommended) | -2.00 ± 1.41 | 5.00 ± 0.00 | 5.00 (held) |" in \
        (tmp_path / "out" / "study.md").read_text()


def test_the_quick_start_line_gives_the_every_block_methods_gap_after_the_criteria():
    rows = BlockSelection.from_dict(selection([0.9, 1.0, 1.1], [0.2, 0.7, 0.6], [0.8, 0.7, 0.1])).rows
    per_block = results([0.60, 0.90, 0.70], 0.9, 0.5)["per_block"]
    assert criteria_gaps_text(rows, per_block, {"norm_profile": 87.5}).endswith(
        "min_auroc b1 (0.00), norm_profile every block (2.50)")


def test_leaving_sets_out_recomputes_every_average_from_the_sets_kept(two_runs, tmp_path):
    run = two_runs[0]
    # per block: set a = average - 0.1, set b = average + 0.1; msp: a 0.5, b 0.6
    kept = without_sets(run, ["b"])
    assert [per_set["average"]["auroc"] for per_set in kept.results["per_block"].values()] == \
        pytest.approx([0.5, 0.8, 0.6])
    assert kept.results["methods"]["msp"]["average"]["auroc"] == pytest.approx(0.5)
    assert run.results["per_block"]["b0"]["average"]["auroc"] == pytest.approx(0.6)  # the run itself is unchanged
    with pytest.raises(ValueError, match="no OOD set is left"):
        without_sets(run, ["a", "b"])
    report = run_study([run.folder], [two_runs[1].folder], tmp_path / "out", without=["a"])
    assert report["without"]["sets"] == ["a"] and report["without"]["models"][0]["best_auroc"] == pytest.approx(100.0)
    assert "## Rules without a" in (tmp_path / "out" / "study.md").read_text()
