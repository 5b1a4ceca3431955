"""The OpenOOD v1.5 benchmark end to end on a tiny replica of OpenOOD's layout.

The replica holds OpenOOD's list files (``benchmark_imglist/cifar10/*.txt``, ``<path> <label>``
lines, labels -1 and class labels) and PNGs under ``images_classic/``, with a few listed files
missing or not images. ``select_block.py`` and ``eval_ood.py --benchmark openood_v1.5`` run through
their command-line entry points (argv in, files out); every figure of the results is recomputed
here from the saved scores with scikit-learn, and the ID test and Textures scores from an
independent forward pass on the PNGs.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from featurenorm.config import load_config
from featurenorm.data.splits import load_split
from featurenorm.data.ood import resolve_ood_sources
from featurenorm.errors import ConfigError, UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
OPENOOD_MEAN, OPENOOD_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
NEAR, FAR = ["cifar100", "tin"], ["mnist", "svhn", "texture", "places365"]
METHODS = ["msp", "energy", "knn", "featurenorm"]
METRICS = ("fpr95", "fpr95_openood", "auroc", "aupr_in", "aupr_out")
# per list: (readable images, listed but missing, listed but not an image, label, size, mode)
REPLICA = {
    "train_cifar10": (20, 1, 1, "class", (32, 32), "RGB"),
    "test_cifar10": (12, 1, 0, "class", (32, 32), "RGB"),
    "test_cifar100": (8, 1, 0, "class", (32, 32), "RGB"),
    "test_tin": (6, 0, 1, -1, (64, 64), "RGB"),
    "test_mnist": (5, 0, 0, -1, (28, 28), "L"),
    "test_svhn": (5, 2, 0, -1, (32, 32), "RGB"),
    "test_texture": (4, 0, 0, -1, (48, 24), "RGB"),  # not square: OpenOOD resizes, then center-crops
    "test_places365": (5, 0, 0, -1, (40, 40), "RGB"),
}


def write_replica(root: Path, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """OpenOOD's layout under ``root``; returns the readable ``(path, label)`` of each list, in list order."""
    rng = np.random.default_rng(seed)
    readable: dict[str, list[tuple[str, int]]] = {}
    (root / "benchmark_imglist" / "cifar10").mkdir(parents=True)
    for list_name, (n, n_missing, n_broken, label, size, mode) in REPLICA.items():
        split, name = list_name.split("_")
        folder = f"{name}/{split}"
        (root / "images_classic" / folder).mkdir(parents=True)
        lines, kept = [], []
        for i in range(n + n_missing + n_broken):
            relative = f"{folder}/{i:04d}.png"
            cls = i % 10 if label == "class" else label
            lines.append(f"{relative} {cls}")
            path = root / "images_classic" / relative
            if i < n:
                channels = 3 if mode == "RGB" else 1
                pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode).save(path)
                kept.append((str(path), cls))
            elif i < n + n_missing:
                continue  # listed, never written
            else:
                path.write_bytes(b"not a png")
        # a blank line, as some editors leave at the end, is ignored
        (root / "benchmark_imglist" / "cifar10" / f"{list_name}.txt").write_text("\n".join(lines) + "\n\n")
        readable[list_name] = kept
    return readable


def write_config(path: Path, root: Path, save_path: Path) -> Path:
    config = {"id_dataset": "cifar10", "num_classes": 10, "arch": "resnet18", "width": 0.0625,
              "openood_root": str(root), "mean": OPENOOD_MEAN, "std": OPENOOD_STD, "save_path": str(save_path),
              "device": "cpu", "num_workers": 0, "eval_batch_size": 8, "knn_k": 3}
    path.write_text(json.dumps(config))
    return path


