"""featurenorm.training.loop.train and train.py: run folders, exact reproducibility and resuming, checkpoints."""
from __future__ import annotations

import dataclasses
import fractions
import json
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featurenorm.training.checkpoint import load_checkpoint, read_checkpoint
from featurenorm.config import load_config
from featurenorm.data.splits import load_split
from featurenorm.data.loaders import DeviceLoader, make_loader
from featurenorm.training.loop import evaluate_accuracy, train
from featurenorm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
LOG_KEYS = ["epoch", "lr", "train_loss", "train_acc", "test_acc", "seconds"]


def read_log(save_path: Path) -> list[dict]:
    return [json.loads(line) for line in (save_path / "train_log.jsonl").read_text().splitlines()]


def weights(save_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(save_path / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    unequal = [name for name in a if not torch.equal(a[name], b[name])]
    assert unequal == []


def without_seconds(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in log]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_train_writes_run_folder(trained_digits_run):
    save_path, cfg = trained_digits_run
    assert sorted(p.name for p in save_path.iterdir()) == ["config.json", "last.pt", "train_log.jsonl"]
    (line,) = read_log(save_path)
    assert list(line) == LOG_KEYS
    assert (line["epoch"], line["lr"]) == (1, 0.05)
    # accuracies are counts over the digits splits (1437 train, 360 test images)
    assert line["train_acc"] * 1437 == pytest.approx(round(line["train_acc"] * 1437), abs=1e-6)
    assert line["test_acc"] * 360 == pytest.approx(round(line["test_acc"] * 360), abs=1e-6)
    assert 0 < line["train_loss"] < 10 and line["seconds"] > 0
    # config.json is the resolved config (num_classes filled in) and loads back as a config file
    saved = json.loads((save_path / "config.json").read_text())
    assert saved["num_classes"] == 10 and saved["width"] == 0.0625 and "git_commit" in saved
    assert load_config(save_path / "config.json") == cfg


def test_checkpoint_is_plain_tensors_and_reloads_to_the_logged_accuracy(trained_digits_run):
    save_path, cfg = trained_digits_run
    state = torch.load(save_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["format"] == "featurenorm-checkpoint/1"
    assert (state["arch"], state["num_classes"], state["epoch"], state["step"], state["finished"]) == (
        "resnet18", 10, 1, 0, True)
    assert state["metrics"] == read_log(save_path)[0]
    assert state["config"] == cfg.to_dict()
    model, loaded_cfg = load_checkpoint(save_path / "last.pt")
    assert loaded_cfg == cfg
    assert not model.training and all(not m.training for m in model.modules())
    assert_same_weights(model.state_dict(), state["model"])
    test = load_split(cfg, train=False)
    loader = make_loader(cfg, test, train=False, device=torch.device("cpu"))
    assert evaluate_accuracy(model, loader) == state["metrics"]["test_acc"]
    # the same number, unrolled: normalize (x / 255 - 0.5) / 0.5, argmax, compare
    with torch.inference_mode():
        logits = model((test.images.float() / 255 - 0.5) / 0.5)
    correct = int((logits.argmax(1) == test.labels).sum())
    assert abs(correct - state["metrics"]["test_acc"] * 360) <= 1  # float order may flip one tie at most


def test_same_seed_gives_identical_weights(trained_digits_run, tmp_path):
    first, cfg = trained_digits_run
    again = dataclasses.replace(cfg, save_path=str(tmp_path / "again"))
    train(again, progress=False)
    assert_same_weights(weights(tmp_path / "again"), weights(first))
    assert without_seconds(read_log(tmp_path / "again")) == without_seconds(read_log(first))


def test_different_seed_gives_different_weights(trained_digits_run, tmp_path):
    first, cfg = trained_digits_run
    train(dataclasses.replace(cfg, seed=1, save_path=str(tmp_path / "seed1")), progress=False)
    a, b = weights(first), weights(tmp_path / "seed1")
    float_params = [name for name, t in a.items() if t.is_floating_point()]
    assert all(not torch.equal(a[name], b[name]) for name in float_params if "conv" in name or "head" in name)


def test_resume_equals_uninterrupted(trained_digits_run, tmp_path, monkeypatch):
    one_epoch, cfg = trained_digits_run
    epochs_seen: list[int] = []  # each epoch must draw its own data order and augmentation
    monkeypatch.setattr(DeviceLoader, "set_epoch", lambda self, epoch: (epochs_seen.append(epoch),
                                                                        setattr(self, "epoch", epoch)))
    straight = dataclasses.replace(cfg, epochs=2, save_path=str(tmp_path / "straight"))
    train(straight, progress=False)
    assert epochs_seen == [0, 1]
    # the shared run is epoch 1 of the same recipe; continue a copy of it to epoch 2
    resumed_path = copy_run(one_epoch, tmp_path / "resumed")
    train(dataclasses.replace(cfg, epochs=2, save_path=str(resumed_path)), resume=True, progress=False)
    assert epochs_seen == [0, 1, 1]

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(resumed_path / "last.pt", weights_only=True)
    assert_same_weights(a["model"], b["model"])
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert len(momentum_a) == len([k for k in a["model"] if not k.endswith(buffers)])  # one per parameter
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    assert a["scheduler"] == b["scheduler"]
    assert (b["epoch"], b["finished"]) == (2, True)
    log_a, log_b = without_seconds(read_log(tmp_path / "straight")), without_seconds(read_log(resumed_path))
    assert log_a == log_b
    # lr 0.05 for epoch 1, then one milestone at 1 with gamma 0.1
    assert [line["lr"] for line in log_b] == [0.05, pytest.approx(0.005)]


def test_a_finished_run_is_not_overwritten(trained_digits_run, tmp_path):
    run, cfg = trained_digits_run
    copy = copy_run(run, tmp_path / "copy")
    again = dataclasses.replace(cfg, save_path=str(copy))
    before = (copy / "last.pt").read_bytes()
    with pytest.raises(UserError) as err:
        train(again, progress=False)
    assert str(err.value) == (f"'{copy}' already holds a run (last.pt); pass --resume to continue it, --overwrite "
                              "to start over, or --set save_path=<new folder>")
    with pytest.raises(UserError, match=r"already finished 1 epochs; raise epochs \(--set epochs=N\)"):
        train(again, resume=True, progress=False)
    assert (copy / "last.pt").read_bytes() == before
    # --overwrite starts over: a fresh log, and the same weights as a fresh run
    (copy / "train_log.jsonl").write_text('{"epoch": 99}\n')
    train(again, overwrite=True, progress=False)
    assert without_seconds(read_log(copy)) == without_seconds(read_log(run))
    assert_same_weights(weights(copy), weights(run))


def test_resume_errors(trained_digits_run, tmp_path):
    run, cfg = trained_digits_run
    with pytest.raises(UserError, match=r"--resume: no checkpoint at '.*empty/last.pt'; drop --resume"):
        train(dataclasses.replace(cfg, save_path=str(tmp_path / "empty")), resume=True, progress=False)
    copy = copy_run(run, tmp_path / "copy")
    with pytest.raises(UserError, match=r"has width 0.0625 but the config has 0.125"):
        train(dataclasses.replace(cfg, width=0.125, epochs=2, save_path=str(copy)), resume=True, progress=False)
    with pytest.raises(UserError, match=r"is resnet18 with 10 classes but the config asks for vgg11 with 10 classes"):
        train(dataclasses.replace(cfg, arch="vgg11", epochs=2, save_path=str(copy)), resume=True, progress=False)


def test_corrupt_or_unsafe_checkpoints_are_refused(trained_digits_run, tmp_path):
    run, _ = trained_digits_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "last.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match=r"checkpoint '.*truncated.pt' is truncated or corrupt"):
        read_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "config": {}, "payload": fractions.Fraction(1, 3)}, unsafe)  # not a plain type
    with pytest.raises(UserError, match=r"refused to load '.*unsafe.pt': it holds pickled Python objects"):
        read_checkpoint(unsafe)
    with pytest.raises(UserError, match=r"checkpoint '.*missing.pt' not found; train first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_train_on_an_imagefolder(tmp_path, make_imagefolder, digits_config):
    root = make_imagefolder(tmp_path / "pets", classes=("cat", "dog"), n_train=8, n_test=4, size=(16, 16))
    cfg = digits_config(tmp_path / "run", id_dataset=str(root), num_classes=None, image_size=16, loader="torch",
                        batch_size=8, eval_batch_size=8, crop_padding=2, hflip=True)
    metrics = train(cfg, progress=False)
    (line,) = read_log(tmp_path / "run")
    assert line == metrics and line["epoch"] == 1
    assert line["test_acc"] * 8 == round(line["test_acc"] * 8)
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["num_classes"] == 2 and state["config"]["num_classes"] == 2  # found from the class folders
    model, loaded_cfg = load_checkpoint(tmp_path / "run" / "last.pt")
    assert model.head.out_features == 2
    loader = make_loader(loaded_cfg, load_split(loaded_cfg, train=False), train=False, device=torch.device("cpu"))
    assert evaluate_accuracy(model, loader) == line["test_acc"]


def run_train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_train_py_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id_dataset": "digits", "save_path": "x", "learning_rate": 0.1}')
    out = run_train_py("--config", str(bad))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"error: {bad}: unknown config key 'learning_rate'; did you mean 'lr'?\n"  # no traceback


def test_train_py_trains_then_refuses_to_overwrite(tmp_path):
    sets = ["--set", "width=0.0625", "--set", "epochs=1", "--set", "milestones=[]", "--set", "device=cpu",
            "--set", "batch_size=128", "--set", f"save_path={tmp_path / 'cli'}"]
    out = run_train_py("--config", str(REPO / "conf" / "digits.json"), *sets, "--no-progress")
    assert out.returncode == 0, out.stderr
    (line,) = read_log(tmp_path / "cli")
    assert out.stdout.splitlines()[-1] == (f"done: test accuracy {line['test_acc']:.4f}; "
                                           f"checkpoint {tmp_path / 'cli' / 'last.pt'}")
    # a UserError raised inside train() is also one line, exit status 2
    again = run_train_py("--config", str(REPO / "conf" / "digits.json"), *sets, "--no-progress")
    assert again.returncode == 2
    assert again.stderr == (f"error: '{tmp_path / 'cli'}' already holds a run (last.pt); pass --resume to continue "
                            "it, --overwrite to start over, or --set save_path=<new folder>\n")


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(trained_digits_run, tmp_path):
    from featurenorm.training.checkpoint import save_checkpoint
    from featurenorm.training.loop import train

    state = read_checkpoint(trained_digits_run.save_path / "last.pt")
    state.update(epoch=3, finished=False)
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in state.items() if k != "format"})
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path), epochs=2, milestones=[1])
    with pytest.raises(UserError, match="at epoch 3, but epochs is 2"):
        train(cfg, resume=True, progress=False)
