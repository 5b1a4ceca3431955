"""The one road from a set of images to scored batches: in set order, one share per rank, gathered back.

Every scoring pass (block selection, the ID-train fit, the ID test set, each OOD set) reads its images
through :class:`ImageBatches`. It yields ``(images, labels, index)``: normalized float images on the
device, their labels (-1 where a set has none) and each image's position in the set. Under torchrun,
rank r takes positions r, r + W, r + 2W, ... (:func:`shard`: the project's one sharding convention;
training applies the same rule to each global batch), and :func:`gather_in_order` puts every rank's
per-image values back in set order by those positions. Files that cannot be read are left out of the
batches and named in ``unreadable``.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..runtime import process_group, shard
from .datasets import channel_conversion, match_channels
from .images import UnreadableImagesWarning, describe_unreadable, eval_transform, read_rgb
from .loaders import DeviceLoader


class _Samples(Dataset):
    """``(path, label)`` samples as ``(image, label, local position, ok)``; an unreadable file gives ``ok=False``
    (and a zero image) when ``tolerant``, else its error."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, size: int, tolerant: bool,
                 channels: int = 3):
        self.samples, self.transform, self.size, self.tolerant = list(samples), transform, size, tolerant
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            return self.transform(read_rgb(path)), label, i, True
        except Exception:  # any decoder error: missing, truncated, not an image, unsupported
            if not self.tolerant:
                raise
            return torch.zeros(self.channels, self.size, self.size), label, i, False


class ImageBatches:
    """In-order ``(images (B, C, S, S) float, labels (B,), index (B,))`` batches of this rank's share of a set.

    Give either ``images`` (N, 1 or 3, H, W) uint8 with ``labels``, read on the device exactly like the ID
    test set, or ``samples`` ``[(path, label), ...]`` read by DataLoader workers with the evaluation
    transform. Both come out in the config's ``channels``; ``conversion`` says how, when they were not. ``subset`` (positions into the set) restricts and orders the set; ``index`` then counts
    positions in ``subset``. The global ``batch_size`` (default ``eval_batch_size``) is split over ranks.

    Attributes:
        unreadable: paths this rank could not read (``tolerant`` sets only), filled during iteration.
        conversion: how the images were brought to the config's channels, in words; None when they were not.
    """

    def __init__(self, cfg: Config, device: torch.device, *, images: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, samples: Sequence[tuple[str, int]] | None = None,
                 subset: torch.Tensor | None = None, batch_size: int | None = None, tolerant: bool = False,
                 name: str = "", rank: int | None = None, world_size: int | None = None):
        if (images is None) == (samples is None):
            raise ValueError("give either images or samples")
        group_rank, group_size = process_group()
        rank = group_rank if rank is None else rank
        world_size = group_size if world_size is None else world_size
        total = len(images) if images is not None else len(samples)
        order = subset if subset is not None else torch.arange(total)
        self.positions = shard(len(order), rank, world_size)
        self.members = order[self.positions]  # this rank's images, as indices into the set
        self.cfg, self.device, self.name, self.tolerant = cfg, torch.device(device), name, tolerant
        self.batch_size = max(1, (batch_size or cfg.eval_batch_size) // world_size)
        if images is not None:
            self.conversion = channel_conversion(images.shape[1], cfg.channels)
            images = match_channels(images, cfg.channels)
        else:  # files are decoded to RGB, then to the config's channels (a gray file's pixels are kept)
            self.conversion = channel_conversion(3, cfg.channels)
        self.images, self.labels, self.samples = images, labels, samples
        self.unreadable: list[str] = []
        self._warned = False  # unreadable files are reported once, on the first pass

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.images is not None:
            yield from self._from_tensors()
        else:
            yield from self._from_files()

    def _from_tensors(self):
        cfg = self.cfg
        labels = self.labels if self.labels is not None else torch.full((len(self.images),), -1, dtype=torch.int64)
        loader = DeviceLoader(self.images[self.members], labels[self.members], self.batch_size, train=False,
                              mean=cfg.mean, std=cfg.std, device=self.device, image_size=cfg.image_size,
                              channels_last=cfg.channels_last, resize_size=cfg.resize_size,
                              interpolation=cfg.interpolation)
        start = 0
        for images, batch_labels in loader:
            size = images.shape[0]
            yield images, batch_labels, self.positions[start:start + size]
            start += size

    def _from_files(self):
        cfg = self.cfg
        mine = [self.samples[i] for i in self.members.tolist()]
        dataset = _Samples(mine, eval_transform(cfg), cfg.image_size, self.tolerant, cfg.channels)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda")
        self.unreadable = []
        for images, labels, local, ok in loader:
            self.unreadable += [mine[i][0] for i in local[~ok].tolist()]
            if not ok.any():
                continue
            images = (images if ok.all() else images[ok]).to(self.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels[ok], self.positions[local[ok]]
        if self.unreadable and not self._warned:
            self._warned = True
            warnings.warn(describe_unreadable(self.name, self.unreadable), UnreadableImagesWarning, stacklevel=2)

    def all_unreadable(self) -> list[str]:
        """Every rank's unreadable paths, in set order."""
        _, world_size = process_group()
        found = list(self.unreadable)
        if world_size > 1:
            parts: list = [None] * world_size
            dist.all_gather_object(parts, found)
            found = [path for part in parts for path in part]
        position = {path: i for i, (path, _) in enumerate(self.samples or [])}
        return sorted(found, key=lambda path: position.get(path, -1))


def split_batches(cfg: Config, split, device: torch.device, subset: torch.Tensor | None = None) -> ImageBatches:
    """In-order batches of an ID split (or of its images ``subset``), this rank's share."""
    if split.images is not None:
        return ImageBatches(cfg, device, images=split.images, labels=split.labels, subset=subset, name=split.name)
    return ImageBatches(cfg, device, samples=split.image_samples(), subset=subset, name=split.name)
