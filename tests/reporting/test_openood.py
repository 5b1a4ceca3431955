"""featurenorm.reporting.openood and scripts/compare_openood.py: our results beside OpenOOD's leaderboard."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from featurenorm.errors import UserError
from featurenorm.reporting.openood import compare_with_openood, load_openood_leaderboard, rank_against

REPO = Path(__file__).resolve().parents[2]
GROUPS = {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "texture", "places365"]}
# three checkpoints: near and far AUROC (fractions) of featurenorm and msp
FEATURENORM = [(0.9101, 0.93), (0.9155, 0.94), (0.9122, 0.95)]
MSP = [(0.8800, 0.905), (0.8812, 0.905), (0.8790, 0.905)]


def write_results(path: Path, featurenorm: tuple[float, float], msp: tuple[float, float], **overrides) -> str:
    results = {"benchmark": "openood_v1.5", "id_dataset": "cifar10", "arch": "resnet18", "groups": GROUPS,
               "methods": {"featurenorm": {"near": {"auroc": featurenorm[0]}, "far": {"auroc": featurenorm[1]}},
                           "msp": {"near": {"auroc": msp[0]}, "far": {"auroc": msp[1]}}}}
    results.update(overrides)
    path.write_text(json.dumps(results))
    return str(path)


def crafted(tmp_path: Path, **overrides) -> list[str]:
    return [write_results(tmp_path / f"s{i}.json", fn, msp, **overrides)
            for i, (fn, msp) in enumerate(zip(FEATURENORM, MSP))]


def run_compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare_openood.py"), *args], capture_output=True,
                          text=True, cwd="/", timeout=60)


def test_leaderboard_is_package_data_with_its_source():
    board = load_openood_leaderboard()
    assert "zjysteven.github.io/OpenOOD" in board["source"] and "2306.09301" in board["source"]
    published = {m["name"]: (m["near_auroc"], m["far_auroc"]) for m in board["methods"]}
    # the figures
    assert {k: published[k] for k in ("KNN", "VIM", "MSP", "EBO", "ReAct", "ASH", "DICE", "MDS", "fDBD", "NAC")} == {
        "KNN": (90.64, 92.96), "VIM": (88.68, 93.48), "MSP": (88.03, 90.73), "EBO": (87.58, 91.21),
        "ReAct": (87.11, 90.42), "ASH": (75.27, 78.49), "DICE": (78.34, 84.23), "MDS": (84.20, 89.72),
        "fDBD": (90.42, 93.16), "NAC": (90.93, 94.60)}
    nears = [m["near_auroc"] for m in board["methods"]]
    assert nears == sorted(nears, reverse=True)  # the leaderboard's order


def test_rank_against_counts_strictly_better():
    assert rank_against(91.0, [90.0, 92.0, 91.0]) == 2  # a tie shares the better rank
    assert rank_against(99.0, [90.0, 92.0]) == 1
    assert rank_against(10.0, [90.0, 92.0]) == 3


def test_mean_std_and_ranks_by_hand(tmp_path):
    comparison = compare_with_openood([json.loads(Path(p).read_text()) for p in crafted(tmp_path)])
    fn = next(row for row in comparison.ours if row.method == "featurenorm")
    # near 91.01, 91.55, 91.22: mean 91.26; deviations -0.25, 0.29, -0.04; population std sqrt(0.1482 / 3)
    assert fn.near.mean == pytest.approx(91.26, abs=1e-9)
    assert fn.near.std == pytest.approx(math.sqrt(0.1482 / 3), abs=1e-9)
    # far 93, 94, 95: mean 94, std sqrt(2 / 3)
    assert (fn.far.mean, fn.far.std) == (pytest.approx(94.0), pytest.approx(math.sqrt(2 / 3)))
    # 91.26 beats every published near AUROC (best: CombOOD 91.13); far: CombOOD 94.65 and NAC 94.60 are above
    assert (fn.near_rank, fn.far_rank) == (1, 3)
    msp = next(row for row in comparison.ours if row.method == "msp")
    assert msp.counterpart.name == "MSP" and msp.near.mean == pytest.approx(88.0066666666, abs=1e-6)
    assert comparison.highlight == "featurenorm" and comparison.warnings == []


def test_compare_script_prints_the_leaderboard_beside_ours(tmp_path):
    out = run_compare(*crafted(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = {line.split("  ")[0].strip(): line.split() for line in lines if "AUROC" not in line}
    assert rows["featurenorm (ours)"][2:] == ["91.26", "±", "0.22", "94.00", "±", "0.82", "1", "3"]
    assert rows["MSP"][1:] == ["88.03", "±", "0.25", "90.73", "±", "0.43", "13", "16"]
    assert rows["NAC"][1:] == ["90.93", "94.60", "2", "2"]
    # our rows sit in near-AUROC order among the published ones
    order = [line.split("  ")[0].strip() for line in lines]
    assert order.index("featurenorm (ours)") < order.index("CombOOD") < order.index("MSP") < order.index("msp (ours)")
    assert ("featurenorm ranks 1 of 31 by near-OOD AUROC and 3 of 31 by far-OOD AUROC "
            "(the 30 published methods and featurenorm)") in lines
    # msp beside MSP: 88.01 - 88.03 and 90.50 - 90.73
    assert next(line.split() for line in lines if line.startswith("msp ") and "(ours)" not in line) == [
        "msp", "MSP", "88.01", "88.03", "-0.02", "90.50", "90.73", "-0.23"]


def test_compare_refuses_other_benchmarks_and_warns_on_partial_groups(tmp_path):
    out = run_compare(write_results(tmp_path / "paper.json", FEATURENORM[0], MSP[0], benchmark="paper"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert "results of benchmark 'paper', not openood_v1.5; run eval_ood.py --benchmark openood_v1.5" in out.stderr
    partial = {"near": ["cifar100"], "far": GROUPS["far"]}
    out = run_compare(write_results(tmp_path / "p.json", FEATURENORM[0], MSP[0], groups=partial, arch="vgg11"))
    assert out.returncode == 0
    assert "warning: " + str(tmp_path / "p.json") + ": near-OOD average lacks tin" in out.stderr
    assert "arch 'vgg11'" in out.stderr
    with pytest.raises(UserError, match="no results given"):
        compare_with_openood([])
