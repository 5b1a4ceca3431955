"""Image lists in OpenOOD's format: the ID splits and OOD sets of a listed benchmark.

Each line of a list file is ``<path> <label>``: the path relative to the benchmark's image folder
(``<openood_root>/images_classic/``), then an integer label (``-1`` for OOD images in OpenOOD's
lists). Blank lines are ignored. A missing list file is a one-line error naming it. Listed images
are read by the same datasets as folders: :class:`~featurenorm.data.images.ImageListDataset` for
the ID splits, :class:`~featurenorm.data.batches.ImageBatches` for OOD sets.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..config import Config
from ..errors import UserError
from ..benchmarks import BenchmarkEntry
from .datasets import NUM_CLASSES, Split
from .images import UnreadableImagesWarning, describe_unreadable


def benchmark_root(cfg: Config, entry: BenchmarkEntry) -> Path:
    """The folder the entry's list files are relative to (config key ``entry.root_key``)."""
    if entry.root_key is None:
        raise ValueError(f"benchmark '{entry.benchmark}' reads no image lists")
    value = getattr(cfg, entry.root_key)
    if not value:
        raise UserError(f"config key '{entry.root_key}' is required with benchmark '{entry.benchmark}'")
    return Path(value)


def list_path(cfg: Config, entry: BenchmarkEntry, relative: str) -> Path:
    """A list file of the entry under its root; a missing file is a one-line :class:`UserError`."""
    root = benchmark_root(cfg, entry)
    path = root / relative
    if not path.is_file():
        where = f"{entry.root_key} is '{root}'" + ("" if root.is_dir() else ", which does not exist")
        raise UserError(f"image list '{path}' not found ({where}); put OpenOOD's benchmark_imglist/ and "
                        f"{entry.image_dir}/ there, e.g. with scripts/download_data.sh --only openood")
    return path


def read_image_list(list_file: Path, image_dir: Path) -> list[tuple[str, int]]:
    """``(path under image_dir, label)`` for every non-blank line of ``list_file``, in file order.

    Raises:
        UserError: the file cannot be read, or a line is not ``<path> <integer label>``.
    """
    try:
        text = Path(list_file).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"image list '{list_file}' cannot be read ({type(err).__name__}: {err})") from None
    samples = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            if len(tokens) != 2:
                raise ValueError
            label = int(tokens[1])
        except ValueError:
            raise UserError(f"{list_file}, line {number}: expected '<path> <integer label>', got {line.strip()!r}"
                            ) from None
        samples.append((str(image_dir / tokens[0]), label))
    return samples


def is_readable_image(path: str) -> bool:
    """Whether ``path`` exists and PIL recognises it as an image (header only; cheap)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path):
                return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def load_list_split(cfg: Config, entry: BenchmarkEntry, train: bool) -> Split:
    """The ID train or test split of a listed benchmark, as ``(path, label)`` samples.

    Listed files that are missing or not images are left out with one warning line and recorded
    in ``Split.unreadable``: the ID loaders need every kept file to decode.
    """
    which = "train" if train else "test"
    list_file = list_path(cfg, entry, entry.id_lists[which])
    samples = read_image_list(list_file, benchmark_root(cfg, entry) / entry.image_dir)
    num_classes = NUM_CLASSES[entry.id_dataset]
    for path, label in samples:
        if not 0 <= label < num_classes:
            raise UserError(f"{list_file}: '{path}' has label {label}, outside 0..{num_classes - 1} "
                            f"of {entry.id_dataset}; is this the right list?")
    ok = [is_readable_image(path) for path, _ in samples]
    readable = [sample for sample, good in zip(samples, ok) if good]
    unreadable = [path for (path, _), good in zip(samples, ok) if not good]
    if not readable:
        raise UserError(f"none of the {len(samples)} images listed in '{list_file}' can be read; "
                        f"check {entry.root_key} and the {entry.image_dir}/ folder")
    if unreadable:
        warnings.warn(describe_unreadable(f"{entry.id_dataset} {which}", unreadable, what="ID split"),
                      UnreadableImagesWarning, stacklevel=2)
    return Split(entry.id_dataset, samples=readable, unreadable=unreadable)
