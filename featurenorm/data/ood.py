"""OOD test sets: which ones a run scores, and batches of their images on the device.

The benchmarks are data, not code: :data:`~featurenorm.benchmarks.BENCHMARKS` lists, per
benchmark and ID dataset, the OOD sets in report order. The ``paper`` benchmark follows Yu et al.,
CVPR 2023, Tables 1-2: the six far-OOD sets SVHN, Textures, LSUN (crop), LSUN-resize, iSUN and
Places365, then the near-OOD CIFAR set (CIFAR-100 for CIFAR-10 and vice versa); a set takes part
only when its config key names a path, or when ``--ood name=path`` names it on the command line.
``imagenet_four`` scores ImageNet-1K against the iNaturalist, SUN, Places and Textures subsets of
Huang & Li (MOS, CVPR 2021). The ``openood_v1.5`` benchmark reads every set from OpenOOD's image
lists under ``openood_root``.

Kinds of source:

- ``svhn``: the folder holding torchvision's ``test_32x32.mat`` (the SVHN test split);
- ``cifar10`` / ``cifar100``: the folder holding torchvision's ``cifar-10-batches-py`` /
  ``cifar-100-python`` (the test split is scored);
- ``mnist`` / ``fashion_mnist``: a folder holding the set's IDX files, found as
  :mod:`featurenorm.data.idx` says (the test split, 10,000 images, is scored);
- ``folder``: any folder of images, nested folders allowed; every other set, and also an
  ``svhn``/``cifar`` path that holds no such file but images;
- ``imglist``: an image list (:mod:`featurenorm.data.imglist`); its paths are relative to
  ``image_dir``. Missing and unreadable listed files are skipped and counted, as in a folder.

Every image goes through the ID test preprocessing: the model's channels (``conversions`` in the
results says when a set was converted), resized to ``image_size`` (as the
benchmark's ``resize`` says), normalized with the config's ``mean``/``std``.

Distributed runs shard every set *strided*: rank ``r`` of ``w`` scores the images
``index[r::w]`` (:func:`shard_indices`). :func:`merge_shards` puts per-rank score arrays,
gathered in rank order, back into the single-process order.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import Config
from ..errors import UserError
from ..benchmarks import DEFAULT_BENCHMARK, GROUP_NAMES, benchmark_entry
from .batches import ImageBatches
from .datasets import CIFAR_FOLDERS, IMAGE_EXTENSIONS, is_image_file, load_cifar
from .idx import IDX_KINDS, find_idx_folder, load_idx
from .images import list_images
from .imglist import benchmark_root, list_path, read_image_list
SVHN_TEST_FILE = "test_32x32.mat"
# Seed of the Places365 subsample: fixed, independent of the run's seed, so that every run
# (and every method and checkpoint compared) scores the same images.
PLACES365_SUBSAMPLE_SEED = 0
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_RESERVED_NAMES = ("average", *GROUP_NAMES)  # keys of the results tables


@dataclass
class OODSource:
    """One OOD set to score.

    Attributes:
        name: ``svhn``, ``textures``, ..., or a custom name from ``--ood name=path``.
        kind: ``svhn`` | ``cifar10`` | ``cifar100`` | ``mnist`` | ``fashion_mnist`` | ``folder`` | ``imglist``.
        path: the folder (for ``svhn``/``cifar*``: the one holding torchvision's files), or the
            list file of an ``imglist``.
        explicit: named on the command line (then problems raise instead of skipping the set).
        image_dir: the folder an ``imglist``'s paths are relative to.
    """

    name: str
    kind: str
    path: Path
    explicit: bool = False
    image_dir: Optional[Path] = None


# ------------------------------------------------------------------------------------- resolving
def benchmark_names(id_kind: str, benchmark: str = DEFAULT_BENCHMARK) -> list[str]:
    """The OOD set names ``benchmark`` scores against ``id_kind``, in report order (never the ID set).

    Raises:
        UserError: an unknown benchmark, or one that does not define ``id_kind``.
    """
    return list(benchmark_entry(benchmark, id_kind).ood)


def parse_ood_spec(text: str) -> tuple[str, str]:
    """Split one ``--ood name=path`` into ``(name, path)``; a malformed spec raises UserError."""
    if "=" not in text:
        raise UserError(f"--ood expects name=path, got '{text}'; e.g. --ood textures=./data/dtd/images")
    name, path = (part.strip() for part in text.split("=", 1))
    if not name or not path:
        raise UserError(f"--ood expects name=path with both parts non-empty, got '{text}'")
    if not _NAME_PATTERN.match(name):
        raise UserError(f"--ood name '{name}' may hold only letters, digits, '_', '-' and '.'; rename it")
    if name in _RESERVED_NAMES:
        raise UserError(f"--ood name '{name}' is reserved for the results tables; pick another name")
    return name, path


def source_kind(name: str, path: Path) -> tuple[str, Path]:
    """``(kind, root)`` of a set from its name and what its folder holds.

    ``svhn`` is an SVHN set when ``path`` holds ``test_32x32.mat`` (or is that file);
    ``cifar10``/``cifar100`` when ``path`` holds (or is) the torchvision batches folder.
    Anything else is read as a folder of images.
    """
    if name == "svhn":
        if path.is_file() and path.name == SVHN_TEST_FILE:
            return "svhn", path.parent
        if (path / SVHN_TEST_FILE).is_file():
            return "svhn", path
    if name in CIFAR_FOLDERS:
        batches = CIFAR_FOLDERS[name]
        if (path / batches).is_dir():
            return name, path
        if path.name == batches and path.is_dir():
            return name, path.parent
    if name in IDX_KINDS and path.is_dir() and find_idx_folder(name, path) is not None:
        return name, path
    return "folder", path


def resolve_ood_sources(cfg: Config, cli_specs: Sequence[str], id_kind: str
                        ) -> tuple[list[OODSource], dict[str, str]]:
    """The OOD sets of a run, from the config keys and ``--ood name=path`` specs.

    A benchmark that lists its sets (OpenOOD v1.5) gives every set from its list file under the
    benchmark's root, and a missing list file is an error; the OOD path keys are then unused.
    Otherwise config keys come in benchmark order; a configured path that does not exist is skipped
    with a reason. A spec replaces the configured set of the same name (keeping its place)
    or adds a new one at the end; its path must exist. A CIFAR key equal to ``id_kind`` is
    the ID dataset, never an OOD set.

    Args:
        cfg: the run's config (``cfg.ood_paths()`` gives the configured folders).
        cli_specs: ``name=path`` strings, in command-line order.
        id_kind: ``cifar10`` | ``cifar100`` | ``digits`` | ``imagefolder`` | ``imagenet``.
    Returns:
        ``(sources, skipped)``: sources in report order; skipped maps name -> reason.
    """
    entry = benchmark_entry(cfg.benchmark, id_kind)
    configured = {} if entry.ood_lists else cfg.ood_paths()
    order = list(entry.ood)
    by_name: dict[str, OODSource] = {}
    skipped: dict[str, str] = {}
    if entry.ood_lists:
        root = benchmark_root(cfg, entry)
        for name in order:
            by_name[name] = OODSource(name, "imglist", list_path(cfg, entry, entry.ood_lists[name]),
                                      image_dir=root / entry.image_dir_of(name))
    for name in order:
        raw = configured.get(name)
        if raw is None:
            continue
        path = Path(raw)
        if not path.exists():
            skipped[name] = f"path {raw} not found"
            continue
        kind, root = source_kind(name, path)
        if kind == "folder" and not path.is_dir():
            skipped[name] = f"path {raw} is not a folder"
            continue
        by_name[name] = OODSource(name, kind, root, explicit=False)
    if id_kind in configured and (id_kind in CIFAR_FOLDERS or id_kind in IDX_KINDS):
        skipped[id_kind] = f"{id_kind} is the ID dataset"

    seen_specs: set[str] = set()
    for text in cli_specs:
        name, raw = parse_ood_spec(text)
        if name in seen_specs:
            raise UserError(f"--ood names '{name}' twice; give each OOD set once")
        seen_specs.add(name)
        if name == id_kind:
            raise UserError(f"--ood {name}=... is the ID dataset; an OOD set must differ from it")
        path = Path(raw)
        if not path.exists():
            raise UserError(f"--ood {name}: path '{raw}' not found; fix the path")
        kind, root = source_kind(name, path)
        if kind == "folder" and not path.is_dir():
            raise UserError(f"--ood {name}: '{raw}' is not a folder; pass a folder of images")
        by_name[name] = OODSource(name, kind, root, explicit=True)
        skipped.pop(name, None)

    ordered = [by_name[n] for n in order if n in by_name]
    ordered += [s for n, s in by_name.items() if n not in order]
    return ordered, skipped


def _has_image(root: Path) -> bool:
    """Whether any image file lies under ``root``; stops at the first (folders can be huge)."""
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image_file(f) for f in files):
            return True
    return False


def check_ood_source(source: OODSource) -> Optional[str]:
    """Why ``source`` cannot be scored, or None when it can.

    A problem with a set named on the command line raises UserError instead of returning.
    """
    reason = None
    if source.kind == "imglist":
        if not source.path.is_file():
            reason = f"image list {source.path} not found"
        elif not source.path.read_text().strip():
            reason = f"image list {source.path} is empty"
    elif not source.path.is_dir():
        reason = f"path {source.path} not found"
    elif source.kind == "svhn" and not (source.path / SVHN_TEST_FILE).is_file():
        reason = f"no {SVHN_TEST_FILE} in {source.path}"
    elif source.kind in CIFAR_FOLDERS and not (source.path / CIFAR_FOLDERS[source.kind]).is_dir():
        reason = f"no {CIFAR_FOLDERS[source.kind]}/ in {source.path}"
    elif source.kind == "folder" and not _has_image(source.path):
        reason = f"no images in {source.path}"
    if reason is not None and source.explicit:
        if source.kind == "folder":
            raise UserError(f"OOD folder '{source.path}' named with --ood has no images; put images "
                            f"({', '.join(IMAGE_EXTENSIONS)}) in it, nested folders allowed, or drop --ood {source.name}")
        raise UserError(f"OOD set '{source.name}' named with --ood cannot be read: {reason}; fix the path")
    return reason


# -------------------------------------------------------------------------- sharding, subsampling
def subsample_paths(paths: Sequence[str], k: int, seed: int = PLACES365_SUBSAMPLE_SEED) -> list[str]:
    """A fixed subsample of ``k`` of the sorted ``paths``, in sorted order (all when fewer).

    ``sorted(paths)[i]`` for ``i`` in ``sorted(randperm(n, seed)[:k])``.
    """
    ordered = sorted(paths)
    if len(ordered) <= k:
        return ordered
    chosen = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed))[:k]
    return [ordered[i] for i in sorted(chosen.tolist())]


def load_svhn_test(root: Path) -> torch.Tensor:
    """SVHN's test split from ``root/test_32x32.mat`` through torchvision.

    Like the CIFAR reader, only the file's presence is checked, not its md5, so that files
    written in the same layout (tests, re-packed copies) load too.

    Returns:
        (N, 3, 32, 32) uint8.
    """
    from torchvision.datasets import SVHN  # lazy: torchvision loads only on this path

    class PresentSVHN(SVHN):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()

    try:
        ds = PresentSVHN(str(root), split="test", download=False)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise UserError(f"SVHN at '{root / SVHN_TEST_FILE}' could not be read ({err}); download it again") from None
    return torch.from_numpy(np.ascontiguousarray(ds.data))


def ood_paths(source: OODSource, cfg: Config) -> list[str]:
    """Every image path of a folder or image-list source (Places365: its fixed subsample), in set order."""
    if source.kind == "imglist":  # every listed file; missing ones count as unreadable when read

        return [path for path, _ in read_image_list(source.path, source.image_dir)]
    paths = list_images(source.path)
    if source.name == "places365":
        paths = subsample_paths(paths, cfg.places365_samples)
    return paths


def open_ood(source: OODSource, cfg: Config, device: torch.device | str, batch_size: Optional[int] = None,
             rank: Optional[int] = None, world_size: Optional[int] = None) -> ImageBatches:
    """One OOD set as :class:`~featurenorm.data.batches.ImageBatches` (labels -1), this rank's share.

    Arrays (SVHN, CIFAR) are read on the device exactly like the ID test set; folders and image lists
    by DataLoader workers, unreadable files left out and named in ``unreadable``.
    """
    common = dict(batch_size=batch_size, name=source.name, rank=rank, world_size=world_size)
    if source.kind in ("folder", "imglist"):
        samples = [(path, -1) for path in ood_paths(source, cfg)]
        return ImageBatches(cfg, torch.device(device), samples=samples, tolerant=True, **common)
    if source.kind == "svhn":
        images = load_svhn_test(source.path)
    elif source.kind in IDX_KINDS:
        images = load_idx(source.kind, source.path, train=False)[0]
    else:
        images = load_cifar(source.kind, source.path, train=False, download=False).images
    return ImageBatches(cfg, torch.device(device), images=images, **common)
