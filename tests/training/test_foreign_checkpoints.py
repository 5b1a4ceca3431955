"""Checkpoints written elsewhere (plain state_dicts, DDP/compile prefixes, OpenOOD's layout) and new-user paper cuts."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from featurenorm.training.checkpoint import load_checkpoint
from featurenorm.cli import eval_main, select_main, train_main
from featurenorm.errors import run_cli
from featurenorm.runs.evaluate import run_evaluation
from featurenorm.runs.select import run_selection

REPO = Path(__file__).resolve().parents[2]
METHODS = "featurenorm,msp,mahalanobis"


@pytest.fixture(scope="module")
def evaluated(trained_digits_run, tmp_path_factory):
    """The train.py checkpoint's metrics, with OOD images written once."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("foreign")
    (root / "ood").mkdir()
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "ood" / f"{i:02d}.png")
    cfg = replace(trained_digits_run.cfg, save_path=str(root / "ours"))
    results = run_evaluation(cfg, checkpoint=str(trained_digits_run.save_path / "last.pt"), methods=METHODS, block="layer3.0", ood_specs=[f"pngs={root / 'ood'}"],
                             progress=False).results
    weights = torch.load(trained_digits_run.save_path / "last.pt", weights_only=True)["model"]
    return root, results, weights


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("layout", ["ddp_plain", "openood", "net_compiled", "state_dict_key"])
def test_foreign_checkpoint_gives_identical_metrics(trained_digits_run, evaluated, layout, tmp_path):
    root, expected, weights = evaluated
    if layout == "ddp_plain":
        obj = {f"module.{k}": v for k, v in weights.items()}
    elif layout == "openood":  # OpenOOD's ResNet18_32x32 names the classifier fc
        obj = {(f"fc.{k[5:]}" if k.startswith("head.") else k): v for k, v in weights.items()}
    elif layout == "net_compiled":
        obj = {"net": {f"_orig_mod.{k}": v for k, v in weights.items()}, "epoch": 3}
    else:
        obj = {"state_dict": {f"module._orig_mod.{k}": v for k, v in weights.items()}, "optimizer": {}}
    path = _save(obj, tmp_path / "foreign.ckpt")
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path / "run"), num_classes=None)
    results = run_evaluation(cfg, checkpoint=str(path), methods=METHODS, block="layer3.0",
                             ood_specs=[f"pngs={root / 'ood'}"], progress=False).results
    assert results["methods"] == expected["methods"]
    assert results["id_accuracy"] == expected["id_accuracy"] and cfg.num_classes == 10
    model, _ = load_checkpoint(path, cfg=cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_select_block_runs_on_a_foreign_checkpoint(trained_digits_run, evaluated, tmp_path):
    _, _, weights = evaluated
    path = _save({f"module.{k}": v for k, v in weights.items()}, tmp_path / "plain.pth")
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path / "run"))
    ours = run_selection(replace(trained_digits_run.cfg, save_path=str(tmp_path / "ours")),
                         checkpoint=str(trained_digits_run.save_path / "last.pt"), num_samples=40, progress=False)
    foreign = run_selection(cfg, checkpoint=str(path), num_samples=40, progress=False)
    assert foreign.rows == ours.rows and (tmp_path / "run" / "block_selection.json").is_file()


def _error_line(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err
    return lines[0][len("error: "):]


def test_a_checkpoint_that_does_not_fit_names_the_first_keys(trained_digits_run, evaluated, tmp_path, capsys):
    _, _, weights = evaluated
    broken = dict(weights)
    del broken["layer2.0.bn1.running_var"], broken["layer1.0.conv1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    path = _save(broken, tmp_path / "broken.pt")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**trained_digits_run.cfg.to_dict(), "save_path": str(tmp_path / "run")}))
    message = _error_line(capsys, run_cli(select_main, ["--config", str(config), "--checkpoint", str(path),
                                                        "--no-progress"]))
    assert message == (f"checkpoint '{path}' does not fit ResNet: 2 missing key(s), first 'layer1.0.conv1.weight'; "
                       "1 unexpected key(s), first 'extra.weight'; check the config's arch, width and num_classes")
    no_weights = _save({"epoch": 3, "note": "nothing"}, tmp_path / "empty.pt")
    message = _error_line(capsys, run_cli(eval_main, ["--config", str(config), "--checkpoint", str(no_weights),
                                                      "--block", "layer3.0", "--no-progress"]))
    assert message.startswith(f"'{no_weights}' holds neither a featurenorm checkpoint nor a state_dict")


# ------------------------------------------------------------------------------------------ paper cuts
def test_seed_format_config_with_one_epoch_trains(tmp_path, capsys):
    config = tmp_path / "seed.json"
    config.write_text(json.dumps({"epoch": "1", "id_dataset": "digits", "save_path": str(tmp_path / "run"),
                                  "width": "0.0625", "device": "cpu", "num_workers": "0", "batch_size": "256"}))
    assert run_cli(train_main, ["--config", str(config), "--no-progress"]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["config"]["milestones"] == [1, 1, 1] and state["epoch"] == 1


def test_timm_arch_with_width_reset_trains(tmp_path, capsys):
    code = run_cli(train_main, ["--config", str(REPO / "conf" / "digits.json"), "--set", "arch=timm/test_resnet",
                                "--set", "width=null", "--set", "epochs=1", "--set", "device=cpu", "--set", "image_size=16",
                                "--set", "batch_size=512", "--set", "crop_padding=1",
                                "--set", f"save_path={tmp_path / 'run'}", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (state["config"]["arch"], state["config"]["width"]) == ("timm/test_resnet", 1.0)


def test_utf16_config_is_one_line_and_status_2(tmp_path, capsys):
    config = tmp_path / "utf16.json"
    config.write_text(json.dumps({"id_dataset": "digits", "save_path": "x"}), encoding="utf-16")
    message = _error_line(capsys, run_cli(train_main, ["--config", str(config)]))
    assert message == f"{config}: not UTF-8 text (an editor may have saved it as UTF-16); save it as UTF-8"
