"""OOD sources: resolving config keys and --ood specs, reading folders/SVHN/CIFAR, sharding."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featurenorm.config import Config
from featurenorm.benchmarks import BENCHMARKS, IdProtocol
from featurenorm.data.images import UnreadableImagesWarning, describe_unreadable
from featurenorm.data.ood import (OODSource, check_ood_source, open_ood, parse_ood_spec, resolve_ood_sources,
                                  subsample_paths)
from featurenorm.runtime import merge_in_order, shard
from featurenorm.errors import UserError

SIZE = 8


def make_cfg(tmp_path: Path, **overrides) -> Config:
    """A CPU config with mean = std = 0.5, so that a pixel p maps to 2 * p / 255 - 1."""
    base = dict(id_dataset="digits", save_path=str(tmp_path / "run"), image_size=SIZE, num_workers=0,
                eval_batch_size=4, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    return Config(**{**base, **overrides})


def normalized(rgb) -> torch.Tensor:
    """(3,) expected value of a constant 8-bit colour after normalization with mean = std = 0.5."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5) / 0.5


def solid(path: Path, mode: str, size: tuple[int, int], value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def collect(data) -> torch.Tensor:
    """The images of one pass, in yield order."""
    return collect_indexed(data)[0]


def collect_indexed(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, their positions in the set) of one pass."""
    batches = list(data)
    if not batches:
        return torch.zeros(0, 3, SIZE, SIZE), torch.zeros(0, dtype=torch.int64)
    return torch.cat([b[0] for b in batches]), torch.cat([b[2] for b in batches])


def paths_of(data) -> list[str]:
    return [path for path, _ in data.samples]


def write_svhn(root: Path, n: int, seed: int = 0) -> np.ndarray:
    """torchvision's SVHN layout: X (32, 32, 3, N) uint8, y (N, 1) labels 1..10. Returns X."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "test_32x32.mat", {"X": x, "y": y})
    return x


# --------------------------------------------------------------------------------------- resolve
def test_benchmark_tables_follow_the_paper_order():
    far = ["svhn", "textures", "lsun", "lsun-resize", "isun", "places365"]
    assert BENCHMARKS["paper"].datasets["cifar10"].ood == (*far, "cifar100")
    assert BENCHMARKS["paper"].datasets["cifar100"].ood == (*far, "cifar10")
    # the paper's ImageNet protocol (MOS's four subsets), in the paper's column order
    assert BENCHMARKS["imagenet_four"].datasets == {"imagenet": IdProtocol(ood=("inaturalist", "sun", "places", "textures"))}
    # OpenOOD v1.5's ImageNet-1K groups, Textures read from images_classic/
    from featurenorm.benchmarks import benchmark_entry

    entry = benchmark_entry("openood_v1.5", "imagenet")
    assert entry.groups == {"near": ("ssb_hard", "ninco"), "far": ("inaturalist", "textures", "openimage_o")}
    assert (entry.image_dir_of("ninco"), entry.image_dir_of("textures")) == ("images_largescale", "images_classic")
    assert entry.id_lists["test"] == "benchmark_imglist/imagenet/test_imagenet.txt"


def test_config_keys_resolve_in_benchmark_order(tmp_path):
    for name in ("textures", "isun", "lsun-resize", "places365", "svhn"):
        (tmp_path / name).mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"")
    (tmp_path / "c100" / "cifar-100-python").mkdir(parents=True)
    # assigned out of order: the result follows the table, not the config
    cfg = make_cfg(tmp_path, places365=str(tmp_path / "places365"), cifar100=str(tmp_path / "c100"),
                   isun=str(tmp_path / "isun"), textures=str(tmp_path / "textures"),
                   lsun_resize=str(tmp_path / "lsun-resize"), svhn=str(tmp_path / "svhn"))
    sources, skipped = resolve_ood_sources(cfg, [], "cifar10")
    assert [(s.name, s.kind, s.path, s.explicit) for s in sources] == [
        ("svhn", "svhn", tmp_path / "svhn", False),
        ("textures", "folder", tmp_path / "textures", False),
        ("lsun-resize", "folder", tmp_path / "lsun-resize", False),
        ("isun", "folder", tmp_path / "isun", False),
        ("places365", "folder", tmp_path / "places365", False),
        ("cifar100", "cifar100", tmp_path / "c100", False),
    ]
    assert skipped == {}


