"""featurenorm.data.datasets and loaders, on data written by the tests in the real on-disk formats."""
from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurenorm.config import from_dict
from featurenorm.data.datasets import Split, folder_samples, load_digits, num_classes_of, resolve_id_dataset
from featurenorm.data.splits import load_split
from featurenorm.data.loaders import DeviceLoader, FolderLoader, epoch_generator, make_loader
from featurenorm.errors import UserError


def config(id_dataset: str | Path, **overrides):
    return from_dict({"id_dataset": str(id_dataset), "save_path": "unused", "device": "cpu", "num_workers": 0,
                      **overrides})


def as_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_batches_round_trip(tmp_path, make_cifar):
    written = make_cifar(tmp_path / "mydata", "cifar10", per_file=3)
    cfg = config(tmp_path / "mydata", num_classes=10)
    assert resolve_id_dataset(cfg) == ("cifar10", tmp_path / "mydata")
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert (train.name, train.images.shape, train.images.dtype) == ("cifar10", (15, 3, 32, 32), torch.uint8)
    assert test.images.shape == (3, 3, 32, 32)
    # data rows are CHW-ordered: row[0:1024] red, [1024:2048] green, [2048:3072] blue
    assert torch.equal(train.images, as_nchw(written.train_images))
    assert torch.equal(test.images, as_nchw(written.test_images))
    assert train.labels.tolist() == written.train_labels.tolist() and train.labels.dtype == torch.int64
    assert test.labels.tolist() == written.test_labels.tolist()
    assert train.classes == [f"class{i}" for i in range(10)]
    assert len(train) == 15


def test_cifar10_channel_layout_by_hand(tmp_path):
    # one image whose red plane is 10, green 20, blue 30, except pixel (row 1, col 2) of green = 99
    folder = tmp_path / "d" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[1024 + 1 * 32 + 2] = 99
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": row[None], "labels": [7]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list("abcdefghij")}, f, protocol=2)
    image = load_split(config(tmp_path / "d"), train=False).images[0]
    assert image[:, 0, 0].tolist() == [10, 20, 30]
    assert image[1, 1, 2].item() == 99 and image[1, 2, 1].item() == 20


def test_cifar100_round_trip(tmp_path, make_cifar):
    written = make_cifar(tmp_path / "c", "cifar100", per_file=4)
    cfg = config(tmp_path / "c")
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert (train.name, train.images.shape, test.images.shape) == ("cifar100", (4, 3, 32, 32), (4, 3, 32, 32))
    assert torch.equal(train.images, as_nchw(written.train_images))
    assert train.labels.tolist() == written.train_labels.tolist()  # the fine labels
    assert test.labels.tolist() == written.test_labels.tolist()
    assert train.classes == [f"fine{i:02d}" for i in range(100)]
    assert num_classes_of(cfg) == 100


def test_cifar_by_name_lives_under_data_root(tmp_path, make_cifar):
    written = make_cifar(tmp_path / "data" / "cifar10", "cifar10", per_file=1)
    cfg = config("cifar10", data_root=str(tmp_path / "data"))
    assert resolve_id_dataset(cfg) == ("cifar10", tmp_path / "data" / "cifar10")
    assert torch.equal(load_split(cfg, train=False).images, as_nchw(written.test_images))


def test_dataset_key_overrides_recognition(tmp_path, make_cifar):
    make_cifar(tmp_path / "plain", "cifar100", per_file=1)
    assert resolve_id_dataset(config(tmp_path / "plain", dataset="cifar100")) == ("cifar100", tmp_path / "plain")
    assert resolve_id_dataset(config(tmp_path / "x", dataset="digits")) == ("digits", tmp_path / "x")
    assert resolve_id_dataset(config("cifar10", dataset="cifar10", data_root="/r")) == ("cifar10", Path("/r/cifar10"))
    with pytest.raises(UserError, match=r"config key 'dataset' must be one of cifar10, cifar100, mnist, "
                                        r"fashion_mnist, digits, imagefolder, imagenet, got 'svhn'"):
        resolve_id_dataset(config(tmp_path, dataset="svhn"))


def test_folder_contents_win_over_folder_name(tmp_path, make_cifar):
    make_cifar(tmp_path / "cifar10", "cifar100", per_file=1)  # misnamed folder holding CIFAR-100
    assert resolve_id_dataset(config(tmp_path / "cifar10")) == ("cifar100", tmp_path / "cifar10")


@pytest.mark.parametrize("folder, kind", [("cifar-10", "cifar10"), ("my_CIFAR10_data", "cifar10"),
                                          ("cifar-100", "cifar100"), ("Cifar_100", "cifar100")])
