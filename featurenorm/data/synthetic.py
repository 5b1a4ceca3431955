"""Small OOD sets for the offline digits quick start, made only from what installed packages ship.

No network, deterministic for a seed (the same PNG bytes on every call). Each set is a folder
``<root>/<name>/`` of ``count`` PNGs ``00000.png, 00001.png, ...`` of ``image_size`` x
``image_size`` RGB, next to a ``.synthetic.json`` manifest that lets a later call reuse them.

Sets, and why each is OOD for scikit-learn's 8x8 digits (white strokes on black):

- ``photos`` (far-OOD): random crops, 24-48 px on a side, of the two photographs scikit-learn
  bundles (``china.jpg``, ``flower.jpg``), resized to ``image_size``. Natural colour and
  texture, nothing like a pen stroke.
- ``letters`` (near-OOD): capital letters A-Z in PIL's default bitmap font, drawn white on
  black at a random scale and small random offset on a 32x32 binary canvas, then reduced the
  way the UCI digits were made (counts of "on" pixels in 4x4 blocks: an 8x8 image of 0..16),
  and upsampled bilinearly to ``image_size`` exactly like :func:`datasets.load_digits`. The
  same style as the digits but other classes; a few letters (O, I, S, Z, B) resemble digits,
  which is what makes this set hard.
- ``gaussian_noise`` (far-OOD): every pixel and channel drawn from N(0.5, 0.25^2) (std 0.25),
  clipped to [0, 1].
- ``uniform_noise`` (far-OOD): every pixel and channel drawn uniformly from 0..255.
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_path, write_json

SYNTHETIC_SETS = ("photos", "letters", "gaussian_noise", "uniform_noise")
MANIFEST = ".synthetic.json"
FORMAT_VERSION = 1  # bump when the images a seed produces change, so old folders are rewritten
PHOTO_CROP_SIDES = (24, 48)        # inclusive range of the crop side, in pixels of the photo
LETTER_CANVAS = 32                 # the UCI digits' bitmap size; 4x4 blocks give 8x8
LETTER_HEIGHTS = (16, 24)          # inclusive range of the letter height on the canvas
LETTER_MAX_SHIFT = 2               # pixels the letter moves off centre, each axis
LETTER_MAX_WIDTH = 24              # square glyphs (A, W) would otherwise fill the canvas
_FILE_PATTERN = re.compile(r"^\d{5}\.png$")


def _rng(seed: int, set_name: str) -> np.random.Generator:
    # one stream per set, so that one set's images do not depend on the others being written
    return np.random.default_rng([seed, SYNTHETIC_SETS.index(set_name)])


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 by rounding."""
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------- photos
def photo_crops(count: int, image_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random square crops of scikit-learn's sample photos, resized bilinearly.

    Returns:
        ``count`` arrays (image_size, image_size, 3) uint8.
    """
    from sklearn.datasets import load_sample_images  # lazy: scikit-learn is heavy, and only this data set needs it

    photos = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    out = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(PHOTO_CROP_SIDES[0], PHOTO_CROP_SIDES[1] + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        out.append(np.asarray(crop.resize((image_size, image_size), Image.BILINEAR)))
    return out


# ------------------------------------------------------------------------------------ letters
def _bitmap_font():
    # Pillow >= 10.1 returns a TrueType font from load_default() when FreeType is present;
    # the bitmap font is the one that renders the same everywhere
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


def letter_glyph(letter: str, font) -> np.ndarray:
    """The letter's pixels in ``font``, cropped to their bounding box: (h, w) bool."""
    canvas = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(canvas).text((4, 4), letter, fill=255, font=font)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box)) > 127


def digits_style(canvas: np.ndarray) -> np.ndarray:
    """A 32x32 binary bitmap reduced like the UCI digits: "on" pixels counted per 4x4 block.

    Args:
        canvas: (32, 32) bool.
    Returns:
        (8, 8) float in [0, 1]: count / 16.
    """
    blocks = canvas.reshape(8, 4, 8, 4).sum(axis=(1, 3))
    return blocks.astype(np.float32) / 16.0


def upsample_like_digits(small: np.ndarray, image_size: int) -> np.ndarray:
    """(8, 8) float in [0, 1] -> (image_size, image_size, 3) uint8, as ``datasets.load_digits`` does."""
    pixels = torch.from_numpy(small)[None, None]
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gray = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)[0, 0].numpy()
    return np.repeat(gray[:, :, None], 3, axis=2)


