"""ID datasets: CIFAR-10/100 (torchvision), MNIST and Fashion-MNIST (IDX files), any ImageFolder root,
ImageNet-1K, and scikit-learn's bundled digits.

How ``id_dataset`` is recognised (first rule that applies):

1. the ``dataset`` key, when set (``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``digits``,
   ``imagefolder``, ``imagenet``);
2. the names ``digits``, ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``: CIFAR then lives in
   ``<data_root>/<name>``; the IDX files are looked for under ``data_root`` as
   :mod:`featurenorm.data.idx` says;
3. a folder holding ``cifar-10-batches-py`` (CIFAR-10), ``cifar-100-python`` (CIFAR-100),
   ``train/`` and ``val/`` but no ``test/`` (ImageNet: ``train/<wnid>/``, ``val/<wnid>/``),
   or ``train/`` and ``test/`` class folders (ImageFolder);
4. a folder whose name contains ``cifar100``/``cifar-100``, ``cifar10``/``cifar-10`` (the place CIFAR
   is, or will be, downloaded to), ``fashion`` and ``mnist`` (Fashion-MNIST), or ``mnist`` (MNIST).

ImageNet is an ImageFolder whose test split is ``val/``; class ``i`` is the ``i``-th wnid in sorted
order, which is the class order of torchvision's and timm's ImageNet-1K weights.

Array datasets (CIFAR, MNIST, digits) are returned as uint8 tensors ``(N, C, H, W)`` so that the
device-resident loader can hold them whole, with the config's ``channels`` (:func:`match_channels`);
ImageFolder data stays on disk and is read in that many channels.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import UserError
from .idx import IDX_KINDS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "imagefolder", "imagenet")
# The test split's folder of each folder dataset.
TEST_FOLDERS = {"imagefolder": "test", "imagenet": "val"}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "digits": 10, "imagenet": 1000}
# Seeded subsamples of the training set for data sets too large to pass whole (ImageNet-1K has 1,281,167
# training images): ``selection`` images for select_block.py (about 10 per class), ``fit`` images for the
# methods that fit statistics (1%, the KNN paper's ImageNet setting: Sun et al., ICML 2022).
# The config keys selection_samples / fit_samples override them; other data sets use every image.
TRAIN_SUBSAMPLES = {"imagenet": {"selection": 10_000, "fit": 12_811}}


@dataclass
class Split:
    """One split of an ID dataset: in-memory arrays, an ImageFolder, or an image list on disk."""

    name: str                                # cifar10 | cifar100 | digits | imagefolder
    images: Optional[torch.Tensor] = None    # (N, C, H, W) uint8, array datasets only
    labels: Optional[torch.Tensor] = None    # (N,) int64
    folder: Optional[Path] = None            # ImageFolder split root
    classes: Optional[list[str]] = None
    samples: Optional[list[tuple[str, int]]] = None  # (path, label): read from an image list, or listed once
    unreadable: list[str] = field(default_factory=list)  # listed files left out (missing or not images)

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.image_samples())

    def image_samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of an on-disk split: the listed samples, else every image under ``folder``
        (walked once: ImageNet's training set has 1.3M files)."""
        if self.samples is None:
            self.samples = folder_samples(self.folder)
        return self.samples


