"""The paper's numbers (package data) and the ours-vs-paper comparison."""
from __future__ import annotations

import copy

import pytest

from featurenorm.errors import UserError
from featurenorm.reporting.paper import (
    PaperBlock,
    compare_with_paper,
    format_comparison,
    _check_arch,
    load_paper_results,
    paper_selected_block,
)

PAPER_SETS = ["svhn", "textures", "lsun", "lsun-resize", "isun", "places365"]


def metrics(fpr95: float, auroc: float) -> dict:
    return {"fpr95": fpr95, "auroc": auroc, "aupr_in": 0.5, "aupr_out": 0.5, "num_ood": 100}


def resnet18_results() -> dict:
    """Crafted ood_results.json: featurenorm on the six paper sets (+ cifar100), msp on svhn only."""
    featurenorm = {
        "svhn": metrics(0.1000, 0.9700), "textures": metrics(0.3000, 0.9300), "lsun": metrics(0.0100, 0.9990),
        "lsun-resize": metrics(0.2500, 0.9500), "isun": metrics(0.2600, 0.9550),
        "places365": metrics(0.6000, 0.8500), "cifar100": metrics(0.5000, 0.8000),
        "average": {"fpr95": 0.0, "auroc": 0.0},  # deliberately wrong: the comparison re-averages
    }
    return {
        "id_dataset": "cifar10", "arch": "resnet18", "id_accuracy": 0.95, "num_id": 10000, "seed": 0,
        "block": {"name": "layer4.0", "index": 6, "source": "block_selection.json"},
        "methods": {"featurenorm": featurenorm,
                    "msp": {"svhn": metrics(0.5000, 0.9000), "average": metrics(0.5, 0.9)},
                    "react": {"svhn": metrics(0.3, 0.9), "average": metrics(0.3, 0.9)}},
    }


def paper_fpr95_auroc(arch: str, method: str, dataset: str) -> tuple[float, float] | None:
    """One cell of the paper's CIFAR-10 table, (FPR95, AUROC) in percent; None when the paper lacks it."""
    paper = load_paper_results()
    _check_arch(arch, paper)
    cell = paper["fpr95_auroc"][arch].get(method, {}).get(dataset)
    return None if cell is None else (float(cell[0]), float(cell[1]))


def rows_by_key(comparison) -> dict:
    return {(r.method, r.dataset): r for r in comparison.rows}


def test_package_data_keeps_source_and_numbers():
    paper = load_paper_results()
    assert paper["source"].startswith("Yu et al., Block Selection Method for Using Feature Norm")
    assert list(paper["fpr95_auroc"]) == ["resnet18", "wrn28_10", "vgg11"]
    assert paper["fpr95_auroc"]["resnet18"]["featurenorm"]["svhn"] == [7.13, 98.65]
    # A fresh copy each call: editing one cannot corrupt later lookups.
    paper["fpr95_auroc"]["resnet18"]["featurenorm"]["svhn"] = [0, 0]
    assert paper_fpr95_auroc("resnet18", "featurenorm", "svhn") == (7.13, 98.65)


@pytest.mark.parametrize("arch", ["resnet18", "wrn28_10", "vgg11"])
def test_paper_averages_are_the_mean_of_its_six_sets(arch):
    # Integrity of the transcribed table: the printed average is the mean of the printed cells.
    for method, cells in load_paper_results()["fpr95_auroc"][arch].items():
        for k in (0, 1):
            mean = sum(cells[d][k] for d in PAPER_SETS) / 6
            assert abs(mean - cells["average"][k]) <= 0.011, (arch, method, k)


def test_paper_fpr95_auroc_lookup():
    assert paper_fpr95_auroc("wrn28_10", "energy_react", "average") == (86.22, 65.78)
    assert paper_fpr95_auroc("vgg11", "featurenorm", "places365") == (65.25, 85.20)
    assert paper_fpr95_auroc("resnet18", "react", "svhn") is None
    assert paper_fpr95_auroc("resnet18", "msp", "cifar100") is None
    with pytest.raises(UserError, match="resnet18, wrn28_10, vgg11"):
        paper_fpr95_auroc("resnet50", "msp", "svhn")


def test_paper_selected_blocks_match_our_block_names():
    from featurenorm.models import block_names, build_model

    assert paper_selected_block("resnet18") == PaperBlock("layer4.0", 6, 8)
    assert paper_selected_block("wrn28_10").index == 10
    assert paper_selected_block("vgg11") == PaperBlock("6th of 8 conv layers", 5, 8)
    expected = {"resnet18": "layer4.0", "wrn28_10": "block3.2", "vgg11": "features.14"}
    for arch, name in expected.items():
        ours = block_names(build_model(arch, 10, width=0.125))
        block = paper_selected_block(arch)
        assert len(ours) == block.num_blocks
        assert ours[block.index] == name


