"""Robustness of the three CLIs: every bad input is one line on stderr with exit status 2, odd OOD
files are converted or skipped, checkpoints load without running code, outputs are written
atomically, finished runs are not overwritten, and selection and evaluation are deterministic.

Each case runs the real CLI in a new process (:func:`run_script`). A process that imports torch
costs a few seconds, so the further variants of a case run the same script's ``main`` through
``run_cli`` in this process (:func:`run_in_process`), which prints and returns exactly what the
script's ``__main__`` block passes to ``sys.exit``. Interruptions are in ``integration/test_interrupts.py``.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from featurenorm.reporting import tables as report
from featurenorm.training.checkpoint import read_checkpoint
from featurenorm.training.loop import train
from featurenorm.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
# one thread per CLI, so that two can share the two cores without slowing each other down
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
IMAGE_EXTENSIONS = ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp, .gif"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ helpers
class Result(NamedTuple):
    """What a CLI run left: its exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <script> <args> --no-progress`` from the repository root, in a new process."""
    return subprocess.run([sys.executable, str(REPO / script), *args, "--no-progress"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def run_parallel(jobs: dict[str, Sequence[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Run ``{name: [script, *args]}`` in new processes, two at a time; the results by name."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_script, *argv) for name, argv in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@functools.cache
def script_main(script: str) -> Callable[[Sequence[str]], int]:
    """The ``main`` of a script in the repository root, imported once (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"cli_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(capsys, script: str, *args: str) -> Result:
    """The script's ``main`` through :func:`run_cli`, as its ``__main__`` block runs it, without a new
    interpreter: the variants of a case that a subprocess test already covers (torch imports once)."""
    code = run_cli(script_main(script), [*args, "--no-progress"])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def error_line(out: subprocess.CompletedProcess | Result) -> str:
    """The message of a one-line ``error: ...`` exit (status 2, no traceback, nothing on stdout)."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and out.stderr.endswith("\n"), out.stderr
    return out.stderr[len("error: "):-1]


def write_config(path: Path, cfg, **changes) -> Path:
    """The fixture's resolved config as a JSON file, with ``changes`` (JSON spellings)."""
    path.write_text(json.dumps({**cfg.to_dict(), **changes}))
    return path


def copy_run(trained, to: Path) -> Path:
    """A copy of the trained run's folder (the fixture is read-only)."""
    shutil.copytree(trained.save_path, to)
    return to


# ------------------------------------------------------------------------------------------ config
def bad_config(tmp_path: Path, text: str) -> tuple[Path, subprocess.CompletedProcess]:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path, run_script("train.py", "--config", str(path))


def test_invalid_json_names_line_and_column(tmp_path):
    path, out = bad_config(tmp_path, '{"id_dataset": "digits",\n "save_path": "x" "lr": 0.1}')
    assert error_line(out) == f"{path}: invalid JSON at line 2, column 19: Expecting ',' delimiter"


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"id_dataset": "digits",\n "save_path": "x" "lr": 0.1}')
    out = run_script("train.py", "--config", str(path), "--debug")
    assert out.returncode == 1
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert out.stderr.splitlines()[-1] == (f"featurenorm.errors.ConfigError: {path}: invalid JSON at line 2, "
                                           "column 19: Expecting ',' delimiter")


@pytest.mark.parametrize("text, message", [
    ('{"id_dataset": "digits", "save_path": "x", "epochz": 3}', "unknown config key 'epochz'; did you mean 'epochs'?"),
    ('{"id_dataset": "digits", "save_path": "x", "epochs": "ten"}',
     "config key 'epochs' must be an integer, got 'ten'"),
    ('{"id_dataset": "digits", "save_path": "x", "hflip": "maybe"}', "config key 'hflip' must be true or false, "
                                                                     "got 'maybe'"),
    ('{"id_dataset": "digits"}', "missing required key 'save_path' (add it to the config file or pass "
                                 "--set save_path=...)"),
    ('{"save_path": "x"}', "missing required key 'id_dataset' (add it to the config file or pass "
                           "--set id_dataset=...)"),
    ('{"id_dataset": "digits", "save_path": "x", "lr": -0.1}', "config key 'lr' must not be negative, got -0.1"),
    ('{"id_dataset": "digits", "save_path": "x", "epochs": 3, "milestones": [0, 2]}',
     "config key 'milestones' must be at least 1, got [0, 2]"),
], ids=["unknown-key", "wrong-type-int", "wrong-type-bool", "no-save_path", "no-id_dataset", "negative-lr",
        "milestone-past-epochs"])
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    path, out = bad_config(tmp_path, text)
    assert error_line(out) == f"{path}: {message}"
    assert not (REPO / "x").exists()  # nothing was created for the run