def resolve_id_dataset(cfg: Config) -> tuple[str, Path]:
    """Return ``(kind, root)`` for the config's ID dataset by the rules in the module docstring."""
    name = cfg.id_dataset
    if cfg.dataset is not None:
        if cfg.dataset not in DATASET_NAMES:
            raise UserError(f"config key 'dataset' must be one of {', '.join(DATASET_NAMES)}, got '{cfg.dataset}'")
        if cfg.dataset in IDX_KINDS:
            return cfg.dataset, Path(name) if name not in DATASET_NAMES else Path(cfg.data_root)
        root = Path(name) if name not in DATASET_NAMES else Path(cfg.data_root) / cfg.dataset
        return cfg.dataset, root
    if name == "digits":
        return "digits", Path(cfg.data_root)
    if name in IDX_KINDS:
        return name, Path(cfg.data_root)
    if name in ("cifar10", "cifar100", "imagenet"):  # by name: under data_root (or from a benchmark's lists)
        return name, Path(cfg.data_root) / name
    root = Path(name)
    for kind, sub in CIFAR_FOLDERS.items():
        if (root / sub).is_dir():
            return kind, root
    if (root / "train").is_dir() and (root / "val").is_dir() and not (root / "test").is_dir():
        return "imagenet", root
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "imagefolder", root
    base = root.name.lower().replace("-", "").replace("_", "")
    if "cifar100" in base:
        return "cifar100", root
    if "cifar10" in base:
        return "cifar10", root
    if "mnist" in base:
        return ("fashion_mnist" if "fashion" in base else "mnist"), root
    if root.is_dir():
        raise UserError(f"id_dataset '{root}' holds neither {CIFAR_FOLDERS['cifar10']}/, {CIFAR_FOLDERS['cifar100']}/ "
                        "nor train/ and test/ (or val/) class folders; fix the path or set the key 'dataset'")
    raise UserError(f"id_dataset '{root}' not found; fix the path, or use 'digits' for the bundled offline data")


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) in ``channels`` channels: gray replicated to RGB, RGB to gray by
    :func:`luma` (the conversion of PIL's ``convert("L")``, so arrays and image files agree)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        return luma(images)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def luma(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 (N, 3, H, W) -> gray uint8 (N, 1, H, W): ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B,
    in PIL's 16-bit fixed point with rounding."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64, device=images.device).view(1, 3, 1, 1)
    return ((images.to(torch.int64) * weights).sum(1, keepdim=True) + (1 << 15)).div(1 << 16, rounding_mode="floor") \
        .to(torch.uint8)


def channel_conversion(have: int, channels: int) -> str | None:
    """How images of ``have`` channels are read for a ``channels``-channel model, in words; None when as they are."""
    if have == channels:
        return None
    if channels == 1:
        return "RGB converted to grayscale (ITU-R 601-2 luma, as PIL's convert('L'))"
    return "grayscale replicated to 3 channels"


def num_classes_of(cfg: Config) -> int:
    """``num_classes`` from the config, else from the dataset."""
    if cfg.num_classes is not None:
        return cfg.num_classes
    kind, root = resolve_id_dataset(cfg)
    if kind in NUM_CLASSES:
        return NUM_CLASSES[kind]
    return len(load_imagefolder(root, True, kind).classes)


def train_subsample_size(cfg: Config, purpose: str, total: int) -> int | None:
    """How many of ``total`` ID training images ``purpose`` (``selection`` | ``fit``) reads; None: all.

    The config key ``selection_samples`` / ``fit_samples`` when set, else :data:`TRAIN_SUBSAMPLES`.
    """
    chosen = getattr(cfg, f"{purpose}_samples")
    if chosen is None:
        chosen = TRAIN_SUBSAMPLES.get(resolve_id_dataset(cfg)[0], {}).get(purpose)
    return chosen if chosen is not None and chosen < total else None


def seeded_subsample(total: int, count: int | None, seed: int) -> torch.Tensor:
    """``sorted(randperm(total, seed)[:count])``, the indices of a seeded subsample; ``arange(total)`` for None.

    Returns:
        (min(count, total),) int64, increasing.
    """
    if count is None or count >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values


# ---------------------------------------------------------------------------------------- digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits(train: bool, image_size: int = 32) -> Split:
    """scikit-learn's 8x8 digits (1797 images, bundled), upsampled bilinearly to RGB ``image_size``.

    The train/test split is stratified, 80/20, with a fixed seed, so it never depends on the run.
    """
    from sklearn.datasets import load_digits as sk_digits  # lazy: scikit-learn is heavy, and only this data set needs it
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn is heavy, and only this data set needs it

    bunch = sk_digits()
    index = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(index, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
                                           stratify=bunch.target)
    idx = np.sort(train_idx if train else test_idx)
    pixels = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0)[:, None]
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return Split("digits", images=images, labels=labels, classes=[str(i) for i in range(10)])


# ----------------------------------------------------------------------------------------- CIFAR
def _cifar_class(kind: str):
    from torchvision.datasets import CIFAR10, CIFAR100  # lazy: torchvision loads only on this path

    base = CIFAR10 if kind == "cifar10" else CIFAR100

    class Cifar(base):  # type: ignore[misc, valid-type]
        """torchvision's reader; the per-file md5 check runs only around a download.

        torchvision verifies every batch file's md5 on each load; we verify the archive when it
        is downloaded and afterwards only check that the files are there, so that data written
        in the same format (tests, re-packed copies) loads through the same code path.
        """

        verify_md5 = False

        def _check_integrity(self) -> bool:
            if self.verify_md5:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            # torchvision checks the meta file's md5 here too, outside _check_integrity
            if self.verify_md5:
                return super()._load_meta()
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError(f"{self.meta['filename']} is missing")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return Cifar


def load_cifar(kind: str, root: Path, train: bool, download: bool) -> Split:
    cls = _cifar_class(kind)
    folder = root / CIFAR_FOLDERS[kind]
    if download:
        cls.verify_md5 = True
        cls(str(root), train=train, download=True)
        cls.verify_md5 = False
    elif not folder.is_dir():
        raise UserError(f"{kind} not found at '{folder}'; set \"download\": true in the config "
                        f"(or --set download=true), or run scripts/download_data.sh")
    try:
        ds = cls(str(root), train=train, download=False)
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(f"{kind} at '{folder}' is incomplete or corrupt ({type(err).__name__}: {err}); "
                        "delete it and download again") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return Split(kind, images=images, labels=torch.tensor(ds.targets, dtype=torch.int64), classes=list(ds.classes))


# ----------------------------------------------------------------------------------- ImageFolder
def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS) and not Path(path).name.startswith(".")


def folder_samples(split_root: Path) -> list[tuple[str, int]]:
    """``(path, class_index)`` for every image under ``split_root/<class>/`` (nested folders allowed)."""
    classes = sorted(d.name for d in split_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(split_root / cls)):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(files) if is_image_file(f)]
    return samples


def load_imagefolder(root: Path, train: bool, kind: str = "imagefolder") -> Split:
    """The ``train/`` or test split (``test/``; ``val/`` for ImageNet) of a folder dataset."""
    test = TEST_FOLDERS[kind]
    split_root = root / ("train" if train else test)
    if not split_root.is_dir():
        raise UserError(f"{'ImageNet' if kind == 'imagenet' else 'ImageFolder'} root '{root}' has no {split_root.name}/ "
                        f"folder; it needs train/<class>/ and {test}/<class>/ subfolders")
    classes = sorted(d.name for d in split_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"'{split_root}' has no class folders; put images in {split_root}/<class>/")
    split = Split(kind, folder=split_root, classes=classes)
    if not split.image_samples():
        raise UserError(f"no images found under '{split_root}' (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return split
