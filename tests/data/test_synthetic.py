"""Synthetic OOD sets for the offline quick start: shape, content, determinism, reuse."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurenorm.data.images import list_images
from featurenorm.data.synthetic import (SYNTHETIC_SETS, digits_style, upsample_like_digits,
                                        write_synthetic_ood)

COUNT, SIZE = 6, 20


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, write_synthetic_ood(root, image_size=SIZE, count=COUNT, seed=3)


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        return np.asarray(img)


def test_four_folders_of_count_pngs(written):
    root, folders = written
    assert list(folders) == ["photos", "letters", "gaussian_noise", "uniform_noise"] == list(SYNTHETIC_SETS)
    for name, folder in folders.items():
        assert folder == root / name
        files = list_images(folder)
        assert [f.rsplit("/", 1)[1] for f in files] == [f"{i:05d}.png" for i in range(COUNT)]
        for f in files:
            pixels(f)


def test_same_seed_same_bytes_other_seed_differs(written, tmp_path):
    root, folders = written
    again = write_synthetic_ood(tmp_path / "again", image_size=SIZE, count=COUNT, seed=3)
    other = write_synthetic_ood(tmp_path / "other", image_size=SIZE, count=COUNT, seed=4)
    for name in SYNTHETIC_SETS:
        for i in range(COUNT):
            file = f"{i:05d}.png"
            assert (again[name] / file).read_bytes() == (folders[name] / file).read_bytes()
        assert any((other[name] / f"{i:05d}.png").read_bytes() != (folders[name] / f"{i:05d}.png").read_bytes()
                   for i in range(COUNT))


def test_existing_sets_are_reused_and_resized_sets_rewritten(tmp_path):
    folders = write_synthetic_ood(tmp_path, image_size=SIZE, count=COUNT)
    marker = folders["letters"] / "00000.png"
    stamp = marker.stat().st_mtime_ns
    write_synthetic_ood(tmp_path, image_size=SIZE, count=COUNT)
    assert marker.stat().st_mtime_ns == stamp  # reused, not rewritten
    write_synthetic_ood(tmp_path, image_size=SIZE, count=3)
    assert [p.rsplit("/", 1)[1] for p in list_images(folders["letters"])] == ["00000.png", "00001.png", "00002.png"]


def test_noise_statistics(tmp_path):
    from scipy.stats import norm

    folders = write_synthetic_ood(tmp_path, image_size=32, count=40)
    gauss = np.stack([pixels_any(p) for p in list_images(folders["gaussian_noise"])]) / 255.0
    uniform = np.stack([pixels_any(p) for p in list_images(folders["uniform_noise"])]) / 255.0
    # 40 * 32 * 32 * 3 = 122880 draws: the sample moments sit close to the targets
    # clipping at 0 and 1 is clipping Z ~ N(0, 1) at c = 2 standard deviations:
    # Var = (2 Phi(c) - 1) - 2 c phi(c) + c^2 * 2 (1 - Phi(c)) = 0.9205, so std = 0.25 * 0.9594 = 0.2399
    c = 2.0
    clipped_var = (2 * norm.cdf(c) - 1) - 2 * c * norm.pdf(c) + c**2 * 2 * norm.sf(c)
    assert abs(gauss.mean() - 0.5) < 0.005 and abs(gauss.std() - 0.25 * np.sqrt(clipped_var)) < 0.003
    assert gauss.min() == 0.0 and gauss.max() == 1.0
    assert abs(uniform.mean() - 0.5) < 0.005 and abs(uniform.std() - np.sqrt((256**2 - 1) / 12) / 255) < 0.005
    # colour noise: the channels differ
    assert (gauss[..., 0] != gauss[..., 1]).mean() > 0.9


def pixels_any(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_photos_are_resized_crops_of_the_sample_photos(written):
    from sklearn.datasets import load_sample_images

    _, folders = written
    photos = load_sample_images().images
    # unrolled: the draws of the first two crops for seed 3 (stream [seed, set index 0])
    rng = np.random.default_rng([3, 0])
    for i in range(2):
        photo = photos[rng.integers(2)]
        side = int(rng.integers(24, 49))
        top, left = int(rng.integers(photo.shape[0] - side + 1)), int(rng.integers(photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
        np.testing.assert_array_equal(pixels(folders["photos"] / f"{i:05d}.png"), np.asarray(crop))


def test_letters_are_white_on_black_gray_images(written):
    _, folders = written
    letters = [pixels(path) for path in list_images(folders["letters"])]
    for img in letters:
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        assert (img[..., 0] == 0).mean() > 0.15 and img.max() >= 200  # black background (as digits), bright strokes
    assert len({img.tobytes() for img in letters}) == COUNT  # A, B, C, ... differ


def test_letters_follow_the_uci_digits_recipe(written):
    from featurenorm.data.synthetic import _bitmap_font, letter_glyph

    _, folders = written
    font = _bitmap_font()
    # unrolled for the first two images (A, then B), seed 3, stream [seed, set index 1]
    rng = np.random.default_rng([3, 1])
    for i, letter in enumerate("AB"):
        glyph = letter_glyph(letter, font)
        height = int(rng.integers(16, 25))
        width = min(24, round(glyph.shape[1] * height / glyph.shape[0]))
        scaled = np.asarray(Image.fromarray(glyph).resize((width, height), Image.NEAREST))
        dy, dx = rng.integers(-2, 3, size=2)
        top, left = (32 - height) // 2 + dy, (32 - width) // 2 + dx
        canvas = np.zeros((32, 32), dtype=bool)
        canvas[top:top + height, left:left + width] = scaled
        expected = upsample_like_digits(digits_style(canvas), SIZE)
        np.testing.assert_array_equal(pixels(folders["letters"] / f"{i:05d}.png"), expected)


def test_digits_style_counts_on_pixels_per_4x4_block():
    canvas = np.zeros((32, 32), dtype=bool)
    canvas[0:4, 0:4] = True              # full block -> 16/16
    canvas[4:6, 8:12] = True             # half block -> 8/16
    canvas[31, 31] = True                # one pixel -> 1/16
    small = digits_style(canvas)
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[0, 0], expected[1, 2], expected[7, 7] = 1.0, 0.5, 1 / 16
    np.testing.assert_array_equal(small, expected)


def test_upsampling_matches_the_digits_loader():
    import torch.nn.functional as F

    small = np.random.default_rng(0).integers(0, 17, (8, 8)).astype(np.float32) / 16
    out = upsample_like_digits(small, 32)
    # load_digits: bilinear, align_corners=False, clamp, * 255, round, uint8, three equal channels
    ref = F.interpolate(torch.from_numpy(small)[None, None], size=(32, 32), mode="bilinear", align_corners=False)
    ref = (ref.clamp(0, 1) * 255).round().to(torch.uint8)[0, 0].numpy()
    assert out.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], ref)
    assert out[0, 0, 0] == round(small[0, 0] * 255)  # a corner keeps its 8x8 value