def test_unknown_override_key_suggests_the_closest(tmp_path):
    out = run_script("train.py", "--config", "conf/digits.json", "--set", "lrate=0.1")
    assert error_line(out) == "unknown config key 'lrate'; did you mean 'lr'?"


# ------------------------------------------------------------------------------------------ ID data
def test_id_data_errors(trained_digits_run, tmp_path, make_imagefolder, capsys):
    config = write_config(tmp_path / "c.json", trained_digits_run.cfg, save_path=str(tmp_path / "run"))
    train_py = ["train.py", "--config", str(config)]
    cifar = tmp_path / "data" / "cifar10"  # named like CIFAR-10, never downloaded
    out = run_script(*train_py, "--set", f"id_dataset={cifar}")
    assert error_line(out) == (f"cifar10 not found at '{cifar}/cifar-10-batches-py'; set \"download\": true in the "
                               "config (or --set download=true), or run scripts/download_data.sh")

    no_splits = tmp_path / "no_splits"
    (no_splits / "images").mkdir(parents=True)
    out = run_in_process(capsys, *train_py, "--set", f"id_dataset={no_splits}")
    assert error_line(out) == (f"id_dataset '{no_splits}' holds neither cifar-10-batches-py/, cifar-100-python/ nor "
                               "train/ and test/ (or val/) class folders; fix the path or set the key 'dataset'")
    no_images = tmp_path / "no_images"
    for split in ("train", "test"):
        (no_images / split / "cat").mkdir(parents=True)
        (no_images / split / "cat" / "notes.txt").write_text("not an image")
    out = run_in_process(capsys, *train_py, "--set", f"id_dataset={no_images}", "--set", "num_classes=null")
    assert error_line(out) == f"no images found under '{no_images}/train' (extensions: {IMAGE_EXTENSIONS})"
    two_classes = make_imagefolder(tmp_path / "pets", classes=("cat", "dog"), n_train=2, n_test=1)
    out = run_in_process(capsys, *train_py, "--set", f"id_dataset={two_classes}", "--set", "num_classes=3")
    assert error_line(out) == (f"num_classes is 3 in the config but imagefolder at '{two_classes}' has 2 classes; "
                               "set num_classes to 2")
    out = run_in_process(capsys, *train_py, "--set", "num_classes=5")
    assert error_line(out) == "num_classes is 5 in the config but digits has 10 classes; set num_classes to 10"
    out = run_in_process(capsys, *train_py, "--set", "arch=resnet19")
    assert error_line(out) == ("unknown architecture 'resnet19' (did you mean 'resnet18'?); available: resnet18, "
                               "resnet34, resnet50, vgg11, vgg13, vgg16, wrn28_10, wrn{depth}_{widen}, timm/<name>, "
                               "torchvision/<name>")
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves no folder behind