def run_script(script: str, argv: list[str]) -> tuple[int, str, str]:
    """A run script's ``main`` under ``run_cli``, as its ``__main__`` block runs it, but in this process
    (a second Python would spend seconds importing torch again); returns (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stdout, stderr = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        warnings.simplefilter("default")  # as in a fresh process: no warning counts as already shown
        code = run_cli(module.main, argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def openood_run(trained_digits_run, tmp_path_factory):
    """select_block.py, then eval_ood.py --benchmark openood_v1.5 on the replica, with nothing but its layout."""
    base = tmp_path_factory.mktemp("openood")
    root, save = base / "openood", base / "run"
    readable = write_replica(root)
    config = write_config(base / "openood.json", root, save)
    checkpoint = trained_digits_run.save_path / "last.pt"
    common = ["--config", str(config), "--benchmark", "openood_v1.5", "--checkpoint", str(checkpoint), "--no-progress"]
    code, _, select_err = run_script("select_block.py", common)
    assert code == 0, select_err
    code, stdout, stderr = run_script("eval_ood.py", [*common, "--methods", ",".join(METHODS), "--save-scores"])
    assert code == 0, stderr
    return {"results": json.loads((save / "ood_results.json").read_text()),
            "scores": dict(np.load(save / "scores.npz")),
            "selection": json.loads((save / "block_selection.json").read_text()), "select_stderr": select_err,
            "readable": readable, "save": save, "stdout": stdout, "stderr": stderr, "checkpoint": checkpoint}


def test_the_run_reads_only_openood_layout(openood_run):
    results, readable = openood_run["results"], openood_run["readable"]
    # select_block took the ID training images from train_cifar10.txt: 20 of 22 listed are readable
    assert openood_run["selection"]["num_samples"] == 20
    assert openood_run["select_stderr"].startswith("warning: ID split 'cifar10 train': skipped 2 unreadable files: ")
    assert results["benchmark"] == "openood_v1.5"
    assert results["groups"] == {"near": NEAR, "far": FAR}
    assert results["num_id"] == 12
    assert results["unreadable"] == {"cifar10": 1, "cifar100": 1, "tin": 1, "mnist": 0, "svhn": 2, "texture": 0,
                                     "places365": 0}
    for name in NEAR + FAR:
        assert results["methods"]["msp"][name]["num_ood"] == len(readable[f"test_{name}"])
    assert list(results["methods"]["msp"]) == [*NEAR, *FAR, "average", "near", "far"]
    # one warning line per set with left-out files, naming the files
    warnings = [line for line in openood_run["stderr"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 5  # ID train (the KNN fit), ID test, cifar100, tin, svhn
    assert any("OOD set 'svhn': skipped 2 unreadable files" in w and "svhn/test/0005.png" in w for w in warnings)
    assert any("ID split 'cifar10 test': skipped 1 unreadable file" in w for w in warnings)


def reference_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """Every metric from scikit-learn, written from each convention's definition (not from our code)."""
    scores = np.concatenate([id_scores, ood_scores]).astype(np.float64)
    is_id = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    # ours: ID positive, the fraction of OOD accepted at the first threshold accepting 95% of ID
    fpr, tpr, _ = roc_curve(is_id, scores, drop_intermediate=False)
    fpr95 = fpr[np.argmax(tpr >= 0.95)]
    # OpenOOD's: OOD positive on negated scores, roc_curve's defaults, first point with TPR >= 0.95
    fpr_ood, tpr_ood, _ = roc_curve(1 - is_id, -scores)
    return {"fpr95": fpr95, "fpr95_openood": fpr_ood[np.argmax(tpr_ood >= 0.95)],
            "auroc": roc_auc_score(is_id, scores), "aupr_in": average_precision_score(is_id, scores),
            "aupr_out": average_precision_score(1 - is_id, -scores)}


def test_every_figure_equals_the_reference_on_the_saved_scores(openood_run):
    results, scores = openood_run["results"], openood_run["scores"]
    for method in METHODS:
        table = results["methods"][method]
        expected = {name: reference_metrics(scores[f"{method}.id"], scores[f"{method}.{name}"]) for name in NEAR + FAR}
        for name in NEAR + FAR:
            for metric in METRICS:
                assert table[name][metric] == pytest.approx(expected[name][metric], abs=1e-12), (method, name, metric)
        for group, members in (("near", NEAR), ("far", FAR), ("average", NEAR + FAR)):
            for metric in METRICS:
                mean = sum(expected[m][metric] for m in members) / len(members)
                assert table[group][metric] == pytest.approx(mean, abs=1e-12), (method, group, metric)
    # the two FPRs are different numbers somewhere, so the test tells them apart
    assert any(results["methods"][m][s]["fpr95"] != results["methods"][m][s]["fpr95_openood"]
               for m in METHODS for s in NEAR + FAR)


