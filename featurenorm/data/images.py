"""Reading images from folders: any size or mode to normalized RGB (or grayscale, ``channels: 1``),
unreadable files tolerated."""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import Config
from ..benchmarks import BENCHMARKS
from .datasets import Split, is_image_file


class UnreadableImagesWarning(UserWarning):
    """Some images of a set could not be read and were left out."""


MAX_LISTED_UNREADABLE = 10


def describe_unreadable(name: str, paths: Sequence[str], limit: int = MAX_LISTED_UNREADABLE,
                        what: str = "OOD set") -> str:
    """One message naming at most ``limit`` unreadable (or missing) files, then ``and N more``."""
    listed = ", ".join(paths[:limit])
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{what} '{name}': skipped {len(paths)} unreadable file{'s' if len(paths) != 1 else ''}: {listed}{more}"


def to_rgb(img):
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to 8-bit RGB.

    16-bit and 32-bit integer images are scaled by their type's range rather than clipped,
    and float images by their own maximum, so that they do not come out white.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "I":
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = max(float(arr.max(initial=0)), 1e-12)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_rgb(path: str | os.PathLike):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette/EXIF/decompression chatter on odd files
        with Image.open(path) as img:
            img.draft("RGB", (512, 512))  # JPEG: decode large images at reduced size
            return to_rgb(img)


def eval_transform(cfg: Config) -> Callable:
    """The preprocessing of every evaluated image (ID test, ID train for fitting and selection, OOD).

    With ``resize_size`` (the default for ``torchvision/`` archs, from their weights): the shorter side
    resized to ``resize_size``, then the center ``image_size`` x ``image_size`` crop, as torchvision's
    ``ImageClassification`` does. Without it, the benchmark's ``resize`` mode: ``stretch`` scales both
    sides to ``image_size``; ``shorter_side_crop`` (OpenOOD) scales the shorter side to it, then crops
    the center square (the two agree on square images). Then to a tensor in [0, 1], normalized by
    ``mean``/``std``.
    """
    from torchvision import transforms as T  # lazy: torchvision loads only on this path

    size, interpolation = cfg.image_size, T.InterpolationMode(cfg.interpolation)
    if cfg.resize_size is not None:
        geometry = [T.Resize(cfg.resize_size, interpolation=interpolation, antialias=True), T.CenterCrop(size)]
    elif BENCHMARKS[cfg.benchmark].resize == "shorter_side_crop":
        geometry = [T.Resize(size, interpolation=interpolation), T.CenterCrop(size)]
    else:
        geometry = [T.Resize((size, size), interpolation=interpolation)]
    return T.Compose([*to_channels(cfg), *geometry, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def to_channels(cfg: Config) -> list[Callable]:
    """The first transform steps: an RGB PIL image to the config's channels (grayscale by PIL's luma)."""
    from torchvision import transforms as T  # lazy: torchvision loads only on this path

    return [T.Grayscale(1)] if cfg.channels == 1 else []


def train_transform(cfg: Config) -> Callable:
    from torchvision import transforms as T  # lazy: torchvision loads only on this path

    steps = [*to_channels(cfg), T.Resize((cfg.image_size, cfg.image_size))]
    if cfg.crop_padding > 0:
        steps.append(T.RandomCrop(cfg.image_size, padding=cfg.crop_padding))
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


class ImageListDataset(Dataset):
    """``(path, label)`` pairs read as RGB. Unreadable files raise (for training data)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(read_rgb(path)), label


class ArrayDataset(Dataset):
    """uint8 ``(N, C, H, W)`` images (C 1 or 3) through a PIL-style transform (for ``"loader": "torch"``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        pixels = self.images[i]
        img = Image.fromarray(pixels[0].numpy(), "L") if pixels.shape[0] == 1 else \
            Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
        return self.transform(img), int(self.labels[i])


def split_dataset(split: Split, cfg: Config, train: bool, indices: Sequence[int] | None = None) -> Dataset:
    """The split's images with the train or eval transform; only those at ``indices`` when given.

    A subset holds only its own paths, so that DataLoader workers do not inherit (and, touching it, copy)
    the list of a whole ImageNet training set.
    """
    transform = train_transform(cfg) if train else eval_transform(cfg)
    if split.images is not None:
        if indices is None:
            return ArrayDataset(split.images, split.labels, transform)
        return ArrayDataset(split.images[list(indices)], split.labels[list(indices)], transform)
    samples = split.image_samples()
    return ImageListDataset(samples if indices is None else [samples[i] for i in indices], transform)


def list_images(root: str | os.PathLike) -> list[str]:
    """Every image file under ``root``, nested folders included, sorted; other files are ignored."""
    found = []
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(files) if is_image_file(f)]
    return found