def test_compare_with_paper_differences_are_hand_values():
    comparison = compare_with_paper(resnet18_results())
    rows = rows_by_key(comparison)
    # (ours fpr95 %, paper, diff, ours auroc %, paper, diff)
    expected = {
        "svhn": (10.00, 7.13, 2.87, 97.00, 98.65, -1.65),
        "textures": (30.00, 31.18, -1.18, 93.00, 92.31, 0.69),
        "lsun": (1.00, 0.07, 0.93, 99.90, 99.96, -0.06),
        "lsun-resize": (25.00, 27.08, -2.08, 95.00, 95.25, -0.25),
        "isun": (26.00, 26.02, -0.02, 95.50, 95.38, 0.12),
        "places365": (60.00, 62.54, -2.54, 85.00, 84.62, 0.38),
        # ours: mean of the six sets (152/6 = 25.33, 565.4/6 = 94.23); paper: its printed average
        "average": (25.33, 25.67, -0.34, 94.23, 94.36, -0.13),
    }
    for dataset, values in expected.items():
        r = rows[("featurenorm", dataset)]
        got = (r.ours_fpr95, r.paper_fpr95, r.fpr95_diff, r.ours_auroc, r.paper_auroc, r.auroc_diff)
        assert got == pytest.approx(values, abs=1e-9), dataset
    assert [r.dataset for r in comparison.rows if r.method == "featurenorm"] == PAPER_SETS + ["average"]
    assert "featurenorm" not in comparison.partial_average


def test_compare_with_paper_lists_what_is_missing_on_either_side():
    comparison = compare_with_paper(resnet18_results())
    assert comparison.methods_not_in_paper == ["react"]
    assert comparison.methods_not_evaluated == ["odin", "energy", "energy_react", "energy_dice"]
    assert comparison.datasets_not_in_paper == {"featurenorm": ["cifar100"]}
    assert comparison.datasets_not_evaluated == {"msp": PAPER_SETS[1:]}
    # msp has svhn only: its average is svhn on both sides, flagged as partial.
    average = rows_by_key(comparison)[("msp", "average")]
    assert (average.ours_fpr95, average.paper_fpr95, average.fpr95_diff) == pytest.approx((50.0, 52.12, -2.12))
    assert (average.ours_auroc, average.paper_auroc, average.auroc_diff) == pytest.approx((90.0, 92.20, -2.20))
    assert comparison.partial_average == {"msp": ["svhn"]}


def test_partial_average_reaverages_the_paper_cells():
    results = resnet18_results()
    del results["methods"]["featurenorm"]["places365"]
    average = rows_by_key(compare_with_paper(results))[("featurenorm", "average")]
    # paper FPR95 over the five sets: (7.13 + 31.18 + 0.07 + 27.08 + 26.02) / 5 = 18.296 -> 18.30
    assert average.paper_fpr95 == pytest.approx(18.30)
    assert average.ours_fpr95 == pytest.approx(18.40)  # (10 + 30 + 1 + 25 + 26) / 5
    assert average.fpr95_diff == pytest.approx(0.10)


def test_block_comparison_line():
    assert compare_with_paper(resnet18_results()).block_line == (
        "selected block: ours layer4.0 (index 6); paper index 6 of 8 (layer4.0): same block")
    results = resnet18_results()
    results["block"] = {"name": "layer4.1", "index": 7}
    assert compare_with_paper(results).block_line.endswith("differs by +1 block(s)")
    del results["block"]
    assert compare_with_paper(results).block_line.startswith("selected block: ours not recorded")


def test_arch_override_and_unknown_arch():
    results = resnet18_results()
    vgg = compare_with_paper(results, arch="vgg11")
    svhn = rows_by_key(vgg)[("featurenorm", "svhn")]
    assert (svhn.paper_fpr95, svhn.fpr95_diff) == pytest.approx((8.84, 1.16))
    assert vgg.block_line.endswith("paper index 5 of 8 (6th of 8 conv layers): differs by +1 block(s)")
    results["arch"] = "densenet100"
    with pytest.raises(UserError, match="no numbers for arch 'densenet100'.*resnet18, wrn28_10, vgg11"):
        compare_with_paper(results)
    with pytest.raises(UserError, match="no numeric 'auroc'"):
        broken = copy.deepcopy(resnet18_results())
        del broken["methods"]["featurenorm"]["svhn"]["auroc"]
        compare_with_paper(broken)


def test_format_comparison_md_and_text():
    comparison = compare_with_paper(resnet18_results())
    md = format_comparison(comparison, "md").splitlines()
    assert "| featurenorm | svhn | 10.00 | 7.13 | +2.87 | 97.00 | 98.65 | -1.65 |" in md
    assert "| featurenorm | average | 25.33 | 25.67 | -0.34 | 94.23 | 94.36 | -0.13 |" in md
    text = format_comparison(comparison, "text").splitlines()
    svhn_line = next(line for line in text if line.startswith("featurenorm") and " svhn " in line)
    assert svhn_line.split() == ["featurenorm", "svhn", "10.00", "7.13", "+2.87", "97.00", "98.65", "-1.65"]
    assert "not in paper (methods): react" in text
    assert "not evaluated (methods): odin, energy, energy_react, energy_dice" in text
    assert "not in paper (featurenorm OOD sets): cifar100" in text
    assert text[-1] == comparison.block_line
    with pytest.raises(UserError, match="use text or md"):
        format_comparison(comparison, "html")


def test_results_for_other_id_data_warn_that_they_are_not_comparable():
    import warnings

    from featurenorm.reporting.paper import compare_with_paper

    results = {"id_dataset": "digits", "arch": "resnet18",
               "methods": {"msp": {"svhn": {"fpr95": 0.5, "auroc": 0.9}, "average": {"fpr95": 0.5, "auroc": 0.9}}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_with_paper(results)
    assert any("not comparable" in str(w.message) for w in caught)
    assert [(r.method, r.dataset) for r in comparison.rows][0] == ("msp", "svhn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_with_paper({**results, "id_dataset": "cifar10"})  # no warning for CIFAR-10
