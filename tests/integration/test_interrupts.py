"""Interrupted training resumes exactly: SIGINT/SIGTERM save the current step and exit 130/143,
SIGKILL loses only the unfinished epoch, and ``--resume`` then ends with the bitwise weights (and
the log) of an uninterrupted run on CPU with a fixed seed.

train.py runs as a subprocess, one thread each, so that the runs compared do the same float work.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featurenorm.training.loop import StopRequested, train

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# digits at width 0.0625, two epochs of 23 steps (1437 images / 64), random crops: the second epoch
# resumes mid-way through the augmentation stream and across the lr milestone
RECIPE = ["--config", "conf/digits.json", "--set", "width=0.0625", "--set", "epochs=2", "--set", "batch_size=64",
          "--set", "milestones=[1]", "--set", "crop_padding=2", "--set", "device=cpu", "--set", "num_workers=0"]
STEPS_PER_EPOCH = 23


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration]  # subprocess trainings, signals


def train_command(save_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *RECIPE, "--set", f"save_path={save_path}", *extra]


@pytest.fixture
def start_training():
    """``start_training(save_path, log) -> Popen``: train.py with progress bars on (they show where it
    is), stderr into ``log``. A process still running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(save_path: Path, log: Path) -> subprocess.Popen:
        with open(log, "w") as stderr:
            started.append(subprocess.Popen(train_command(save_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                            stderr=stderr))
        return started[-1]
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``log`` until it holds ``text``; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"train.py ended (status {proc.returncode}) before '{text}':\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no '{text}' after {timeout}s:\n{log.read_text()}"
        time.sleep(0.01)


def resume(save_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(save_path, "--resume", "--no-progress"), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def load(save_path: Path) -> dict:
    return torch.load(save_path / "last.pt", map_location="cpu", weights_only=True)


def log_lines(save_path: Path) -> list[dict]:
    """train_log.jsonl without the wall-clock seconds."""
    lines = [json.loads(line) for line in (save_path / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Bitwise equal weights, BatchNorm buffers and momentum; the same log and lr schedule."""
    a, b = load(resumed), load(reference)
    assert list(a["model"]) == list(b["model"])
    assert [name for name in a["model"] if not torch.equal(a["model"][name], b["model"][name])] == []
    momentum = [(x["momentum_buffer"], y["momentum_buffer"])
                for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
    assert len(momentum) == len(b["optimizer"]["state"]) > 0 and all(torch.equal(x, y) for x, y in momentum)
    assert (a["epoch"], a["step"], a["finished"], a["scheduler"]) == (2, 0, True, b["scheduler"])
    assert log_lines(resumed) == log_lines(reference)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run of :data:`RECIPE`."""
    save_path = tmp_path_factory.mktemp("interrupts") / "reference"
    out = subprocess.run(train_command(save_path, "--no-progress"), cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [line["epoch"] for line in log_lines(save_path)] == [1, 2]
    return save_path


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_the_step_and_resume_is_exact(reference_run, start_training, tmp_path, signum, status):
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = start_training(run, log)
    wait_for(log, "epoch 1/2", proc)  # the first epoch's bar: the loop has started
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == status
    name = signal.Signals(signum).name
    assert log.read_text().splitlines()[-1] == f"stopped by {name}; saved {run / 'last.pt'}; continue with --resume"
    assert "Traceback" not in log.read_text()
    state = load(run)
    # the step in progress was finished and saved, in the middle of epoch 1
    assert state["epoch"] == 0 and 0 < state["step"] < STEPS_PER_EPOCH and state["finished"] is False
    assert len(state["partial_epoch"]["losses"]) == state["step"]
    assert not (run / "train_log.jsonl").exists()

    out = resume(run)
    assert out.returncode == 0, out.stderr
    assert_same_run(run, reference_run)


def test_sigkill_mid_epoch_resumes_from_the_last_epoch_exactly(reference_run, start_training, tmp_path):
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = start_training(run, log)
    wait_for(log, "epoch 2/2", proc)  # epoch 1 is saved; epoch 2 has begun
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    state = load(run)
    assert (state["epoch"], state["step"], state["finished"]) == (1, 0, False)
    # a crash between appending epoch 2's log line and saving its checkpoint, with a torn line
    # after it, leaves lines that the resumed run must drop
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.005, "train_loss": 9.0, "train_acc": 0.0, "test_acc": 0.0, "seconds": 1}\n')
        f.write('{"epoch": 3, "lr"')
    out = resume(run)
    assert out.returncode == 0, out.stderr
    assert_same_run(run, reference_run)


# ----------------------------------------------------------------- in-process: the torch loader path
def signal_at_step(calls: int, signum: int = signal.SIGINT):
    """An SGD.step that sends this process ``signum`` on its ``calls``-th call (the engine's flag catches it)."""
    original = torch.optim.SGD.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)
    return step


def test_torch_loader_without_workers_resumes_mid_epoch_exactly(tmp_path, make_imagefolder, digits_config,
                                                                monkeypatch):
    """``"loader": "torch"``: torchvision's crops and flips draw from the global RNG; skipping the
    finished batches on resume must not shift that stream."""
    root = make_imagefolder(tmp_path / "pets", classes=("cat", "dog"), n_train=8, n_test=2, size=(16, 16))
    cfg = digits_config(tmp_path / "reference", id_dataset=str(root), num_classes=None, image_size=16,
                        loader="torch", batch_size=4, eval_batch_size=4, crop_padding=2, hflip=True, epochs=2,
                        milestones=[1])
    train(cfg, progress=False)
    interrupted = dataclasses.replace(cfg, save_path=str(tmp_path / "interrupted"))
    monkeypatch.setattr(torch.optim.SGD, "step", signal_at_step(6))  # epoch 2 (4 steps each), step 2
    with pytest.raises(StopRequested) as stop:
        train(interrupted, progress=False)
    assert stop.value.exit_code == 130
    monkeypatch.undo()
    assert (load(tmp_path / "interrupted")["epoch"], load(tmp_path / "interrupted")["step"]) == (1, 2)
    train(interrupted, resume=True, progress=False)
    assert_same_run(tmp_path / "interrupted", tmp_path / "reference")


def test_a_signal_during_the_last_evaluation_just_finishes(trained_digits_run, tmp_path, monkeypatch):
    """The last epoch was trained and is saved as finished: no exit 130 and nothing left to resume."""
    import shutil

    from featurenorm.training import loop as engine

    run = tmp_path / "run"
    shutil.copytree(trained_digits_run.save_path, run)
    evaluate = engine.evaluate_accuracy

    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_accuracy", interrupted_evaluation)
    metrics = train(dataclasses.replace(trained_digits_run.cfg, epochs=2, save_path=str(run)), resume=True,
                    progress=False)
    assert metrics["epoch"] == 2
    state = load(run)
    assert (state["epoch"], state["step"], state["finished"]) == (2, 0, True)


# A model whose training forward enters a C++ call that never returns (waiting on a torch Future
# nobody completes) in the second step of epoch 2: the main thread then never runs a Python signal
# handler again, as on the AVX2 machine where a channels_last backward hung.
STUCK_PLUGIN = f'''
import torch
from featurenorm.models import build_model, register_model

class Stuck(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.training_calls = inner, 0

    def forward(self, x):
        if self.training:
            self.training_calls += 1
            if self.training_calls == {STEPS_PER_EPOCH} + 2:
                print("stuck in a C++ call", flush=True)
                torch.futures.Future().wait()
        return self.inner(x)

@register_model("stuck_resnet18")
def stuck_resnet18(num_classes, width=1.0, **options):
    return Stuck(build_model("resnet18", num_classes, width=width, **options))
'''


def start_stuck(tmp_path: Path, *settings: str) -> tuple[subprocess.Popen, Path, Path]:
    """train.py with the stuck model; returns (process, run folder, stdout+stderr log) once it is stuck."""
    plugin, run, log = tmp_path / "stuck.py", tmp_path / "run", tmp_path / "log.txt"
    plugin.write_text(STUCK_PLUGIN)
    with open(log, "w") as out:
        proc = subprocess.Popen([*train_command(run, "--plugin", str(plugin), "--no-progress"), "--set",
                                 "arch=stuck_resnet18", *settings], cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(log, "stuck in a C++ call", proc)
    except BaseException:
        proc.kill()
        raise
    return proc, run, log


def assert_epoch_one_intact(run: Path) -> None:
    """last.pt is epoch 1's, whole and loadable; no temporary file was left beside it."""
    state = load(run)
    assert (state["epoch"], state["step"], state["finished"]) == (1, 0, False)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_a_step_stuck_in_cpp_ends_after_the_grace_period(tmp_path):
    proc, run, log = start_stuck(tmp_path, "--set", "stop_grace_seconds=2")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=60)  # without the watcher it would wait for ever
    finally:
        proc.kill()
    assert status == 128 + signal.SIGTERM
    assert time.monotonic() - sent >= 2  # the step had its grace period first
    assert "did not finish within stop_grace_seconds=2" in log.read_text()
    assert_epoch_one_intact(run)


def test_a_second_signal_ends_a_stuck_step_at_once(tmp_path):
    proc, run, log = start_stuck(tmp_path)  # the default grace period (30 s) is never reached
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # one signal: the run waits for the step
    proc.send_signal(signal.SIGINT)
    try:
        status = proc.wait(timeout=20)
    finally:
        proc.kill()
    assert status == 128 + signal.SIGINT
    assert time.monotonic() - sent < 30
    assert "second SIGINT: ending now" in log.read_text()
    assert_epoch_one_intact(run)
