"""Tests for featurenorm.reporting.tables and featurenorm.reporting.plots: tables agree with the JSON, files are atomic, PNGs are real."""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from featurenorm.reporting import plots
from featurenorm.selection import plot as selection_plot
from featurenorm.core.block_rows import BlockRow, KindFigures, SelectedBlock
from featurenorm.reporting import tables as report
from featurenorm.errors import UserError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SETS = ["svhn", "textures"]


def _metrics(fpr95: float, auroc: float, aupr_in: float, aupr_out: float, num_ood: int | None = None) -> dict:
    out = {"fpr95": fpr95, "auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out}
    if num_ood is not None:
        out["num_ood"] = num_ood
    return out


@pytest.fixture
def results() -> dict:
    """Two methods, two OOD sets, hand-chosen numbers (averages are the means of the two sets)."""
    return {
        "id_dataset": "cifar10", "arch": "resnet18", "id_accuracy": 0.9512, "num_id": 10000,
        "checkpoint": "runs/x/last.pt", "seed": 0,
        "block": {"name": "layer4.0", "index": 6, "source": "block_selection.json"},
        "convention": "ID positive; FPR95 = fraction of OOD accepted at 95% ID acceptance",
        "skipped": {"places365": "path ./places365 not found"},
        "unreadable": {"textures": 0},
        "methods": {
            "featurenorm": {
                "svhn": _metrics(0.07, 0.98, 0.97, 0.99, 26032),
                "textures": _metrics(0.1234, 0.95, 0.9, 0.96, 5640),
                "average": _metrics(0.0967, 0.965, 0.935, 0.975),
            },
            "msp": {
                "svhn": _metrics(0.5, 0.9, 0.88, 0.91, 26032),
                "textures": _metrics(0.6, 0.9, 0.86, 0.93, 5640),
                "average": _metrics(0.55, 0.9, 0.87, 0.92),
            },
        },
    }


def _markdown_table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]  # skip the alignment row


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------

def test_to_percent_rounds_to_two_decimals_and_maps_missing_to_none():
    assert report.to_percent(0.07) == 7.0
    assert report.to_percent(0.1234) == 12.34
    assert report.to_percent(1) == 100.0
    assert report.to_percent(None) is None
    assert report.to_percent(float("nan")) is None


def test_ood_set_names_keep_first_appearance_order_and_drop_average(results):
    results["methods"]["msp"]["lsun"] = _metrics(0.3, 0.8, 0.7, 0.9)
    assert report.ood_set_names(results) == ["svhn", "textures", "lsun"]


def test_hist_grid_shape_and_shared_bins():
    assert plots.hist_grid_shape(1) == (1, 1)
    assert plots.hist_grid_shape(0) == (1, 1)
    assert plots.hist_grid_shape(3) == (1, 3)
    assert plots.hist_grid_shape(4) == (2, 3)
    assert plots.hist_grid_shape(7) == (3, 3)
    edges = plots.shared_bin_edges([np.array([1.0, 2.0, np.nan]), np.array([3.0, np.inf])], bins=4)
    np.testing.assert_allclose(edges, [1.0, 1.5, 2.0, 2.5, 3.0])
    np.testing.assert_allclose(plots.shared_bin_edges([np.array([2.0, 2.0])], bins=2), [1.5, 2.0, 2.5])


def test_selected_position_by_name_then_index():
    names = ["layer1.0", "layer2.0", "layer3.0"]
    assert selection_plot.selected_position(names, SelectedBlock("layer3.0", 0)) == 2
    assert selection_plot.selected_position(names, SelectedBlock("renamed", 1)) == 1
    assert selection_plot.selected_position(names, SelectedBlock("renamed", 9)) is None
    assert selection_plot.selected_position(names, None) is None


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

def test_markdown_table_values_equal_json_in_percent(results):
    text = report.results_table(results, fmt="md")
    header, rows = _markdown_table_rows(text)
    assert header == ["Method", "svhn FPR95↓", "svhn AUROC↑", "textures FPR95↓", "textures AUROC↑",
                      "Average FPR95↓", "Average AUROC↑"]
    assert [row[0] for row in rows] == ["featurenorm", "msp"]
    keys = [("svhn", "fpr95"), ("svhn", "auroc"), ("textures", "fpr95"), ("textures", "auroc"),
            ("average", "fpr95"), ("average", "auroc")]
    for row in rows:
        per_set = results["methods"][row[0]]
        assert [float(cell) for cell in row[1:]] == [round(100 * per_set[s][m], 2) for s, m in keys]
    # Hand-computed: featurenorm row in percent.
    assert rows[0][1:] == ["7.00", "98.00", "12.34", "95.00", "9.67", "96.50"]

    first_line = text.splitlines()[0]
    for expected in ("cifar10", "resnet18", "layer4.0", "95.12%", "ID positive"):
        assert expected in first_line
    assert "places365 (path ./places365 not found)" in text


