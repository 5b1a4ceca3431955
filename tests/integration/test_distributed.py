"""torchrun with two CPU processes (gloo): training, resuming, block selection and evaluation.

Every run is a real ``python -m torch.distributed.run --nproc_per_node=2`` subprocess. The
single-process baselines run the same scripts without torchrun, with the same thread count
(torchrun sets ``OMP_NUM_THREADS=1``), so the two differ only in the sharding.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from featurenorm.training.checkpoint import load_checkpoint, read_checkpoint
from featurenorm.data.splits import load_split
from featurenorm.data.loaders import make_loader
from featurenorm.training.loop import evaluate_accuracy

pytestmark = pytest.mark.integration  # two-process torchrun subprocesses (about 40 s)

REPO = Path(__file__).resolve().parents[2]
# Small enough for ~2 s of training; batch 32 and lr 0.05 give a test accuracy far from chance
# after one epoch, so that a wrong accuracy (e.g. from unsynced BatchNorm statistics) shows.
RECIPE = ["width=0.0625", "batch_size=32", "lr=0.05", "milestones=[1]", "device=cpu", "num_workers=0",
          "eval_batch_size=128"]
METHODS = "featurenorm,msp,energy,knn,mahalanobis"
RELATIVE_TOLERANCE = 1e-5
BLOCK = "layer3.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, save_path: Path, *args: str, nproc: int = 1, sets: tuple[str, ...] = ()
               ) -> subprocess.CompletedProcess:
    """``script --config conf/digits.json`` with :data:`RECIPE`, under torchrun when ``nproc`` > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    command = [*launcher, script, "--config", "conf/digits.json", "--no-progress"]
    for item in [*RECIPE, f"save_path={save_path}", *sets]:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def read_log(save_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (save_path / "train_log.jsonl").read_text().splitlines()]


def recomputed_accuracy(checkpoint: Path) -> float:
    model, cfg = load_checkpoint(checkpoint)
    loader = make_loader(cfg, load_split(cfg, train=False), train=False, device=torch.device("cpu"))
    return evaluate_accuracy(model, loader)


def assert_close_json(single: Any, distributed: Any, where: str = "") -> None:
    """Equal structure and values; floats equal up to :data:`RELATIVE_TOLERANCE` (relative)."""
    if isinstance(single, dict):
        assert isinstance(distributed, dict) and single.keys() == distributed.keys(), where
        for key in single:
            assert_close_json(single[key], distributed[key], f"{where}/{key}")
    elif isinstance(single, list):
        assert isinstance(distributed, list) and len(single) == len(distributed), where
        for i, (a, b) in enumerate(zip(single, distributed)):
            assert_close_json(a, b, f"{where}[{i}]")
    elif isinstance(single, float):
        assert math.isclose(single, distributed, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12), \
            f"{where}: {single} vs {distributed}"
    else:
        assert single == distributed, f"{where}: {single!r} vs {distributed!r}"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch trained by two torchrun processes; read-only for the tests."""
    save_path = tmp_path_factory.mktemp("ddp") / "run"
    run_script("train.py", save_path, nproc=2, sets=("epochs=1",))
    return save_path


@pytest.fixture(scope="module")
def ood_folders(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two OOD folders: odd counts (so shards differ in size), mixed sizes, one unreadable file on rank 1."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ood")
    rng = np.random.default_rng(0)
    specs = []
    for name, count, size in (("noise", 13, (32, 32)), ("small", 10, (20, 24))):
        folder = root / name
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        specs.append(f"{name}={folder}")
    # sorted position 3 of 'noise' (after 002.png): rank 1's shard, so rank 0 learns of it only by gathering
    (root / "noise" / "002x.png").write_text("not an image")
    return specs


def test_torchrun_training_writes_once_and_logs_the_true_accuracy(ddp_run):
    assert sorted(p.name for p in ddp_run.iterdir()) == ["config.json", "last.pt", "train_log.jsonl"]
    log = read_log(ddp_run)
    assert [entry["epoch"] for entry in log] == [1]  # rank 1 wrote nothing
    state = read_checkpoint(ddp_run / "last.pt")
    assert (state["epoch"], state["step"], state["finished"]) == (1, 0, True)
    assert state["metrics"] == log[0]
    # the logged accuracy (summed over both ranks' shards) is the saved model's accuracy; how high it is
    # after one tiny epoch depends on the CPU's arithmetic, so only the equality is asserted
    assert abs(recomputed_accuracy(ddp_run / "last.pt") - log[0]["test_acc"]) <= 1e-9
    # train metrics cover both ranks: 1437 images, so train_acc is a multiple of 1/1437
    assert abs(log[0]["train_acc"] * 1437 - round(log[0]["train_acc"] * 1437)) < 1e-6


def test_torchrun_resume_continues_to_the_next_epoch(ddp_run, tmp_path):
    save_path = tmp_path / "run"
    shutil.copytree(ddp_run, save_path)
    first = read_log(save_path)
    run_script("train.py", save_path, "--resume", nproc=2, sets=("epochs=2",))
    log = read_log(save_path)
    assert log[0] == first[0]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert log[1]["lr"] == pytest.approx(0.005)  # past the milestone: lr 0.05 * gamma 0.1
    state = read_checkpoint(save_path / "last.pt")
    assert (state["epoch"], state["finished"]) == (2, True)
    before = read_checkpoint(ddp_run / "last.pt")["model"]
    assert not torch.equal(state["model"]["head.weight"], before["head.weight"])
    assert abs(recomputed_accuracy(save_path / "last.pt") - log[1]["test_acc"]) <= 1e-9


def test_select_block_under_torchrun_matches_one_process(ddp_run, tmp_path):
    # the jigsaw alone: its puzzles are tied to each image; the other kinds are drawn per batch and per rank
    args = ("--checkpoint", str(ddp_run / "last.pt"), "--num-samples", "301", "--pseudo-ood", "jigsaw")
    run_script("select_block.py", tmp_path / "one", *args)
    run_script("select_block.py", tmp_path / "two", *args, nproc=2)
    single = json.loads((tmp_path / "one" / "block_selection.json").read_text())
    distributed = json.loads((tmp_path / "two" / "block_selection.json").read_text())
    assert single["num_samples"] == 301 and len(single["blocks"]) == 8
    assert_close_json(single, distributed)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["block_selection.json", "norm_ratio.png"]


def test_eval_ood_under_torchrun_matches_one_process(ddp_run, ood_folders, tmp_path):
    args = ["--checkpoint", str(ddp_run / "last.pt"), "--methods", METHODS, "--block", BLOCK, "--save-scores"]
    for spec in ood_folders:
        args += ["--ood", spec]
    run_script("eval_ood.py", tmp_path / "one", *args)
    run_script("eval_ood.py", tmp_path / "two", *args, nproc=2)
    single = json.loads((tmp_path / "one" / "ood_results.json").read_text())
    distributed = json.loads((tmp_path / "two" / "ood_results.json").read_text())
    assert single["unreadable"] == {"noise": 1, "small": 0}
    assert single["methods"]["knn"]["noise"]["num_ood"] == 13
    assert single["fit"] == {"knn": "fitted", "mahalanobis": "fitted"}
    assert_close_json(single, distributed)
    # per-image scores come back in file order, not in rank order
    one, two = np.load(tmp_path / "one" / "scores.npz"), np.load(tmp_path / "two" / "scores.npz")
    assert sorted(one.files) == sorted(two.files) and len(one.files) == 5 * 3
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=RELATIVE_TOLERANCE, atol=1e-7, err_msg=key)