def preprocess(path: str, size: int = 32) -> torch.Tensor:
    """OpenOOD's test transform by hand: RGB, shorter side to ``size`` (bilinear), center crop, normalize."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        width, height = img.size
        new = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        img = img.resize(new, Image.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2  # the replica's differences are even
        img = img.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(OPENOOD_MEAN)[:, None, None]) / torch.tensor(OPENOOD_STD)[:, None, None]


def test_id_and_texture_scores_equal_a_forward_pass_on_the_listed_images(openood_run):
    from featurenorm.training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(openood_run["checkpoint"])
    readable, scores = openood_run["readable"], openood_run["scores"]
    with torch.no_grad():
        for list_name, key in (("test_cifar10", "msp.id"), ("test_texture", "msp.texture")):
            images = torch.stack([preprocess(path) for path, _ in readable[list_name]])
            logits = model(images)
            assert np.allclose(scores[key], logits.softmax(1).max(1).values.numpy(), atol=1e-5), key
        labels = torch.tensor([label for _, label in readable["test_cifar10"]])
        images = torch.stack([preprocess(path) for path, _ in readable["test_cifar10"]])
        accuracy = int((model(images).argmax(1) == labels).sum()) / len(labels)
    assert openood_run["results"]["id_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_tables_follow_openood_layout(openood_run):
    results, save = openood_run["results"], openood_run["save"]
    order = [*["near", "far"], *NEAR, *FAR]
    rows = list(csv.DictReader(io.StringIO((save / "ood_results.csv").read_text())))
    assert list(rows[0]) == ["method"] + [f"{name}_{metric}" for name in order for metric in ("fpr95_openood", "auroc")]
    for row in rows:
        for name in order:
            for metric in ("fpr95_openood", "auroc"):
                assert float(row[f"{name}_{metric}"]) == round(100 * results["methods"][row["method"]][name][metric], 2)
    markdown = (save / "ood_results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Method"))
    assert header.split(" | ")[1:4] == ["near FPR@95 OpenOOD↓", "near AUROC↑", "far FPR@95 OpenOOD↓"]
    assert "Groups: near = cifar100, tin; far = mnist, svhn, texture, places365" in markdown
    # the printed summary shows the group AUROCs after the averages
    table = [line.split() for line in openood_run["stdout"].splitlines()]
    header = next(line for line in table if line[0] == "method")
    assert header[header.index("near") + 1] == "AUROC" and header.index("near") < header.index("far")
    msp = next(line for line in table if line[0] == "msp")
    near, far = (results["methods"]["msp"][g]["auroc"] for g in ("near", "far"))
    assert [float(v.rstrip("*")) for v in msp[4:6]] == [round(100 * near, 2), round(100 * far, 2)]


# ------------------------------------------------------------------------------- errors and config
def test_missing_list_is_one_error_naming_it(tmp_path):
    root = tmp_path / "openood"
    write_replica(root)
    (root / "benchmark_imglist" / "cifar10" / "test_tin.txt").unlink()
    cfg = load_config(write_config(tmp_path / "c.json", root, tmp_path / "run"), ["benchmark=openood_v1.5"])
    with pytest.raises(UserError, match=r"image list '.*benchmark_imglist/cifar10/test_tin\.txt' not found"):
        resolve_ood_sources(cfg, [], "cifar10")
    (root / "benchmark_imglist" / "cifar10" / "train_cifar10.txt").write_text("cifar10/train/0000.png\n")
    with pytest.raises(UserError, match=r"train_cifar10\.txt, line 1: expected '<path> <integer label>'"):
        load_split(cfg, train=True)
    (root / "benchmark_imglist" / "cifar10" / "train_cifar10.txt").write_text("cifar10/train/0000.png -1\n")
    with pytest.raises(UserError, match=r"has label -1, outside 0\.\.9 of cifar10"):
        load_split(cfg, train=True)


def test_config_keys_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'openood_root' is required with benchmark 'openood_v1.5'"):
        load_config(None, ["benchmark=openood_v1.5"], base={"id_dataset": "cifar10", "save_path": "r"})
    with pytest.raises(ConfigError, match=r"'benchmark' must be one of paper, imagenet_four, openood_v1.5, got 'openood'"):
        load_config(None, ["benchmark=openood"], base={"id_dataset": "cifar10", "save_path": "r"})
    cfg = load_config(None, ["benchmark=openood_v1.5", f"openood_root={tmp_path}"],
                      base={"id_dataset": "digits", "save_path": "r"})
    with pytest.raises(UserError, match=r"benchmark 'openood_v1.5' has no ID dataset 'digits'"):
        load_split(cfg, train=False)