def test_folder_name_rule(tmp_path, folder, kind):
    assert resolve_id_dataset(config(tmp_path / folder)) == (kind, tmp_path / folder)


def test_missing_cifar_without_download_says_where_and_how(tmp_path):
    cfg = config(tmp_path / "cifar-100")
    with pytest.raises(UserError) as err:
        load_split(cfg, train=True)
    assert str(err.value) == (f"cifar100 not found at '{tmp_path / 'cifar-100' / 'cifar-100-python'}'; "
                              "set \"download\": true in the config (or --set download=true), "
                              "or run scripts/download_data.sh")


def test_incomplete_or_corrupt_cifar_is_a_user_error(tmp_path, make_cifar):
    make_cifar(tmp_path / "a", "cifar10", per_file=1)
    (tmp_path / "a" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"cifar10 at '.*cifar-10-batches-py' is incomplete or corrupt .*; "
                                        r"delete it and download again"):
        load_split(config(tmp_path / "a"), train=True)

    make_cifar(tmp_path / "b", "cifar10", per_file=1)
    batch = tmp_path / "b" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated
    with pytest.raises(UserError, match=r"is incomplete or corrupt"):
        load_split(config(tmp_path / "b"), train=True)

    make_cifar(tmp_path / "c", "cifar10", per_file=1)
    (tmp_path / "c" / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(UserError, match=r"is incomplete or corrupt \(RuntimeError: batches.meta is missing\)"):
        load_split(config(tmp_path / "c"), train=False)


def test_num_classes_mismatch(tmp_path, make_cifar):
    make_cifar(tmp_path / "d", "cifar10", per_file=1)
    with pytest.raises(UserError) as err:
        load_split(config(tmp_path / "d", num_classes=100), train=True)
    assert str(err.value) == (f"num_classes is 100 in the config but cifar10 at '{tmp_path / 'd'}' has 10 classes; "
                              "set num_classes to 10")


def test_unrecognised_folder_and_missing_path(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(UserError, match=r"id_dataset '.*stuff' holds neither cifar-10-batches-py/, cifar-100-python/ "
                                        r"nor train/ and test/ \(or val/\) class folders"):
        resolve_id_dataset(config(tmp_path / "stuff"))
    with pytest.raises(UserError, match=r"id_dataset '.*nowhere' not found; fix the path, or use 'digits'"):
        resolve_id_dataset(config(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------- ImageFolder
def read_png(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def test_imagefolder_reads_pngs_exactly(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path / "pets", classes=("cat", "dog"), n_train=3, n_test=2, size=(16, 16))
    cfg = config(root, image_size=16, mean=[0, 0, 0], std=[1, 1, 1], loader="torch", num_classes=2)
    assert resolve_id_dataset(cfg) == ("imagefolder", root)
    train = load_split(cfg, train=True)
    assert (train.name, train.folder, train.classes, len(train)) == ("imagefolder", root / "train", ["cat", "dog"], 6)
    assert num_classes_of(cfg) == 2
    test = load_split(cfg, train=False)
    expected_paths = sorted((root / "test" / "cat").glob("*.png")) + sorted((root / "test" / "dog").glob("*.png"))
    assert folder_samples(test.folder) == [(str(p), int("dog" in p.parent.name)) for p in expected_paths]
    loader = make_loader(cfg, test, train=False, device=torch.device("cpu"), batch_size=3)
    assert isinstance(loader, FolderLoader)
    xs, ys = zip(*loader)
    expected = torch.stack([read_png(p) for p in expected_paths]).float() / 255  # mean 0, std 1
    torch.testing.assert_close(torch.cat(xs), expected, rtol=0, atol=1e-7)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1]


def test_imagefolder_normalizes_and_converts_modes(tmp_path, make_png_folder):
    gray = make_png_folder(tmp_path / "r" / "test" / "a", 1, size=(8, 8), mode="L")[0]
    rgba = make_png_folder(tmp_path / "r" / "test" / "b", 1, size=(8, 8), mode="RGBA")[0]
    make_png_folder(tmp_path / "r" / "train" / "a", 1, size=(8, 8))
    make_png_folder(tmp_path / "r" / "train" / "b", 1, size=(8, 8))
    (tmp_path / "r" / "test" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "r" / "test" / "a" / ".hidden.png").write_bytes(b"")
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]
    cfg = config(tmp_path / "r", image_size=8, mean=mean, std=std)
    split = load_split(cfg, train=False)
    x, y = next(iter(make_loader(cfg, split, train=False, device=torch.device("cpu"))))
    assert y.tolist() == [0, 1]
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(x[0], (read_png(gray).float() / 255 - m) / s)
    torch.testing.assert_close(x[1], (read_png(rgba).float() / 255 - m) / s)  # alpha dropped


def test_imagefolder_errors(tmp_path, make_png_folder):
    (tmp_path / "only_test" / "test" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"ImageFolder root '.*only_test' has no train/ folder; "
                                        r"it needs train/<class>/ and test/<class>/ subfolders"):
        load_split(config(tmp_path / "only_test"), train=True)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    make_png_folder(tmp_path / "flat" / "test", 2)  # images without class folders
    with pytest.raises(UserError, match=r"'.*flat/train' has no class folders; put images in .*flat/train/<class>/"):
        load_split(config(tmp_path / "flat"), train=True)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "a" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"no images found under '.*empty/train' \(extensions: .jpg, .jpeg, .png"):
        load_split(config(tmp_path / "empty"), train=True)


def test_imagefolder_num_classes_mismatch(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path / "three", classes=("a", "b", "c"), n_train=1, n_test=1)
    with pytest.raises(UserError, match=r"num_classes is 10 in the config but imagefolder at '.*three' has 3 classes; "
                                        r"set num_classes to 3"):
        load_split(config(root, num_classes=10), train=True)


def test_imagefolder_samples_are_sorted_and_nested_folders_count(tmp_path, make_png_folder):
    root = tmp_path / "n" / "train"
    make_png_folder(root / "a" / "deep", 2)
    make_png_folder(root / "a", 1, prefix="top")
    for name in ("c", "b", "a", "z", "y"):  # created out of order: the listing order must not leak through
        make_png_folder(root / "b", 1, prefix=name)
    assert folder_samples(root) == (
        [(str(root / "a" / "top000.png"), 0), (str(root / "a" / "deep" / "img000.png"), 0),
         (str(root / "a" / "deep" / "img001.png"), 0)]
        + [(str(root / "b" / f"{name}000.png"), 1) for name in ("a", "b", "c", "y", "z")])


# ------------------------------------------------------------------------------------------ digits
def test_digits_split_sizes_and_format():
    train, test = load_digits(True), load_digits(False)
    assert (train.images.shape, test.images.shape) == ((1437, 3, 32, 32), (360, 3, 32, 32))
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey: R == G == B
    assert train.classes == [str(i) for i in range(10)]
    again = load_digits(True)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    cfg = config("digits")
    assert resolve_id_dataset(cfg)[0] == "digits" and num_classes_of(cfg) == 10
    assert torch.equal(load_split(cfg, train=False).images, test.images)


def test_digits_split_is_a_stratified_partition_of_the_bundled_data():
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # at 8x8 no resizing happens: each pixel is v / 16 * 255 for v in 0..16
    expected = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    full = collections.Counter((img.tobytes(), int(t)) for img, t in zip(expected, bunch.target))
    parts = collections.Counter()
    for split in (load_digits(True, image_size=8), load_digits(False, image_size=8)):
        parts.update((img[0].numpy().tobytes(), int(t)) for img, t in zip(split.images, split.labels))
    assert parts == full
    test_counts = np.bincount(load_digits(False, image_size=8).labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(bunch.target)) <= 1)


def test_digits_upsampling_is_bilinear():
    small, big = load_digits(False, image_size=8), load_digits(False, image_size=16)
    upsampled = F.interpolate(small.images[:5, :1].float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    # the 8x8 images were rounded to uint8 first, so allow one grey level
    assert (upsampled * 255 - big.images[:5, :1].float()).abs().max() <= 1.0


# --------------------------------------------------------------------------------------- loaders
def random_uint8(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def device_loader(images: torch.Tensor, train: bool, **options) -> DeviceLoader:
    options = {"batch_size": 4, "mean": [0, 0, 0], "std": [1, 1, 1], "device": torch.device("cpu"), "seed": 3,
               **options}
    return DeviceLoader(images, torch.arange(len(images)), train=train, **options)


def collect(loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_device_loader_normalization_and_eval_order():
    images = random_uint8(10)
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
    loader = device_loader(images, False, mean=mean, std=std)
    assert len(loader) == 3  # 4 + 4 + 2
    x, y = collect(loader, 5)
    assert y.tolist() == list(range(10))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - m) / s)
    assert [len(batch) for batch, _ in loader] == [4, 4, 2]


def test_device_loader_augmentation_is_deterministic_per_seed_and_epoch():
    images = random_uint8(10)
    loader = device_loader(images, True, crop_padding=2, hflip=True)
    history = [collect(loader, e) for e in range(4)]  # epochs 0..3 in sequence
    fresh = device_loader(images, True, crop_padding=2, hflip=True)
    x3, y3 = collect(fresh, 3)  # straight to epoch 3
    assert torch.equal(x3, history[3][0]) and torch.equal(y3, history[3][1])
    x3_again, _ = collect(fresh, 3)
    assert torch.equal(x3_again, x3)
    assert not torch.equal(history[2][0], history[3][0])
    other_seed = device_loader(images, True, crop_padding=2, hflip=True, seed=4)
    assert not torch.equal(collect(other_seed, 3)[0], x3)


def test_device_loader_crop_and_flip_unrolled():
    images, padding, seed, epoch, batch = random_uint8(6), 2, 3, 1, 4
    x, y = collect(device_loader(images, True, crop_padding=padding, hflip=True, batch_size=batch), epoch)
    # redraw the same numbers in the loader's order: permutation, then per batch dy, dx, flip
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(len(images), generator=generator)
    assert y.tolist() == order.tolist()
    expected = []
    for start in range(0, len(images), batch):
        index = order[start:start + batch]
        dy = torch.randint(0, 2 * padding + 1, (len(index),), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (len(index),), generator=generator)
        flip = torch.rand(len(index), generator=generator) < 0.5
        for i, top, left, mirrored in zip(index.tolist(), dy.tolist(), dx.tolist(), flip.tolist()):
            padded = torch.zeros(3, 8 + 2 * padding, 8 + 2 * padding, dtype=torch.uint8)
            padded[:, padding:padding + 8, padding:padding + 8] = images[i]
            crop = padded[:, top:top + 8, left:left + 8]
            expected.append(crop.flip(-1) if mirrored else crop)
    torch.testing.assert_close(x, torch.stack(expected).float() / 255, rtol=0, atol=1e-7)


def test_device_loader_without_augmentation_only_shuffles():
    images = random_uint8(9)
    x, y = collect(device_loader(images, True, crop_padding=0, hflip=False), 2)
    assert sorted(y.tolist()) == list(range(9)) and y.tolist() != list(range(9))
    torch.testing.assert_close(x, images[y].float() / 255, rtol=0, atol=1e-7)


def test_device_loader_resumes_mid_epoch_and_shards():
    images = random_uint8(12)
    loader = device_loader(images, True, crop_padding=1)
    loader.set_epoch(2)
    full = list(loader)
    rest = list(loader.iterate(start_step=2))
    assert len(rest) == 1 and torch.equal(rest[0][0], full[2][0]) and torch.equal(rest[0][1], full[2][1])
    shards = [device_loader(images, True, crop_padding=1, rank=r, world_size=2) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(2)
    for (x0, y0), (x1, y1), (x, y) in zip(*shards, full):
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2]) and torch.equal(y0, y[0::2])


def test_device_loader_resizes_to_image_size():
    images = random_uint8(2, size=8)
    x, _ = collect(device_loader(images, False, image_size=16), 0)
    expected = F.interpolate(images.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, expected)


def test_make_loader_choice(tmp_path):
    split = Split("digits", images=random_uint8(5), labels=torch.zeros(5, dtype=torch.long))
    cpu = torch.device("cpu")
    loader = make_loader(config("digits", eval_batch_size=2, batch_size=3), split, train=False, device=cpu)
    assert isinstance(loader, DeviceLoader) and loader.batch_size == 2
    assert make_loader(config("digits", batch_size=3), split, train=True, device=cpu).batch_size == 3
    torch_loader = make_loader(config("digits", loader="torch", image_size=8), split, train=False, device=cpu)
    assert isinstance(torch_loader, FolderLoader)
    x, _ = collect(torch_loader, 0)
    # the PIL path and the device path agree on the same arrays
    torch.testing.assert_close(x, (split.images.float() / 255 - 0.5) / 0.5)


def test_folder_loader_shuffle_is_deterministic_per_seed_and_epoch(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path / "f", classes=("a", "b"), n_train=6, n_test=1, size=(8, 8))
    cfg = config(root, image_size=8, crop_padding=0, hflip=False, batch_size=4, seed=1)
    split = load_split(cfg, train=True)

    def order(epoch: int) -> list[int]:
        loader = make_loader(cfg, split, train=True, device=torch.device("cpu"))
        x, _ = collect(loader, epoch)
        # identify each image by its pixels: the position of the matching unshuffled image
        eval_x, _ = collect(make_loader(cfg, split, train=False, device=torch.device("cpu")), 0)
        return [int((eval_x == xi).flatten(1).all(1).nonzero()) for xi in x]

    first = order(1)
    assert sorted(first) == list(range(12))
    assert order(1) == first
    assert order(2) != first