def letter_images(count: int, image_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Capital letters A-Z in turn, at a random height and offset, in the digits' style.

    Returns:
        ``count`` arrays (image_size, image_size, 3) uint8.
    """
    font = _bitmap_font()
    glyphs = {c: letter_glyph(c, font) for c in string.ascii_uppercase}
    out = []
    for i in range(count):
        glyph = glyphs[string.ascii_uppercase[i % 26]]
        height = int(rng.integers(LETTER_HEIGHTS[0], LETTER_HEIGHTS[1] + 1))
        width = min(LETTER_MAX_WIDTH, max(1, round(glyph.shape[1] * height / glyph.shape[0])))
        scaled = np.asarray(Image.fromarray(glyph).resize((width, height), Image.NEAREST))
        shift_y, shift_x = rng.integers(-LETTER_MAX_SHIFT, LETTER_MAX_SHIFT + 1, size=2)
        top = int(np.clip((LETTER_CANVAS - height) // 2 + shift_y, 0, LETTER_CANVAS - height))
        left = int(np.clip((LETTER_CANVAS - width) // 2 + shift_x, 0, LETTER_CANVAS - width))
        canvas = np.zeros((LETTER_CANVAS, LETTER_CANVAS), dtype=bool)
        canvas[top:top + height, left:left + width] = scaled
        out.append(upsample_like_digits(digits_style(canvas), image_size))
    return out


# -------------------------------------------------------------------------------------- noise
def gaussian_noise(count: int, image_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-pixel N(0.5, 0.25^2) clipped to [0, 1]: ``count`` arrays (S, S, 3) uint8."""
    return [_to_uint8(rng.normal(0.5, 0.25, size=(image_size, image_size, 3))) for _ in range(count)]


def uniform_noise(count: int, image_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-pixel uniform over 0..255: ``count`` arrays (S, S, 3) uint8."""
    return [rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8) for _ in range(count)]


GENERATORS: dict[str, Callable[[int, int, np.random.Generator], list[np.ndarray]]] = {
    "photos": photo_crops,
    "letters": letter_images,
    "gaussian_noise": gaussian_noise,
    "uniform_noise": uniform_noise,
}


# ------------------------------------------------------------------------------------- writing
def _file_names(count: int) -> list[str]:
    return [f"{i:05d}.png" for i in range(count)]


def _is_complete(folder: Path, manifest: dict) -> bool:
    """Whether ``folder`` already holds this exact set (same manifest, every file present)."""
    try:
        if json.loads((folder / MANIFEST).read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    return all((folder / name).is_file() for name in _file_names(manifest["count"]))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG")


def write_synthetic_set(folder: Path, name: str, image_size: int, count: int, seed: int) -> Path:
    """Write one set into ``folder`` unless it already holds it; returns ``folder``."""
    manifest = {"set": name, "count": count, "image_size": image_size, "seed": seed, "version": FORMAT_VERSION}
    if _is_complete(folder, manifest):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    wanted = set(_file_names(count))
    # files of an earlier, larger set would otherwise be scored with this one
    for stale in folder.iterdir():
        if _FILE_PATTERN.match(stale.name) and stale.name not in wanted:
            stale.unlink()
    images = GENERATORS[name](count, image_size, _rng(seed, name))
    for file_name, pixels in zip(_file_names(count), images):
        _write_png(folder / file_name, pixels)
    write_json(folder / MANIFEST, manifest)
    return folder


def write_synthetic_ood(root: Path, image_size: int = 32, count: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write (or reuse) the four synthetic OOD folders under ``root``.

    Args:
        root: parent folder; each set goes to ``root/<name>/``.
        image_size: side of the square RGB images.
        count: images per set.
        seed: the same seed gives the same bytes.
    Returns:
        set name -> folder, in the order photos, letters, gaussian_noise, uniform_noise.
    """
    if image_size < 1 or count < 1:
        raise ValueError(f"image_size and count must be positive, got {image_size} and {count}")
    root = Path(root)
    return {name: write_synthetic_set(root / name, name, image_size, count, seed) for name in SYNTHETIC_SETS}
