"""The quick start end to end on a smaller setting, through the same script and code path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quickstart(save_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/quickstart.py", "--no-progress", "--ood-count", "16", "--set", f"save_path={save_path}",
         "--set", "epochs=1", "--set", "width=0.0625", "--set", "milestones=[1]", "--set", "device=cpu",
         "--set", "selection_samples=300", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_quickstart_runs_the_chain_then_reuses_it(tmp_path):
    done = quickstart(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("last.pt", "train_log.jsonl", "config.json", "block_selection.json", "norm_ratio.png",
                 "ood_results.json", "ood_results.md", "ood_results.csv", "scores.npz", "feature_norm_hist.png",
                 "norm_ratio_vs_auroc.png"):
        assert (tmp_path / name).is_file(), name
    results = json.loads((tmp_path / "ood_results.json").read_text())
    assert set(results["methods"]["featurenorm"]) == {"photos", "letters", "gaussian_noise", "uniform_noise", "average"}
    assert results["methods"]["featurenorm"]["photos"]["num_ood"] == 16
    selection = json.loads((tmp_path / "block_selection.json").read_text())
    # the three things it ends with: the NormRatio table, the OOD table, the plot paths
    assert "NormRatio" in done.stdout and "* " in done.stdout and selection["selected"]["name"] in done.stdout
    assert "| featurenorm |" in done.stdout and "| msp |" in done.stdout
    assert str(tmp_path / "norm_ratio_vs_auroc.png") in done.stdout and "(missing)" not in done.stdout
    # the oracle gap, in the JSON and printed: best block in hindsight, its AUROC, the selected block's, the gap
    oracle = results["oracle"]
    per_block = {block: metrics["average"]["auroc"] for block, metrics in results["per_block"].items()}
    assert oracle["best_auroc"] == max(per_block.values()) == per_block[oracle["best_block"]]
    assert oracle["selected_block"] == selection["selected"]["name"]
    assert oracle["difference"] == oracle["best_auroc"] - per_block[oracle["selected_block"]]
    assert (f"oracle gap: best block {oracle['best_block']} {100 * oracle['best_auroc']:.2f}, selected block "
            f"{oracle['selected_block']} {100 * oracle['selected_auroc']:.2f}, difference "
            f"{100 * oracle['difference']:.2f} AUROC points") in done.stdout
    # conf/digits.json measures every pseudo-OOD kind: the per-kind table is printed
    assert selection["pseudo_ood"] == ["jigsaw", "pixel_shuffle", "noise", "mixup", "blur"]
    assert "per pseudo-OOD kind" in done.stdout

    again = quickstart(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing") == 3
    assert json.loads((tmp_path / "ood_results.json").read_text()) == results

    # other OOD sets: training and selection are reused, the evaluation is redone
    changed = quickstart(tmp_path, "--ood-count", "12")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert changed.stdout.count("reusing") == 2
    assert json.loads((tmp_path / "ood_results.json").read_text())["methods"]["msp"]["photos"]["num_ood"] == 12

    fresh = quickstart(tmp_path, "--fresh")
    assert fresh.returncode == 0 and "reusing" not in fresh.stdout