def test_csv_table_parses_with_dictreader_and_equals_json(results):
    text = report.results_table(results, fmt="csv")
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["method", "svhn_fpr95", "svhn_auroc", "textures_fpr95", "textures_auroc",
                                 "average_fpr95", "average_auroc"]
    rows = list(reader)
    assert [row["method"] for row in rows] == ["featurenorm", "msp"]
    for row in rows:
        per_set = results["methods"][row["method"]]
        for column, value in row.items():
            if column == "method":
                continue
            set_name, metric = column.rsplit("_", 1)
            assert float(value) == round(100 * per_set[set_name][metric], 2)
    assert rows[1]["average_fpr95"] == "55.00"


def test_missing_values_are_dash_in_markdown_and_empty_in_csv(results):
    del results["methods"]["msp"]["textures"]
    results["methods"]["msp"]["svhn"]["auroc"] = float("nan")
    _, rows = _markdown_table_rows(report.results_table(results, fmt="md"))
    assert rows[1] == ["msp", "50.00", "-", "-", "-", "55.00", "90.00"]
    csv_rows = list(csv.DictReader(io.StringIO(report.results_table(results, fmt="csv"))))
    assert csv_rows[1]["svhn_auroc"] == "" and csv_rows[1]["textures_fpr95"] == ""


def test_bad_inputs_raise_user_error(results):
    with pytest.raises(UserError, match="format"):
        report.results_table(results, fmt="html")
    with pytest.raises(UserError, match="methods"):
        report.results_table({"methods": {}})
    with pytest.raises(UserError, match="block rows"):
        selection_plot.plot_norm_ratio([], None, "unused.png")


def test_write_ood_results_round_trips(results, tmp_path):
    paths = report.write_ood_results(results, tmp_path / "run")
    assert paths == {kind: tmp_path / "run" / f"ood_results.{kind}" for kind in ("json", "md", "csv")}
    assert json.loads(paths["json"].read_text()) == results
    assert paths["md"].read_text() == report.results_table(results, fmt="md")
    assert paths["csv"].read_text() == report.results_table(results, fmt="csv")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ood_results.csv", "ood_results.json",
                                                                    "ood_results.md"]


def test_write_ood_results_converts_numpy_values(results, tmp_path):
    results["num_id"] = np.int64(10000)
    results["methods"]["msp"]["svhn"]["auroc"] = np.float32(0.5)
    loaded = json.loads(report.write_ood_results(results, tmp_path)["json"].read_text())
    assert loaded["num_id"] == 10000
    assert loaded["methods"]["msp"]["svhn"]["auroc"] == 0.5


def test_write_ood_results_failure_keeps_existing_files(results, tmp_path, monkeypatch):
    report.write_ood_results(results, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    changed = copy.deepcopy(results)
    changed["methods"]["msp"]["svhn"]["fpr95"] = 0.01

    def torn_write(self: Path, text: str, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:10])  # a partial write, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(OSError, match="disk full"):
        report.write_ood_results(changed, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------------------
# Summary text
# ---------------------------------------------------------------------------

def test_summary_text_numbers_and_best_mark(results):
    text = report.summary_text(results)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "avg", "FPR95", "avg", "AUROC", "avg", "AUPR-In",
                                "svhn", "AUROC", "textures", "AUROC"]
    assert lines[1].split() == ["featurenorm", "9.67", "96.50*", "93.50", "98.00", "95.00"]
    assert lines[2].split() == ["msp", "55.00", "90.00", "87.00", "90.00", "90.00"]
    assert text.count("*") == 2  # the mark and the footer's explanation of it
    # Fixed width: every table row is as long as the header.
    assert len({len(line) for line in lines[:3]}) == 1


def test_summary_text_marks_ties_and_omits_per_set_columns_beyond_six(results):
    results["methods"]["msp"]["average"]["auroc"] = 0.965
    for i in range(5):
        for per_set in results["methods"].values():
            per_set[f"extra{i}"] = _metrics(0.2, 0.8, 0.8, 0.8)
    lines = report.summary_text(results).splitlines()
    assert lines[0].split() == ["method", "avg", "FPR95", "avg", "AUROC", "avg", "AUPR-In"]
    assert lines[1].split()[2] == "96.50*" and lines[2].split()[2] == "96.50*"
    assert "7 OOD sets; per-set AUROC omitted" in lines[-1]


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------

