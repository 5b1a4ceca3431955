"""select_block.py on a tiny trained model: the JSON, the argmax, determinism, and NormRatio by hand."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featurenorm.training.checkpoint import load_checkpoint
from featurenorm.data.splits import load_split
from featurenorm.selection.jigsaw import apply_permutation, sample_permutations
from featurenorm.data.loaders import DeviceLoader
from featurenorm.core.tap import block_feature_norms
from featurenorm.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def cli_args(run_dir: Path, *args: str) -> list[str]:
    return ["--config", str(REPO / "conf" / "digits.json"), "--set", f"save_path={run_dir}", "--set", "width=0.0625",
            "--set", "device=cpu",
            # the jigsaw alone unless a test names more kinds: conf/digits.json measures all five
            "--set", 'pseudo_ood=["jigsaw"]', "--no-progress", *args]


def run_cli(run_dir: Path, *args: str, subprocess_run: bool = False):
    """select_block.py with these flags: in a new interpreter (the script itself), or its main in this process."""
    if subprocess_run:
        return subprocess.run([sys.executable, "select_block.py", *cli_args(run_dir, *args)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    import contextlib
    import io
    from types import SimpleNamespace

    from featurenorm.cli import select_main
    from featurenorm.errors import run_cli as run_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(select_main, cli_args(run_dir, *args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture()
def run_dir(trained_digits_run, tmp_path):
    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "last.pt")
    return tmp_path


def test_select_block_writes_json_and_plot_deterministically(run_dir):
    done = run_cli(run_dir, "--num-samples", "120", "--seed", "3", subprocess_run=True)
    assert done.returncode == 0, done.stderr
    first = (run_dir / "block_selection.json").read_bytes()
    result = json.loads(first)
    assert result["num_samples"] == 120 and result["grid"] == 3 and result["seed"] == 3
    assert result["criterion"] == "norm_ratio" and result["arch"] == "resnet18"
    names = [b["name"] for b in result["blocks"]]
    assert names == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    best = max(result["blocks"], key=lambda b: b["norm_ratio"])
    assert result["selected"] == {"index": best["index"], "name": best["name"]}
    assert result["blocks"][0]["shape"] == [4, 32, 32] and result["blocks"][-1]["shape"] == [32, 4, 4]
    assert (run_dir / "norm_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert best["name"] in done.stdout and "NormRatio" in done.stdout

    assert run_cli(run_dir, "--num-samples", "120", "--seed", "3").returncode == 0
    assert (run_dir / "block_selection.json").read_bytes() == first
    assert run_cli(run_dir, "--num-samples", "120", "--seed", "4").returncode == 0
    assert (run_dir / "block_selection.json").read_bytes() != first


def test_auroc_criterion_picks_the_argmax_auroc(run_dir):
    assert run_cli(run_dir, "--num-samples", "80", "--criterion", "auroc", "--grid", "2").returncode == 0
    result = json.loads((run_dir / "block_selection.json").read_text())
    best = max(result["blocks"], key=lambda b: b["jigsaw_auroc"])
    assert result["criterion"] == "auroc" and result["grid"] == 2
    assert result["selected"]["name"] == best["name"]


def test_norm_ratio_equals_a_direct_computation(run_dir, trained_digits_run):
    from featurenorm.runs.select import run_selection
    from dataclasses import replace

    cfg = replace(trained_digits_run.cfg, save_path=str(run_dir), eval_batch_size=37)
    result = run_selection(cfg, num_samples=50, seed=5, progress=False).to_dict()
    # the same subsample and puzzles, computed in one batch through block_feature_norms
    generator = torch.Generator().manual_seed(5)
    split = load_split(cfg, train=True)
    chosen = torch.randperm(len(split), generator=generator)[:50].sort().values
    permutations = sample_permutations(50, 32, 32, 3, generator)
    images = next(iter(DeviceLoader(split.images[chosen], split.labels[chosen], 50, train=False, mean=cfg.mean,
                                    std=cfg.std, device=torch.device("cpu"))))[0]
    puzzles = apply_permutation(images, permutations, 3)
    model, _ = load_checkpoint(run_dir / "last.pt")
    blocks = model.block_names
    id_norms = block_feature_norms(model, images, blocks)
    puzzle_norms = block_feature_norms(model, puzzles, blocks)
    for row in result["blocks"]:
        ratio = (id_norms[row["name"]].double() / puzzle_norms[row["name"]].double()).mean().item()
        assert row["norm_ratio"] == pytest.approx(ratio, rel=1e-5)
        assert row["id_norm_mean"] == pytest.approx(id_norms[row["name"]].mean().item(), rel=1e-5)


def test_channels_last_gives_the_same_selection(run_dir, trained_digits_run):
    from dataclasses import replace

    from featurenorm.runs.select import run_selection

    cfg = replace(trained_digits_run.cfg, save_path=str(run_dir))
    plain = run_selection(cfg, num_samples=40, progress=False).to_dict()
    channels_last = run_selection(replace(cfg, channels_last=True), num_samples=40, progress=False).to_dict()
    assert channels_last["selected"] == plain["selected"]
    for a, b in zip(plain["blocks"], channels_last["blocks"]):
        assert b["norm_ratio"] == pytest.approx(a["norm_ratio"], rel=1e-5)


KINDS = ["jigsaw", "pixel_shuffle", "noise", "mixup", "blur"]


def test_every_kind_per_block_and_the_mean_rank_criterion(run_dir):
    done = run_cli(run_dir, "--num-samples", "60", "--pseudo-ood", ",".join(KINDS), "--criterion", "mean_rank")
    assert done.returncode == 0, done.stderr
    result = json.loads((run_dir / "block_selection.json").read_text())
    assert result["pseudo_ood"] == KINDS and result["criterion"] == "mean_rank" and len(result["blocks"]) == 8
    for row in result["blocks"]:
        assert list(row["pseudo_ood"]) == KINDS
        assert row["pseudo_ood"]["jigsaw"] == {"norm_ratio": row["norm_ratio"], "norm_mean": row["jigsaw_norm_mean"],
                                               "auroc": row["jigsaw_auroc"]}
        assert all(0 <= figures["auroc"] <= 1 and figures["norm_ratio"] > 0 for figures in row["pseudo_ood"].values())

    def average_rank(row: dict) -> float:  # 1 + blocks ahead + half the blocks level with it, mean over kinds
        total = 0.0
        for kind in KINDS:
            mine = row["pseudo_ood"][kind]["auroc"]
            others = [b["pseudo_ood"][kind]["auroc"] for b in result["blocks"] if b is not row]
            total += 1 + sum(a > mine for a in others) + 0.5 * sum(a == mine for a in others)
        return total / len(KINDS)

    ranks = [average_rank(row) for row in result["blocks"]]
    best = result["blocks"][ranks.index(min(ranks))]
    assert result["selected"] == {"index": best["index"], "name": best["name"]}
    assert f"{min(ranks):.2f}" in done.stdout and "mean rank" in done.stdout

    # one warning line when the kinds' best blocks differ, naming each
    best_per_kind = {kind: max(result["blocks"], key=lambda b: b["pseudo_ood"][kind]["auroc"])["name"]
                     for kind in KINDS}
    disagreement = [line for line in done.stderr.splitlines() if "disagree" in line]
    assert len(disagreement) == (1 if len(set(best_per_kind.values())) > 1 else 0)
    if disagreement:
        assert disagreement[0].startswith("warning: the pseudo-OOD kinds disagree on the best block")
        assert all(f"{kind} {name}" in disagreement[0] for kind, name in best_per_kind.items())


def test_a_combined_criterion_needs_several_kinds(run_dir, capsys):
    from featurenorm.cli import select_main
    from featurenorm.errors import run_cli as run_in_process

    common = ["--config", str(REPO / "conf" / "digits.json"), "--set", f"save_path={run_dir}", "--no-progress"]
    assert run_in_process(select_main, common + ["--pseudo-ood", "jigsaw", "--criterion", "mean_rank"]) == 2
    assert capsys.readouterr().err == ("error: --pseudo-ood / pseudo_ood: criterion 'mean_rank' combines several "
                                       "pseudo-OOD kinds; list at least 2 (measured: jigsaw), e.g. "
                                       "jigsaw,pixel_shuffle,noise,mixup,blur\n")
    assert run_in_process(select_main, common + ["--pseudo-ood", "jigsaw,swirl"]) == 2
    assert "unknown pseudo-OOD kind 'swirl'" in capsys.readouterr().err
    assert run_in_process(select_main, common + ["--pseudo-ood", "noise,blur"]) == 2
    assert "must include jigsaw" in capsys.readouterr().err


def test_num_samples_below_one_is_refused(trained_digits_run):
    from featurenorm.runs.select import run_selection

    for bad in (0, -5):
        with pytest.raises(UserError, match="--num-samples must be at least 1"):
            run_selection(trained_digits_run.cfg, num_samples=bad, progress=False)
