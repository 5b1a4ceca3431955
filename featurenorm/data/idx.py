"""MNIST and Fashion-MNIST from their original IDX files.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of a magic
number ``0x0000 TT DD`` (``TT`` the element type, 0x08 for unsigned bytes; ``DD`` the number of
dimensions), then one 4-byte size per dimension, then the data. Images are ``idx3`` (N, 28, 28),
labels ``idx1`` (N,). A file may be gzipped (``.gz``, as published) or not.

Where the four files are looked for, in this order (the first folder holding all four wins):

1. the folder itself, flat (``mnist: ../shared/data/mnist``);
2. its subfolder named after the set, flat: ``<folder>/mnist/``, ``<folder>/fashion_mnist/`` or
   ``<folder>/fashion-mnist/`` (``id_dataset: mnist`` with ``data_root: ../shared/data``);
3. torchvision's layout ``<folder>/MNIST/raw/`` or ``<folder>/FashionMNIST/raw/``;
4. for Fashion-MNIST, Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``).

With ``download: true`` and no files found, torchvision's ``MNIST`` / ``FashionMNIST`` fetch them into
``<folder>/<Name>/raw/`` (the only network access, and only then).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

IDX_KINDS = ("mnist", "fashion_mnist")
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DEBIAN_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
PREFIXES = {True: "train", False: "t10k"}
UBYTE = 0x08


def idx_file_names(train: bool) -> tuple[str, str]:
    """The images and labels file names of a split, without ``.gz``."""
    prefix = PREFIXES[train]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _present(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def candidate_folders(kind: str, root: Path) -> list[Path]:
    """The folders searched for ``kind``'s files under ``root``, in order."""
    folders = [root, *dict.fromkeys([root / kind, root / kind.replace("_", "-")]), root / TORCHVISION_NAMES[kind] / "raw"]
    if kind in DEBIAN_FOLDERS:
        folders.append(DEBIAN_FOLDERS[kind])
    return folders


def find_idx_folder(kind: str, root: Path) -> Path | None:
    """The first candidate folder that holds all four IDX files (gzipped or not), or None."""
    for folder in candidate_folders(kind, root):
        if all(_present(folder, name) for train in (True, False) for name in idx_file_names(train)):
            return folder
    return None


def read_idx(path: str | Path, dims: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``dims`` dimensions, as a uint8 array of its shape.

    Raises:
        UserError: naming the file, when it is not gzip it says it is, its magic number is not that of
            a ``dims``-dimensional ubyte file, or its length does not match its header.
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise UserError(f"IDX file '{path}' could not be read ({err}); download it again") from None
    header = 4 + 4 * dims
    if len(data) < header:
        raise UserError(f"IDX file '{path}' is truncated: {len(data)} bytes, shorter than its header; "
                        "download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic != (UBYTE << 8 | dims):
        raise UserError(f"'{path}' is not an IDX file of {dims}-d unsigned bytes (magic number 0x{magic:08x}, "
                        f"expected 0x{UBYTE << 8 | dims:08x}); check that it is the right file")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"IDX file '{path}' has {len(data)} bytes, but its header {shape} needs {expected}; "
                        "it is truncated or damaged: download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _download(kind: str, root: Path) -> None:
    from torchvision import datasets  # lazy: torchvision loads only on this path

    dataset = getattr(datasets, TORCHVISION_NAMES[kind])
    for train in (True, False):
        dataset(str(root), train=train, download=True)


def load_idx(kind: str, root: str | Path, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of MNIST or Fashion-MNIST: images (N, 1, 28, 28) uint8 and labels (N,) int64.

    Raises:
        UserError: the files are found nowhere (and ``download`` is false), or one is damaged, or the
            images and labels disagree in number.
    """
    root = Path(root)
    folder = find_idx_folder(kind, root)
    if folder is None and download:
        _download(kind, root)
        folder = find_idx_folder(kind, root)
    if folder is None:
        names = ", ".join(f"{n}[.gz]" for t in (True, False) for n in idx_file_names(t))
        where = " or ".join(str(f) for f in candidate_folders(kind, root))
        raise UserError(f"{kind}: the IDX files ({names}) are not in {where}; put them there, or set "
                        "download true to fetch them with torchvision")
    images_name, labels_name = idx_file_names(train)
    images_path, labels_path = _present(folder, images_name), _present(folder, labels_name)
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise UserError(f"'{images_path}' holds {len(images)} images but '{labels_path}' {len(labels)} labels; "
                        "the two files are from different releases: download both again")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