# ------------------------------------------------------------------------------- OOD folders
def write_odd_ood_folder(root: Path, make_png_folder) -> tuple[list[Path], list[Path]]:
    """Images in every awkward mode and size, broken files and non-images.

    Returns (readable images, unreadable files), each sorted like the OOD reader lists them.
    """
    rng = np.random.default_rng(0)
    (gray,) = make_png_folder(root, 1, size=(20, 12), mode="L", prefix="a_gray")
    (rgba,) = make_png_folder(root, 1, size=(9, 9), mode="RGBA", prefix="b_rgba")
    palette = root / "c_palette.png"
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).quantize(16).save(palette)
    deep = root / "d_16bit.png"
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(deep)
    (tiny,) = make_png_folder(root, 1, size=(1, 1), prefix="e_tiny")
    big = root / "nested" / "f_big.png"  # 2000x1500: a smooth gradient keeps the file small
    big.parent.mkdir()
    ramp = np.linspace(0, 255, 2000, dtype=np.float64)[None, :, None] * np.ones((1500, 1, 3))
    Image.fromarray(ramp.astype(np.uint8)).save(big)
    assert {Image.open(p).mode for p in (gray, rgba, palette, deep)} == {"L", "RGBA", "P", "I;16"}

    random_bytes = root / "g_random.png"
    random_bytes.write_bytes(rng.integers(0, 256, 700, dtype=np.uint8).tobytes())
    whole_png = rgba.read_bytes()
    truncated_png = root / "h_truncated.png"
    truncated_png.write_bytes(whole_png[:len(whole_png) // 2])
    jpeg = root / "jpeg_source.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, quality=90)
    truncated_jpeg = root / "i_truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.read_bytes()[:jpeg.stat().st_size // 3])
    jpeg.unlink()
    (root / "notes.txt").write_text("not an image")
    (root / "labels.json").write_text("{}")
    readable = [gray, rgba, palette, deep, tiny, big]
    return readable, [random_bytes, truncated_png, truncated_jpeg]


def msp_of_files(trained, paths: Sequence[Path]) -> np.ndarray:
    """MSP of each file, unrolled: the run's model on the documented eval preprocessing. (N,) float."""
    from featurenorm.training.checkpoint import load_checkpoint
    from featurenorm.data.images import eval_transform, read_rgb

    model, cfg = load_checkpoint(trained.save_path / "last.pt")
    images = torch.stack([eval_transform(cfg)(read_rgb(p)) for p in paths])
    with torch.inference_mode():
        return torch.softmax(model(images), dim=1).max(dim=1).values.numpy()


def test_odd_ood_files_are_converted_skipped_or_ignored_and_runs_are_deterministic(
        trained_digits_run, tmp_path, make_png_folder, capsys):
    readable, unreadable = write_odd_ood_folder(tmp_path / "odd", make_png_folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint = trained_digits_run.save_path / "last.pt"
    runs = {name: tmp_path / name for name in ("eval_a", "eval_b", "select_a", "select_b")}
    configs = {name: write_config(tmp_path / f"{name}.json", trained_digits_run.cfg, save_path=str(run),
                                  textures=str(empty)) for name, run in runs.items()}
    evaluate = ["--checkpoint", str(checkpoint), "--methods", "featurenorm,msp", "--block", "layer4.0",
                "--ood", f"odd={tmp_path / 'odd'}", "--save-scores"]
    select = ["--checkpoint", str(checkpoint), "--num-samples", "128"]
    outs = run_parallel({
        "eval_a": ["eval_ood.py", "--config", str(configs["eval_a"]), *evaluate],
        "eval_b": ["eval_ood.py", "--config", str(configs["eval_b"]), *evaluate],
        "select_a": ["select_block.py", "--config", str(configs["select_a"]), *select],
        "select_b": ["select_block.py", "--config", str(configs["select_b"]), *select],
    })
    for name, out in outs.items():
        assert out.returncode == 0, out.stderr

    # unreadable files: listed in one warning line, counted, and the evaluation still finishes
    assert outs["eval_a"].stderr.splitlines() == [
        f"skipping OOD set 'textures': no images in {empty}",
        f"warning: OOD set 'odd': skipped 3 unreadable files: {', '.join(map(str, unreadable))}",
    ]
    results = json.loads((runs["eval_a"] / "ood_results.json").read_text())
    assert results["unreadable"] == {"odd": 3}
    # an empty folder from a config key is skipped with its reason; one named with --ood is an error
    assert results["skipped"] == {"textures": f"no images in {empty}"}
    out = run_in_process(capsys, "eval_ood.py", "--config", str(configs["eval_a"]), "--checkpoint", str(checkpoint),
                         "--methods", "msp", "--ood", f"blank={empty}")
    assert error_line(out) == (f"OOD folder '{empty}' named with --ood has no images; put images ({IMAGE_EXTENSIONS}) "
                               "in it, nested folders allowed, or drop --ood blank")
    # with nothing else to score: an error that gives the reasons
    out = run_in_process(capsys, "eval_ood.py", "--config", str(configs["eval_a"]), "--checkpoint", str(checkpoint),
                         "--methods", "msp")
    assert error_line(out) == (f"no OOD data set to evaluate (skipped textures: no images in {empty}): configure OOD "
                               "paths (svhn, textures, ...) or pass --ood name=path")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in unreadable:
        shutil.copy(path, broken / path.name)
    out = run_in_process(capsys, "eval_ood.py", "--config", str(configs["eval_a"]), "--checkpoint", str(checkpoint),
                         "--methods", "msp", "--ood", f"broken={broken}")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.splitlines() == [
        f"skipping OOD set 'textures': no images in {empty}",
        f"warning: OOD set 'broken': skipped 3 unreadable files: {', '.join(str(broken / p.name) for p in unreadable)}",
        "error: no OOD image could be read (skipped textures: no images in "
        f"{empty}; broken: no readable images); check the OOD folders"]
    # gray, RGBA, palette, 16-bit, 1x1 and 2000x1500 are all scored; .txt/.json are ignored
    assert results["methods"]["featurenorm"]["odd"]["num_ood"] == 6
    assert results["methods"]["msp"]["odd"]["num_ood"] == 6
    scores = np.load(runs["eval_a"] / "scores.npz")
    np.testing.assert_allclose(scores["msp.odd"], msp_of_files(trained_digits_run, readable), rtol=1e-5, atol=1e-6)
    assert np.isfinite(scores["featurenorm.odd"]).all() and scores["featurenorm.odd"].shape == (6,)

    # the same seed and checkpoint give the same outputs
    assert json.loads((runs["eval_b"] / "ood_results.json").read_text()) == results
    assert np.array_equal(np.load(runs["eval_b"] / "scores.npz")["featurenorm.id"], scores["featurenorm.id"])
    selection = (runs["select_a"] / "block_selection.json").read_bytes()
    assert (runs["select_b"] / "block_selection.json").read_bytes() == selection
    assert json.loads(selection)["selected"]["name"] in [row["name"] for row in json.loads(selection)["blocks"]]


# ------------------------------------------------------------------------ models and checkpoints
class RunsCode:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def foreign_checkpoint(trained, path: Path, arch: str, num_classes: int) -> Path:
    """A well-formed checkpoint of another architecture or class count."""
    from featurenorm.models import build_model

    state = torch.load(trained.save_path / "last.pt", weights_only=True)
    state["model"] = build_model(arch, num_classes, width=0.0625).state_dict()
    state["arch"], state["num_classes"] = arch, num_classes
    state["config"] = {**state["config"], "arch": arch, "num_classes": num_classes}
    torch.save(state, path)
    return path


def test_model_and_checkpoint_errors(trained_digits_run, tmp_path, make_png_folder, capsys):
    trained = trained_digits_run
    run = copy_run(trained, tmp_path / "run")  # no block_selection.json
    config = write_config(tmp_path / "c.json", trained.cfg, save_path=str(run))
    make_png_folder(tmp_path / "ood", 4)
    evaluate = ["eval_ood.py", "--config", str(config), "--methods", "featurenorm,msp", "--ood",
                f"pngs={tmp_path / 'ood'}"]
    select = ["select_block.py", "--config", str(config)]

    # untrusted: unpickling would run `touch MARKER`; refused, and the marker never appears
    marker = tmp_path / "MARKER"
    evil_torch = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "config": {}, "num_classes": 10}, evil_torch)
    evil_pickle = tmp_path / "evil.pkl"
    evil_pickle.write_bytes(pickle.dumps({"model": RunsCode(marker), "config": {}}, protocol=4))
    refused = ("refused to load '{}': it holds pickled Python objects that could run code; only load checkpoints "
               "written by featurenorm from sources you trust")
    assert error_line(run_script(*evaluate, "--block", "layer4.0", "--checkpoint", str(evil_torch))) == \
        refused.format(evil_torch)
    assert error_line(run_in_process(capsys, *select, "--checkpoint", str(evil_pickle))) == refused.format(evil_pickle)
    assert not marker.exists()

    blocks = "layer1.0, layer1.1, layer2.0, layer2.1, layer3.0, layer3.1, layer4.0, layer4.1"
    out = run_in_process(capsys, *evaluate, "--block", "nope")
    assert error_line(out) == f"--block 'nope' is not a block of resnet18; valid: {blocks}"
    out = run_in_process(capsys, *evaluate)
    assert error_line(out) == (f"no block selected: '{run}/block_selection.json' not found; run select_block.py "
                               "--config ... first, or pass --block NAME")
    vgg = foreign_checkpoint(trained, tmp_path / "vgg.pt", "vgg11", 10)
    out = run_in_process(capsys, *evaluate, "--block", "layer4.0", "--checkpoint", str(vgg))
    assert error_line(out) == (f"checkpoint '{vgg}' is vgg11 with 10 classes but the config asks for resnet18 with "
                               "10 classes; use the matching config or checkpoint")
    five = foreign_checkpoint(trained, tmp_path / "five.pt", "resnet18", 5)
    out = run_in_process(capsys, *select, "--checkpoint", str(five))
    assert error_line(out) == (f"checkpoint '{five}' is resnet18 with 5 classes but the config asks for resnet18 "
                               "with 10 classes; use the matching config or checkpoint")
    whole = (trained.save_path / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[:len(whole) // 2])
    out = run_in_process(capsys, *evaluate, "--block", "layer4.0", "--checkpoint", str(truncated))
    assert error_line(out) == (f"checkpoint '{truncated}' is truncated or corrupt (the zip archive is incomplete); "
                               "retrain or re-download it")
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(b"\x07" + np.random.default_rng(0).integers(0, 256, 4095, dtype=np.uint8).tobytes())
    out = run_in_process(capsys, *select, "--checkpoint", str(random_bytes))
    assert error_line(out) == (f"checkpoint '{random_bytes}' is truncated or corrupt (not a PyTorch file); retrain "
                               "or re-download it")
    # none of the failed commands wrote anything into the run folder
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt", "train_log.jsonl"]


def test_the_unsafe_payload_would_have_run(tmp_path):
    """The crafted file is live: an unguarded ``torch.load`` runs it (so the test above means something)."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match="refused to load"):
        read_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- NaN and infinity
def test_diverging_training_and_nan_scores_are_errors(trained_digits_run, tmp_path, make_png_folder, capsys):
    trained = trained_digits_run
    config = write_config(tmp_path / "d.json", trained.cfg, lr=1e30, epochs=2, save_path=str(tmp_path / "diverge"))
    message = error_line(run_script("train.py", "--config", str(config)))
    assert message.startswith(("loss became nan at epoch 1, step ", "loss became inf at epoch 1, step "))
    assert message.endswith("; training stopped and no checkpoint was written. Lower lr or check the data")
    assert not (tmp_path / "diverge" / "last.pt").exists()

    state = torch.load(trained.save_path / "last.pt", weights_only=True)
    state["model"]["head.weight"].fill_(float("nan"))
    nan_run = tmp_path / "nan_run"
    nan_run.mkdir()
    torch.save(state, nan_run / "last.pt")
    make_png_folder(tmp_path / "ood", 4)
    out = run_in_process(capsys, "eval_ood.py", "--config",
                         str(write_config(tmp_path / "n.json", trained.cfg, save_path=str(nan_run))),
                         "--methods", "featurenorm,msp", "--block", "layer4.0", "--ood", f"pngs={tmp_path / 'ood'}")
    assert error_line(out) == ("method 'msp' gave 360 NaN/inf score(s) on the ID test set; check the checkpoint (it "
                               "may have diverged) and the data")
    assert not (nan_run / "ood_results.json").exists()
    # block selection: a NaN block is a broken checkpoint, not a block to skip
    state["model"]["head.weight"].fill_(0.0)
    state["model"]["layer3.0.conv1.weight"].fill_(float("nan"))
    torch.save(state, nan_run / "last.pt")
    out = run_in_process(capsys, "select_block.py", "--config", str(tmp_path / "n.json"), "--num-samples", "64")
    assert error_line(out) == (f"block 'layer3.0' gave 64 NaN/inf FeatureNorm(s) on the ID images; check the "
                               f"checkpoint '{nan_run / 'last.pt'}' (it may have diverged)")
    assert not (nan_run / "block_selection.json").exists()


def poison_after(calls: int, then_signal: int | None = None):
    """An SGD.step that fills the first parameter with NaN after ``calls`` steps (and optionally signals)."""
    original = torch.optim.SGD.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == calls:
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        if then_signal is not None and count["n"] == calls + 1:
            os.kill(os.getpid(), then_signal)
        return result
    return step


@pytest.mark.parametrize("signal_too", [False, True], ids=["nan", "nan-then-sigint"])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(trained_digits_run, tmp_path, monkeypatch, signal_too):
    """Epoch 2 of a resumed run diverges at step 4; with a SIGINT right after, nothing NaN is saved either."""
    import dataclasses
    import signal

    run = copy_run(trained_digits_run, tmp_path / "run")
    good = (run / "last.pt").read_bytes()
    monkeypatch.setattr(torch.optim.SGD, "step", poison_after(3, signal.SIGINT if signal_too else None))
    cfg = dataclasses.replace(trained_digits_run.cfg, epochs=2, save_path=str(run))
    with pytest.raises(UserError) as err:
        train(cfg, resume=True, progress=False)
    assert str(err.value) == (f"loss became nan at epoch 2, step 4; training stopped and '{run / 'last.pt'}' still "
                              "holds the last good state. Lower lr or check the data")
    assert (run / "last.pt").read_bytes() == good
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------ atomic writes
def leftovers(folder: Path) -> list[str]:
    """Temporary files of :func:`featurenorm.files.atomic_path` (``.<name>.*``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(trained_digits_run, tmp_path, monkeypatch):
    import dataclasses

    run = copy_run(trained_digits_run, tmp_path / "run")
    good = (run / "last.pt").read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        import io as stdio

        buffer = stdio.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        train(dataclasses.replace(trained_digits_run.cfg, epochs=2, save_path=str(run)), resume=True, progress=False)
    assert (run / "last.pt").read_bytes() == good
    assert leftovers(run) == []
    assert read_checkpoint(run / "last.pt")["epoch"] == 1


def test_crash_while_writing_results_keeps_the_previous_ones(tmp_path, monkeypatch):
    def results(auroc: float) -> dict:
        metrics = {"fpr95": 0.5, "auroc": auroc, "aupr_in": 0.5, "aupr_out": 0.5}
        return {"id_dataset": "digits", "arch": "resnet18", "id_accuracy": 0.9,
                "block": {"name": "layer4.0", "index": 6, "source": "--block"},
                "methods": {"msp": {"svhn": {**metrics, "num_ood": 3}, "average": metrics}}}

    written = report.write_ood_results(results(0.75), tmp_path)
    before = {kind: path.read_bytes() for kind, path in written.items()}
    real_write_text = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[:len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError):
        report.write_ood_results(results(0.25), tmp_path)
    monkeypatch.undo()
    assert {kind: path.read_bytes() for kind, path in written.items()} == before
    assert json.loads(before["json"])["methods"]["msp"]["svhn"]["auroc"] == 0.75
    assert leftovers(tmp_path) == []


def test_every_output_goes_through_an_atomic_rename(trained_digits_run, tmp_path, monkeypatch, make_png_folder):
    """Train (one more epoch), select and evaluate with every optional output; spy on os.replace."""
    import dataclasses

    from featurenorm.runs.evaluate import run_evaluation
    from featurenorm.runs.select import run_selection

    run = copy_run(trained_digits_run, tmp_path / "run")
    make_png_folder(tmp_path / "ood", 4)
    renamed: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        renamed.append((Path(src), Path(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    cfg = dataclasses.replace(trained_digits_run.cfg, epochs=2, save_path=str(run))
    train(cfg, resume=True, progress=False)
    run_selection(cfg, num_samples=64, progress=False)
    run_evaluation(cfg, methods="featurenorm,msp,energy_react", ood_specs=[f"pngs={tmp_path / 'ood'}"],
                   save_scores=True, all_blocks=True, progress=False)

    outputs = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    appended = ["train_log.jsonl"]  # one JSON line per epoch, appended; readers skip a torn last line
    cache = [name for name in outputs if name.startswith("cache/")]
    assert [name.split("-")[0] for name in cache] == ["cache/energy_react"]
    assert sorted(set(outputs) - set(appended) - set(cache)) == [
        "block_selection.json", "config.json", "feature_norm_hist.png", "last.pt", "norm_ratio.png",
        "norm_ratio_vs_auroc.png", "ood_results.csv", "ood_results.json", "ood_results.md", "scores.npz"]
    ours = [(src, dst) for src, dst in renamed if run in dst.parents]
    assert set(outputs) - set(appended) <= {str(dst.relative_to(run)) for _, dst in ours}
    # each came from a temporary file beside it: .<name>.<random><suffix>
    assert all(src.parent == dst.parent and src.name.startswith(f".{dst.name}.") for src, dst in ours)


# ------------------------------------------------------------------------------------ overwriting
def test_a_finished_run_is_not_overwritten_without_overwrite(trained_digits_run, tmp_path, capsys):
    run = copy_run(trained_digits_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    config = write_config(tmp_path / "c.json", trained_digits_run.cfg, save_path=str(run))
    out = run_in_process(capsys, "train.py", "--config", str(config))
    assert error_line(out) == (f"'{run}' already holds a run (last.pt); pass --resume to continue it, --overwrite "
                               "to start over, or --set save_path=<new folder>")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
