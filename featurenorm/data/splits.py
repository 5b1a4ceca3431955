"""The ID data set's train or test split, from wherever the config's benchmark says it lives: its image
lists (OpenOOD v1.5) or featurenorm's own copy (CIFAR, the IDX sets, the bundled digits, an image folder)."""
from __future__ import annotations

from ..benchmarks import benchmark_entry
from ..config import Config
from ..errors import UserError
from .datasets import (CIFAR_FOLDERS, NUM_CLASSES, Split, load_cifar, load_digits, load_imagefolder, match_channels,
                       resolve_id_dataset)
from .idx import IDX_KINDS, load_idx
from .imglist import load_list_split


def load_split(cfg: Config, train: bool) -> Split:
    """Load the train or test split of the config's ID dataset, checking ``num_classes``.

    When the config's benchmark lists its ID images (OpenOOD v1.5), the split is read from that
    list instead of from our own copy of the dataset.
    """
    kind, root = resolve_id_dataset(cfg)
    entry = benchmark_entry(cfg.benchmark, kind)
    if entry.id_lists:
        split = load_list_split(cfg, entry, train)
    elif kind == "digits":
        split = load_digits(train, cfg.image_size)
    elif kind in CIFAR_FOLDERS:
        split = load_cifar(kind, root, train, cfg.download)
    elif kind in IDX_KINDS:
        images, labels = load_idx(kind, root, train, cfg.download)
        split = Split(kind, images=images, labels=labels, classes=[str(i) for i in range(10)])
    else:
        split = load_imagefolder(root, train, kind)
    if split.images is not None:
        split.images = match_channels(split.images, cfg.channels)
    found = len(split.classes) if split.classes is not None else NUM_CLASSES[kind]
    if cfg.num_classes is not None and cfg.num_classes != found:
        where = kind if kind == "digits" else f"{kind} at '{root}'"  # digits is bundled: no folder to name
        raise UserError(f"num_classes is {cfg.num_classes} in the config but {where} has {found} classes; "
                        f"set num_classes to {found}")
    return split