def test_write_scores_npz_round_trips(tmp_path):
    scores = {"featurenorm.svhn": np.array([1.5, 2.5, 3.0], dtype=np.float32), "msp.id": np.arange(4.0)}
    path = report.write_scores_npz(scores, tmp_path / "scores.npz")
    assert path == tmp_path / "scores.npz"
    with np.load(path) as loaded:
        assert sorted(loaded.files) == ["featurenorm.svhn", "msp.id"]
        np.testing.assert_array_equal(loaded["featurenorm.svhn"], scores["featurenorm.svhn"])
        assert loaded["featurenorm.svhn"].dtype == np.float32
        np.testing.assert_array_equal(loaded["msp.id"], [0.0, 1.0, 2.0, 3.0])
    assert [p.name for p in tmp_path.iterdir()] == ["scores.npz"]  # no temp file left behind


def test_write_scores_npz_appends_suffix_like_numpy(tmp_path):
    path = report.write_scores_npz({"a.id": np.ones(2)}, tmp_path / "scores")
    assert path == tmp_path / "scores.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz"]
    with np.load(path) as loaded:
        np.testing.assert_array_equal(loaded["a.id"], [1.0, 1.0])


def test_write_scores_npz_failure_keeps_existing_file(tmp_path, monkeypatch):
    path = report.write_scores_npz({"old.id": np.zeros(3)}, tmp_path / "scores.npz")
    before = path.read_bytes()

    def torn_savez(file, **arrays):
        Path(file).write_bytes(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", torn_savez)
    with pytest.raises(OSError, match="disk full"):
        report.write_scores_npz({"new.id": np.ones(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.npz"]


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------

ROW_DICTS = [
    {"index": 0, "name": "layer1.0", "shape": [64, 32, 32], "norm_ratio": 1.02},
    {"index": 1, "name": "layer2.0", "shape": [128, 16, 16], "norm_ratio": 0.97},
    {"index": 2, "name": "layer3.0", "shape": [256, 8, 8], "norm_ratio": 1.31},
    {"index": 3, "name": "layer4.0", "shape": [512, 4, 4], "norm_ratio": 1.12},
]
BLOCK_ROWS = [BlockRow.from_dict(row) for row in ROW_DICTS]  # old rows: the jigsaw's NormRatio only
SELECTED = SelectedBlock("layer3.0", 2)


def _assert_png(path: Path, figsize: tuple[float, float]) -> None:
    """A PNG that matplotlib reads back at figsize * DPI pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = plt.imread(path)
    width, height = figsize
    assert image.shape[:2] == (round(height * selection_plot.DPI), round(width * selection_plot.DPI))
    assert image.shape[0] > 0 and image.shape[1] > 0
    assert plt.get_fignums() == []  # the figure was closed


def test_plot_norm_ratio_writes_png(tmp_path):
    path = selection_plot.plot_norm_ratio(BLOCK_ROWS, SELECTED, tmp_path / "plots" / "norm_ratio.png", title="t")
    assert path == tmp_path / "plots" / "norm_ratio.png"
    _assert_png(path, plots.bar_figure_size(4))


def test_plot_feature_norm_hist_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    ood = {"svhn": rng.normal(4.0, 1.0, 80), "textures": rng.normal(6.0, 1.0, 50),
           "lsun": rng.normal(5.0, 2.0, 30), "isun": np.array([5.0, np.nan, 6.0])}
    path = plots.plot_feature_norm_hist(rng.normal(8.0, 1.0, 100), ood, "layer4.0", tmp_path / "hist.png")
    _assert_png(path, plots.hist_figure_size(4))
    path = plots.plot_feature_norm_hist(np.array([1.0, 2.0]), {}, "layer4.0", tmp_path / "hist_id_only.png")
    _assert_png(path, plots.hist_figure_size(0))


def test_plot_norm_ratio_vs_auroc_writes_png(tmp_path):
    per_block = {row.name: {"svhn": _metrics(0.5, 0.6 + 0.1 * i, 0.5, 0.5),
                               "average": _metrics(0.5, 0.6 + 0.1 * i, 0.5, 0.5)}
                 for i, row in enumerate(BLOCK_ROWS[:3])}  # layer4.0 missing: a gap in the line
    path = plots.plot_norm_ratio_vs_auroc(BLOCK_ROWS, per_block, tmp_path / "ratio_auroc.png", selected=SELECTED)
    _assert_png(path, plots.bar_figure_size(4, panels=2))  # NormRatio vs AUROC above, the rankings below
    np.testing.assert_allclose(plots._per_block_auroc_percent([r.name for r in BLOCK_ROWS], per_block),
                               [60.0, 70.0, 80.0, np.nan])


KIND_ROWS = [BlockRow.from_dict({**row, "pseudo_ood": {
    "jigsaw": {"norm_ratio": row["norm_ratio"], "norm_mean": 1.0, "auroc": auroc},
    "blur": {"norm_ratio": 2.0, "norm_mean": 1.0, "auroc": blur}}})
    for row, auroc, blur in zip(ROW_DICTS, [0.6, 0.4, 0.9, 0.7], [0.95, 0.95, 0.5, None])]


def test_plots_with_several_kinds_show_each_kind(tmp_path):
    path = selection_plot.plot_norm_ratio(KIND_ROWS, SELECTED, tmp_path / "norm_ratio.png")
    _assert_png(path, plots.bar_figure_size(4, panels=2))  # a second panel: each kind's AUROC per block
    figures = selection_plot.kind_figures(KIND_ROWS, "auroc")
    assert list(figures) == ["jigsaw", "blur"]
    np.testing.assert_array_equal(figures["blur"], [0.95, 0.95, 0.5, np.nan])
    # rank 1 = largest; the tie shares 1.5; a missing value ranks last
    np.testing.assert_array_equal(plots._descending_ranks(figures["blur"]), [1.5, 1.5, 3.0, 4.0])
    np.testing.assert_array_equal(plots._descending_ranks(figures["jigsaw"]), [3.0, 4.0, 1.0, 2.0])
    per_block = {row.name: {"average": _metrics(0.5, 0.9 - 0.1 * i, 0.5, 0.5)} for i, row in enumerate(KIND_ROWS)}
    path = plots.plot_norm_ratio_vs_auroc(KIND_ROWS, per_block, tmp_path / "vs.png", selected=SELECTED)
    _assert_png(path, plots.bar_figure_size(4, panels=2))


def test_plot_failure_keeps_existing_png_and_closes_figure(tmp_path, monkeypatch):
    path = selection_plot.plot_norm_ratio(BLOCK_ROWS, SELECTED, tmp_path / "norm_ratio.png")
    before = path.read_bytes()

    def torn_savefig(self, fname, *args, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE + b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", torn_savefig)
    with pytest.raises(OSError, match="disk full"):
        selection_plot.plot_norm_ratio(BLOCK_ROWS, None, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["norm_ratio.png"]
    assert plt.get_fignums() == []


def test_per_block_text_lists_each_sets_auroc_and_marks_the_scored_block():
    results = {"block": {"name": "layer2.0"},
               "per_block": {"layer1.0": {"svhn": _metrics(0.5, 0.91234, 0.5, 0.5), "average": _metrics(0.5, 0.9, 0.5, 0.5)},
                             "layer2.0": {"svhn": _metrics(0.5, 0.5, 0.5, 0.5), "average": _metrics(0.5, 0.625, 0.5, 0.5)}}}
    assert report.per_block_text(results).splitlines() == ["block       svhn  average",
                                                            "layer1.0   91.23    90.00",
                                                            "layer2.0*  50.00    62.50"]
    assert report.per_block_text({"methods": {}}) == ""


def test_format_block_table_marks_selected_row():
    # summarize_blocks' rows of tests/selection/test_api.py's hand norms
    rows = [BlockRow(0, "a", (8, 4, 4), 3.0, {"jigsaw": KindFigures(1.5, 2.5, 0.625)}),
            BlockRow(1, "b", (16, 2, 2), 2.0, {"jigsaw": KindFigures(1.75, 1.5, 0.625)})]
    table = report.format_block_table(rows, SelectedBlock("b", 1))
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["index", "block", "shape", "id", "norm", "jigsaw", "norm", "NormRatio", "AUROC"]
    assert lines[2].split() == ["0", "a", "8x4x4", "3.0000", "2.5000", "1.5000", "0.6250"]
    assert lines[3].split() == ["*", "1", "b", "16x2x2", "2.0000", "1.5000", "1.7500", "0.6250"]
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width


def test_format_block_table_adds_a_per_kind_table(kind_rows):
    rows = kind_rows({"jigsaw": [0.9, 0.8], "noise": [0.5, 0.75]}, ratios=[1.5, 1.25])
    lines = report.format_block_table(rows, SelectedBlock("block1", 1)).splitlines()
    assert lines[5] == "per pseudo-OOD kind: NormRatio / AUROC of ID vs. that kind; mean rank by AUROC over the kinds"
    assert lines[6].split() == ["index", "block", "jigsaw", "noise", "mean", "rank"]
    assert lines[8].split() == ["0", "block0", "1.500", "/", "0.900", "1.000", "/", "0.500", "1.50"]
    assert lines[9].split() == ["*", "1", "block1", "1.250", "/", "0.800", "1.000", "/", "0.750", "1.50"]
