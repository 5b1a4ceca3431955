"""Shared fixtures: a trained digits run, and writers for ID data in its real on-disk formats.

- ``trained_digits_run`` (session): one epoch of resnet18 at width 0.0625 on the bundled digits,
  trained once and reused by the training, selection and evaluation tests. Treat it as read-only.
- ``digits_config``: a factory for fast digits configs (the same recipe, any overrides).
- ``make_png_folder`` / ``make_imagefolder``: PNG files and ``train/``/``test/`` class trees.
- ``make_cifar``: CIFAR-10/100 in torchvision's python-pickle batch format.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pytest

from featurenorm.config import Config, load_config
from featurenorm.core.block_rows import BlockRow

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "conf" / "digits.json"

# conf/digits.json, shrunk so that one epoch takes about a second on two CPU cores. The milestone
# at 1 changes nothing in a 1-epoch run, but a resumed second epoch then checks the lr schedule.
FAST_DIGITS = {"width": 0.0625, "epochs": 1, "batch_size": 128, "milestones": [1], "device": "cpu",
               "num_workers": 0}


class TrainedRun(NamedTuple):
    """A finished training run: its folder (last.pt, train_log.jsonl, config.json) and its config."""

    save_path: Path
    cfg: Config


def make_digits_config(save_path: str | Path, **overrides: Any) -> Config:
    """conf/digits.json with the :data:`FAST_DIGITS` recipe, then ``overrides`` (field names)."""
    base = {**json.loads(DIGITS_CONFIG.read_text()), **FAST_DIGITS, "save_path": str(save_path), **overrides}
    return load_config(None, base=base)


@pytest.fixture
def digits_config() -> Callable[..., Config]:
    """``digits_config(save_path, **overrides) -> Config``: the fast digits recipe."""
    return make_digits_config


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Train one epoch on digits (width 0.0625, seed 0, lr 0.05) once per session; read-only for tests.

    Returns ``(save_path, cfg)``; ``cfg.num_classes`` is 10 and ``save_path/last.pt`` is finished.
    """
    from featurenorm.training.loop import train

    save_path = tmp_path_factory.mktemp("trained_digits_run")
    cfg = make_digits_config(save_path)
    train(cfg, progress=False)
    return TrainedRun(save_path, cfg)


# ------------------------------------------------------------------------------------------ images
def write_pngs(root: str | Path, n: int, size: tuple[int, int] = (16, 16), mode: str = "RGB",
               seed: int = 0, prefix: str = "img") -> list[Path]:
    """Write ``n`` PNGs of random pixels into ``root`` as ``{prefix}{i:03d}.png``.

    Args:
        size: (width, height) in pixels.
        mode: PIL mode: "RGB", "L" or "RGBA".
    Returns:
        The written paths, in name order.
    """
    from PIL import Image

    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        path = root / f"{prefix}{i:03d}.png"
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
        paths.append(path)
    return paths


def write_imagefolder(root: str | Path, classes: Sequence[str] = ("cat", "dog"), n_train: int = 6,
                      n_test: int = 3, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` with random RGB pixels."""
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            write_pngs(root / split / name, n, size, seed=seed + 1000 * c + (0 if split == "train" else 500))
    return root


@pytest.fixture
def make_png_folder() -> Callable[..., list[Path]]:
    """``make_png_folder(root, n, size=(16, 16), mode="RGB", seed=0) -> [paths]``."""
    return write_pngs


@pytest.fixture
def make_imagefolder() -> Callable[..., Path]:
    """``make_imagefolder(root, classes=("cat", "dog"), n_train=6, n_test=3, size=(16, 16)) -> root``."""
    return write_imagefolder


# ------------------------------------------------------------------------------------------- CIFAR
class CifarData(NamedTuple):
    """What :func:`write_cifar` wrote: images (N, 32, 32, 3) uint8 in file order, labels (N,), class names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def _dump(path: Path, obj: dict[str, Any]) -> None:
    # The real files are Python 2 pickles; torchvision reads them with encoding="latin1", which
    # turns their keys into str. Protocol 2 with str keys is what that reader sees.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: str | Path, kind: str = "cifar10", per_file: int = 3, seed: int = 0) -> CifarData:
    """Write a small CIFAR-10 or CIFAR-100 in the python-batch format under ``root``.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``
    (keys ``data`` (N, 3072) uint8 in CHW order, ``labels``; ``label_names``).
    CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta``
    (keys ``data``, ``fine_labels``, ``coarse_labels``; ``fine_label_names``).
    """
    rng = np.random.default_rng(seed)
    num_classes = 10 if kind == "cifar10" else 100
    if kind == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        label_key, meta_file, meta = "labels", "batches.meta", {"label_names": [f"class{i}" for i in range(10)]}
    else:
        folder = Path(root) / "cifar-100-python"
        train_files, test_files = ["train"], ["test"]
        label_key, meta_file = "fine_labels", "meta"
        meta = {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]}
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    for split, files in (("train", train_files), ("test", test_files)):
        for name in files:
            rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
            entry: dict[str, Any] = {"batch_label": name, "data": rows, label_key: labels,
                                     "filenames": [f"{name}_{i}.png" for i in range(per_file)]}
            if kind == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in labels]
            _dump(folder / name, entry)
            written[split][0].append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            written[split][1].extend(labels)
    _dump(folder / meta_file, meta)
    names = meta["label_names"] if kind == "cifar10" else meta["fine_label_names"]
    return CifarData(np.concatenate(written["train"][0]), np.array(written["train"][1]),
                     np.concatenate(written["test"][0]), np.array(written["test"][1]), list(names))


@pytest.fixture
def make_cifar() -> Callable[..., CifarData]:
    """``make_cifar(root, kind="cifar10", per_file=3, seed=0) -> CifarData``."""
    return write_cifar


@pytest.fixture
def one_torch_thread():
    """In-process training on one thread: the two cores are shared with the CLIs a test starts, and
    two OpenMP threads on a busy core are several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _kind_rows(aurocs: dict[str, list[float]], ratios: list[float] | None = None) -> list[BlockRow]:
    """Block rows holding each kind's AUROC per block (NormRatio 1 unless given for the jigsaw)."""
    count = len(next(iter(aurocs.values())))
    ratios = ratios or [1.0] * count
    return [BlockRow.from_dict({"index": i, "name": f"block{i}", "shape": [4], "norm_ratio": ratios[i],
                                "id_norm_mean": 1.0, "jigsaw_norm_mean": 1.0, "jigsaw_auroc": aurocs["jigsaw"][i],
                                "pseudo_ood": {kind: {"norm_ratio": ratios[i] if kind == "jigsaw" else 1.0,
                                                      "norm_mean": 1.0, "auroc": values[i]}
                                               for kind, values in aurocs.items()}}) for i in range(count)]


@pytest.fixture
def kind_rows() -> Callable[..., list]:
    """Hand-made block rows (``BlockRow``): ``kind_rows({"jigsaw": [aurocs per block], ...}, ratios=...)``."""
    return _kind_rows