def test_missing_configured_path_is_skipped_with_reason(tmp_path):
    (tmp_path / "textures").mkdir()
    cfg = make_cfg(tmp_path, textures=str(tmp_path / "textures"), lsun="./no/such/lsun")
    sources, skipped = resolve_ood_sources(cfg, [], "digits")
    assert [s.name for s in sources] == ["textures"]
    assert skipped == {"lsun": "path ./no/such/lsun not found"}


def test_explicit_missing_path_raises(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_ood_sources(make_cfg(tmp_path), [f"textures={tmp_path / 'nope'}"], "digits")


def test_custom_spec_adds_a_set_and_named_spec_replaces_in_place(tmp_path):
    for name in ("svhn_imgs", "textures", "dtd2", "mine"):
        (tmp_path / name).mkdir()
    cfg = make_cfg(tmp_path, svhn=str(tmp_path / "svhn_imgs"), textures=str(tmp_path / "textures"),
                   lsun=str(tmp_path / "gone"))
    specs = [f"mine={tmp_path / 'mine'}", f"textures={tmp_path / 'dtd2'}", f"lsun={tmp_path / 'mine'}"]
    sources, skipped = resolve_ood_sources(cfg, specs, "cifar10")
    assert [(s.name, s.kind, s.path, s.explicit) for s in sources] == [
        # svhn folder without test_32x32.mat: a folder of images
        ("svhn", "folder", tmp_path / "svhn_imgs", False),
        ("textures", "folder", tmp_path / "dtd2", True),
        ("lsun", "folder", tmp_path / "mine", True),
        ("mine", "folder", tmp_path / "mine", True),
    ]
    assert skipped == {}  # the explicit lsun replaced the missing configured one


def test_specs_of_benchmark_sets_take_benchmark_order(tmp_path):
    specs = [f"extra={tmp_path}", f"isun={tmp_path}", f"places365={tmp_path}", f"svhn={tmp_path}"]
    sources, _ = resolve_ood_sources(make_cfg(tmp_path), specs, "cifar100")
    assert [s.name for s in sources] == ["svhn", "isun", "places365", "extra"]


@pytest.mark.parametrize("spec", ["just_a_path", "=./x", "name=", "two words=./x", "average=./x"])
def test_malformed_spec_raises(spec):
    with pytest.raises(UserError, match="--ood"):
        parse_ood_spec(spec)


def test_same_spec_name_twice_raises(tmp_path):
    with pytest.raises(UserError, match="twice"):
        resolve_ood_sources(make_cfg(tmp_path), [f"a={tmp_path}", f"a={tmp_path}"], "digits")


def test_cifar_near_ood_only_when_it_is_not_the_id_dataset(tmp_path):
    (tmp_path / "c10" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "c100" / "cifar-100-python").mkdir(parents=True)
    cfg = make_cfg(tmp_path, cifar10=str(tmp_path / "c10"), cifar100=str(tmp_path / "c100"))
    for id_kind, expected in (("cifar10", ["cifar100"]), ("cifar100", ["cifar10"]),
                              ("digits", ["cifar10", "cifar100"]), ("imagefolder", ["cifar10", "cifar100"])):
        sources, skipped = resolve_ood_sources(cfg, [], id_kind)
        assert [(s.name, s.kind) for s in sources] == [(n, n) for n in expected]
        assert skipped == ({id_kind: f"{id_kind} is the ID dataset"} if id_kind.startswith("cifar") else {})
    with pytest.raises(UserError, match="ID dataset"):
        resolve_ood_sources(cfg, [f"cifar10={tmp_path / 'c10'}"], "cifar10")


# --------------------------------------------------------------------------------------- folders
def test_any_mode_and_size_comes_out_normalized_rgb(tmp_path):
    root = tmp_path / "ood"
    root.mkdir()
    palette = Image.new("P", (5, 4), 0)
    palette.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    palette.save(root / "palette.png")
    transparent = Image.new("P", (5, 4), 0)
    transparent.putpalette([40, 50, 60] + [0, 0, 0] * 255)
    transparent.save(root / "palette_transparent.png", transparency=0)
    Image.fromarray(np.full((6, 7), 65535, dtype=np.uint16)).save(root / "gray16.png")
    solid(root / "rgb.png", "RGB", (9, 9), (255, 0, 128))
    solid(root / "gray.png", "L", (3, 5), 51)
    solid(root / "gray_alpha.png", "LA", (4, 4), (200, 77))
    solid(root / "rgba.png", "RGBA", (4, 4), (1, 2, 3, 4))
    solid(root / "tiny.png", "RGB", (1, 1), (0, 255, 0))
    solid(root / "nested" / "deeper" / "large.jpg", "RGB", (1000, 700), (0, 0, 0))
    (root / "notes.txt").write_text("not an image")
    (root / "nested" / "labels.csv").write_text("a,b\n")
    assert Image.open(root / "gray16.png").mode.startswith("I")  # really a 16-bit PNG
    assert Image.open(root / "palette_transparent.png").info["transparency"] == 0

    expected = {"palette.png": (10, 20, 30), "palette_transparent.png": (40, 50, 60), "gray16.png": (255,) * 3,
                "rgb.png": (255, 0, 128), "gray.png": (51,) * 3, "gray_alpha.png": (200,) * 3,
                "rgba.png": (1, 2, 3), "tiny.png": (0, 255, 0), "large.jpg": (0, 0, 0)}
    data = open_ood(OODSource("mine", "folder", root, explicit=True), make_cfg(tmp_path), "cpu")
    images, indices = collect_indexed(data)
    paths = paths_of(data)
    assert sorted(Path(p).name for p in paths) == sorted(expected)  # txt/csv ignored, nested found
    assert images.shape == (len(expected), 3, SIZE, SIZE) and images.dtype == torch.float32
    assert len(indices) == len(expected) and data.unreadable == []
    for row, index in enumerate(indices.tolist()):
        want = normalized(expected[Path(paths[index]).name]).view(3, 1, 1).expand(3, SIZE, SIZE)
        torch.testing.assert_close(images[row], want, atol=1e-6, rtol=0, msg=paths[index])
    # the 16-bit white is full scale, not clipped or wrapped
    assert images[paths.index(str(root / "gray16.png"))].eq(1.0).all()


def test_unreadable_files_are_skipped_listed_and_warned_once(tmp_path):
    root = tmp_path / "ood"
    solid(root / "a.png", "RGB", (6, 6), (255, 255, 255))
    (root / "b_corrupt.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    good = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(root / "c_truncated.png")
    whole = (root / "c_truncated.png").read_bytes()
    (root / "c_truncated.png").write_bytes(whole[:len(whole) // 2])
    solid(root / "d.png", "RGB", (6, 6), (0, 0, 0))
    solid(root / "e.png", "RGB", (6, 6), (255, 0, 255))

    data = open_ood(OODSource("mine", "folder", root, explicit=True), make_cfg(tmp_path, eval_batch_size=2), "cpu")
    assert len(data.positions) == 5  # listed, not yet read
    with pytest.warns(UnreadableImagesWarning) as caught:
        images, indices = collect_indexed(data)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "b_corrupt.png" in message and "c_truncated.png" in message and "skipped 2 unreadable" in message
    assert data.unreadable == [str(root / "b_corrupt.png"), str(root / "c_truncated.png")]
    assert indices.tolist() == [0, 3, 4]
    torch.testing.assert_close(images[:, :, 0, 0], torch.stack([normalized(c) for c in
                                                                ((255, 255, 255), (0, 0, 0), (255, 0, 255))]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass does not warn again
        assert collect(data).shape[0] == 3


def test_unreadable_message_lists_ten_then_counts():
    message = describe_unreadable("lsun", [f"f{i}.png" for i in range(13)])
    assert message == ("OOD set 'lsun': skipped 13 unreadable files: "
                       + ", ".join(f"f{i}.png" for i in range(10)) + " and 3 more")


def test_empty_folder_explicit_raises_configured_skipped(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="named with --ood has no images"):
        check_ood_source(OODSource("mine", "folder", empty, explicit=True))
    assert check_ood_source(OODSource("textures", "folder", empty)) == f"no images in {empty}"
    solid(empty / "sub" / "x.png", "L", (2, 2), 0)
    assert check_ood_source(OODSource("textures", "folder", empty, explicit=True)) is None


# ----------------------------------------------------------------------------------- SVHN, CIFAR
def test_svhn_mat_round_trips(tmp_path):
    from featurenorm.data.ood import load_svhn_test

    x = write_svhn(tmp_path / "svhn", 5)
    as_nchw = torch.from_numpy(x.transpose(3, 2, 0, 1).copy())  # (N, C, H, W), torchvision's layout
    assert torch.equal(load_svhn_test(tmp_path / "svhn"), as_nchw)

    cfg = make_cfg(tmp_path, image_size=32, svhn=str(tmp_path / "svhn"))
    (source,), _ = resolve_ood_sources(cfg, [], "cifar10")
    assert (source.kind, check_ood_source(source)) == ("svhn", None)
    data = open_ood(source, cfg, "cpu", batch_size=2)
    torch.testing.assert_close(collect(data), as_nchw.float() / 255 * 2 - 1)
    assert (len(data.positions), len(data)) == (5, 3)

    # another image_size: resized on the device, like the ID test arrays
    small = collect(open_ood(source, make_cfg(tmp_path, image_size=SIZE), "cpu"))
    want = F.interpolate(as_nchw.float() / 255 * 2 - 1, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(small, want)


def test_svhn_shards_are_strided(tmp_path):
    x = write_svhn(tmp_path / "svhn", 5)
    as_nchw = torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255 * 2 - 1
    cfg = make_cfg(tmp_path, image_size=32)
    source = OODSource("svhn", "svhn", tmp_path / "svhn")
    parts = [open_ood(source, cfg, "cpu", rank=r, world_size=2) for r in range(2)]
    torch.testing.assert_close(collect(parts[1]), as_nchw[1::2])
    merged = merge_in_order([collect_indexed(p) for p in parts])
    torch.testing.assert_close(merged, collect(open_ood(source, cfg, "cpu")))  # the 1-process order


def test_cifar_near_ood_reads_the_test_split(tmp_path, make_cifar):
    written = make_cifar(tmp_path / "c100", "cifar100", per_file=3)
    cfg = make_cfg(tmp_path, image_size=32, cifar100=str(tmp_path / "c100"))
    (source,), _ = resolve_ood_sources(cfg, [], "cifar10")
    images = collect(open_ood(source, cfg, "cpu"))
    want = torch.from_numpy(written.test_images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    torch.testing.assert_close(images, want)


# ----------------------------------------------------------------------------- places, sharding
def test_places365_subsample_is_fixed_and_sorted(tmp_path):
    root = tmp_path / "places"
    for i in range(12):
        solid(root / f"{(i * 7) % 12:02d}.png", "L", (2, 2), i)  # written out of order
    every = sorted(str(root / f"{i:02d}.png") for i in range(12))
    chosen = sorted(torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].tolist())
    expected = [every[i] for i in chosen]
    assert expected != every[:5]  # the test means something: the seeded choice is not the head

    for run_seed in (0, 1):
        cfg = make_cfg(tmp_path, places365_samples=5, seed=run_seed)
        data = open_ood(OODSource("places365", "folder", root), cfg, "cpu")
        assert paths_of(data) == expected
        assert collect(data).shape[0] == 5
    assert subsample_paths(every[:3], 5) == every[:3]  # fewer than asked: all of them
    # other sets are not subsampled
    assert len(paths_of(open_ood(OODSource("lsun", "folder", root), make_cfg(tmp_path, places365_samples=5),
                                 "cpu"))) == 12


def test_one_sharding_rule_and_one_merge():
    assert shard(10, 0, 2).tolist() == [0, 2, 4, 6, 8]
    assert shard(10, 1, 2).tolist() == [1, 3, 5, 7, 9]
    assert shard(5, 2, 3).tolist() == [2]
    scores = torch.arange(10) * 1.5
    parts = [(scores[shard(10, r, 2)], shard(10, r, 2)) for r in range(2)]
    torch.testing.assert_close(merge_in_order(parts), scores)
    # uneven shards (7 = 3 + 2 + 2), and positions with gaps after dropped images
    torch.testing.assert_close(merge_in_order([(torch.arange(7)[r::3], torch.arange(7)[r::3]) for r in range(3)]),
                               torch.arange(7))
    torch.testing.assert_close(merge_in_order([(torch.tensor([10., 40.]), torch.tensor([0, 4])),
                                               (torch.tensor([30.]), torch.tensor([3]))]), torch.tensor([10., 30., 40.]))
    with pytest.raises(ValueError):
        shard(10, 2, 2)


def test_folder_shards_cover_the_set_once(tmp_path):
    root = tmp_path / "ood"
    for i in range(10):
        solid(root / f"{i:02d}.png", "L", (3, 3), i * 20)
    cfg = make_cfg(tmp_path, eval_batch_size=4)
    source = OODSource("mine", "folder", root)
    parts = [collect_indexed(open_ood(source, cfg, "cpu", rank=r, world_size=2)) for r in range(2)]
    assert [index.tolist() for _, index in parts] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    merged = merge_in_order([(images[:, 0, 0, 0], index) for images, index in parts])
    np.testing.assert_allclose(merged.numpy(), np.arange(10) * 20 / 255 * 2 - 1, atol=1e-6)
