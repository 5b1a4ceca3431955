"""MNIST and Fashion-MNIST from IDX files the tests write (the format of yann.lecun.com/exdb/mnist),
grayscale end to end, and the three tools on them."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from featurenorm.cli import eval_main, select_main, train_main
from featurenorm.config import load_config
from featurenorm.data.datasets import luma, match_channels
from featurenorm.data.splits import load_split
from featurenorm.data.idx import find_idx_folder, load_idx, read_idx
from featurenorm.errors import UserError, run_cli
from featurenorm.models import build_model

SIDE = 28


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00 0x00 0x08 ndim, one big-endian uint32 per size, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", size) for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, train: bool, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if train else "t10k"
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def class_images(n: int, seed: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 images of 10 learnable classes: a bright bar whose row depends on the class, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, SIDE, SIDE)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + 2 * int(label) + offset
        images[i, row:row + 3, 4:24] = 230
    return images, labels


def write_set(folder: Path, train_n: int, test_n: int, seed: int, gz: bool = True, offset: int = 0) -> None:
    write_idx(folder, *class_images(train_n, seed, offset), train=True, gz=gz)
    write_idx(folder, *class_images(test_n, seed + 1, offset), train=False, gz=gz)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_returns_the_written_values(tmp_path, gz):
    images, labels = class_images(7, seed=3)
    write_idx(tmp_path, images, labels, train=False, gz=gz)
    suffix = ".gz" if gz else ""
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", 3), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", 1), labels)


def test_a_foreign_or_truncated_file_gets_one_line_naming_it(tmp_path):
    images, labels = class_images(4, seed=0)
    foreign = tmp_path / "foreign-idx3-ubyte"
    foreign.write_bytes(b"\x89PNG" + idx_bytes(images)[4:])
    with pytest.raises(UserError, match=r"foreign-idx3-ubyte") as err:
        read_idx(foreign, 3)
    assert "\n" not in str(err.value)
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(idx_bytes(images)[:-5])
    with pytest.raises(UserError, match=r"short-idx3-ubyte") as err:
        read_idx(truncated, 3)
    assert "\n" not in str(err.value)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path):
    images, labels = class_images(6, seed=0)
    write_idx(tmp_path, images, labels[:5], train=True, gz=False)
    write_idx(tmp_path, images, labels, train=False, gz=False)
    with pytest.raises(UserError, match=r"holds 6 images but .* 5 labels"):
        load_idx("mnist", tmp_path, train=True, download=False)


def test_flat_torchvision_and_debian_layouts_are_found(tmp_path, monkeypatch):
    write_set(tmp_path / "flat", 10, 10, seed=0, gz=True)
    write_set(tmp_path / "tv" / "FashionMNIST" / "raw", 10, 10, seed=0, gz=False)
    write_set(tmp_path / "root" / "fashion-mnist", 10, 10, seed=0)
    assert find_idx_folder("fashion_mnist", tmp_path / "flat") == tmp_path / "flat"
    assert find_idx_folder("fashion_mnist", tmp_path / "tv") == tmp_path / "tv" / "FashionMNIST" / "raw"
    assert find_idx_folder("fashion_mnist", tmp_path / "root") == tmp_path / "root" / "fashion-mnist"
    assert find_idx_folder("mnist", tmp_path / "tv") is None  # FashionMNIST/raw is not MNIST's folder
    from featurenorm.data import idx

    monkeypatch.setitem(idx.DEBIAN_FOLDERS, "fashion_mnist", tmp_path / "flat")
    assert find_idx_folder("fashion_mnist", tmp_path / "empty") == tmp_path / "flat"
    images, labels = load_idx("fashion_mnist", tmp_path / "empty", train=False, download=False)
    assert images.shape == (10, 1, SIDE, SIDE) and images.dtype == torch.uint8
    np.testing.assert_array_equal(images[:, 0].numpy(), class_images(10, seed=1)[0])


def test_missing_files_say_where_they_were_looked_for_and_how_to_download(tmp_path):
    with pytest.raises(UserError, match=r"set download true") as err:
        load_idx("mnist", tmp_path / "nothing", train=True, download=False)
    assert str(tmp_path / "nothing") in str(err.value) and "\n" not in str(err.value)


def test_luma_equals_pil_convert_l():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    rgb[0, :3] = [[255, 255, 255], [0, 0, 0], [128, 64, 32]]
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    got = luma(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    np.testing.assert_array_equal(got, expected)
    gray = torch.from_numpy(expected)[None, None]
    assert torch.equal(match_channels(gray, 3), gray.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("arch", ["resnet18", "wrn28_10", "vgg11"])
def test_in_channels_reach_the_first_convolution(arch):
    model = build_model(arch, 10, width=0.0625, in_channels=1)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1


def paper_feature_norm(model: torch.nn.Module, block: str, images: torch.Tensor) -> np.ndarray:
    """FeatureNorm from the paper's formula, through a hook of this test's own:
    mean over channels of the L2 norm over positions of ReLU(block output)."""
    captured = {}
    handle = dict(model.named_modules())[block].register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.inference_mode():
        model(images)
    handle.remove()
    out = captured["out"].double()
    return torch.sqrt((out.clamp(min=0) ** 2).flatten(2).sum(2)).mean(1).numpy()


def test_fashion_mnist_trained_selected_and_scored_through_the_tools(tmp_path, capsys):
    from PIL import Image

    write_set(tmp_path / "data" / "fashion-mnist", 200, 60, seed=10, gz=True)
    write_set(tmp_path / "data" / "MNIST" / "raw", 20, 40, seed=20, gz=False, offset=5)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    rgb_pixels = np.random.default_rng(5).integers(0, 256, size=(12, SIDE, SIDE, 3), dtype=np.uint8)
    for i, pixels in enumerate(rgb_pixels):
        Image.fromarray(pixels, "RGB").save(rgb / f"{i:02d}.png")
    config = {"id_dataset": "fashion_mnist", "data_root": str(tmp_path / "data"), "mnist": str(tmp_path / "data"),
              "arch": "resnet18", "width": 0.0625, "image_size": SIDE, "crop_padding": 2, "epochs": 1,
              "batch_size": 50, "lr": 0.05, "mean": [0.25], "std": [0.35], "device": "cpu", "num_workers": 0,
              "save_path": str(tmp_path / "run"), "pseudo_ood": ["jigsaw", "noise"], "fit_samples": 100}
    path = tmp_path / "fm.json"
    path.write_text(json.dumps(config))
    assert run_cli(train_main, ["--config", str(path), "--no-progress"]) == 0
    assert run_cli(select_main, ["--config", str(path), "--no-progress"]) == 0
    assert run_cli(eval_main, ["--config", str(path), "--no-progress", "--methods", "featurenorm,msp,knn",
                               "--all-blocks", "--save-scores", "--ood", f"rgb={rgb}"]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "ood_results.json").read_text())
    assert results["conversions"] == {"rgb": "RGB converted to grayscale (ITU-R 601-2 luma, as PIL's convert('L'))"}
    assert "rgb" in capsys.readouterr().out

    cfg = load_config(str(path))
    from featurenorm.training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run / "last.pt")
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and cfg.channels == 1
    block = json.loads((run / "block_selection.json").read_text())["selected"]["name"]
    assert results["block"]["name"] == block

    def normalized(uint8: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(uint8).double() / 255 - 0.25) / 0.35).float()[:, None]

    id_images = normalized(class_images(60, seed=11)[0])
    mnist_images = normalized(class_images(40, seed=21, offset=5)[0])
    gray = np.asarray([np.asarray(Image.fromarray(p, "RGB").convert("L")) for p in rgb_pixels])
    scores = np.load(run / "scores.npz")
    model.eval()
    for name, images in (("id", id_images), ("mnist", mnist_images), ("rgb", normalized(gray))):
        np.testing.assert_allclose(scores[f"featurenorm.{name}"], paper_feature_norm(model, block, images),
                                   rtol=1e-4, atol=1e-5)
    for method in ("featurenorm", "msp", "knn"):
        for name in ("mnist", "rgb"):
            id_s, ood_s = scores[f"{method}.id"], scores[f"{method}.{name}"]
            expected = roc_auc_score(np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s])
            assert results["methods"][method][name]["auroc"] == pytest.approx(expected, abs=1e-12)
    per_block_mnist = results["per_block"][block]["mnist"]["auroc"]
    assert per_block_mnist == pytest.approx(results["methods"]["featurenorm"]["mnist"]["auroc"], abs=1e-12)
    with torch.inference_mode():
        accuracy = (model(id_images).argmax(1).numpy() == class_images(60, seed=11)[1]).mean()
    assert results["id_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert load_split(cfg, train=False).images.shape[1] == 1
