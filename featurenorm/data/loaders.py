"""Loaders that yield normalized ``(images, labels)`` batches on the model's device.

- :class:`DeviceLoader` (``"loader": "gpu"``): the whole split lives on the device as uint8;
  random crop with padding and horizontal flip run batched there, with normalization fused in.
  No worker processes. On CPU it is simply an in-memory loader.
- :class:`FolderLoader` (``"loader": "torch"``): a torch DataLoader with workers, pinned memory
  and persistent workers, for ImageFolder data.

Both shuffle with a generator seeded by ``(seed, epoch)``, so an epoch's order and
augmentation do not depend on what ran before it: a resumed run sees the same batches.
Both can shard the data for distributed runs (``rank``, ``world_size``).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import Config
from ..runtime import shard
from .datasets import Split
from .images import split_dataset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift so that ``uint8 * scale - shift == (x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t


def to_device_async(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without making the host wait for the device.

    A plain copy from pageable memory to a GPU synchronizes, so every training step would wait
    for the previous one to finish; staging in pinned memory lets the copy queue behind it.
    """
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip.

    Args:
        images: (B, C, H, W) uint8 or float on any device.
        generator: CPU generator; the random offsets are drawn on the CPU and moved over.
    Returns:
        (B, C, H, W), same dtype and device.
    """
    B, C, H, W = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = to_device_async(torch.randint(0, 2 * padding + 1, (B,), generator=generator), device)
        dx = to_device_async(torch.randint(0, 2 * padding + 1, (B,), generator=generator), device)
        rows = (dy[:, None] + torch.arange(H, device=device))[:, None, :, None].expand(B, C, H, W + 2 * padding)
        picked = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(W, device=device))[:, None, None, :].expand(B, C, H, W)
        images = picked.gather(3, cols)
    if hflip:
        flip = to_device_async(torch.rand(B, generator=generator) < 0.5, device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def resize_center_crop(images: torch.Tensor, resize_size: int, crop_size: int,
                       interpolation: str = "bilinear") -> torch.Tensor:
    """Shorter side to ``resize_size`` (antialiased), then the center ``crop_size`` square.

    The batched counterpart of :func:`featurenorm.data.images.eval_transform` with ``resize_size``; the
    longer side is scaled as torchvision's ``resize`` does it (truncated).

    Args:
        images: (B, C, H, W) float.
        interpolation: ``bilinear`` or ``bicubic``.
    Returns:
        (B, C, crop_size, crop_size).
    """
    height, width = images.shape[-2:]
    short, long = sorted((height, width))
    longer = int(resize_size * long / short)
    size = (resize_size, longer) if height <= width else (longer, resize_size)
    if size != (height, width):
        images = F.interpolate(images, size=size, mode=interpolation, align_corners=False, antialias=True)
    top, left = (size[0] - crop_size) // 2, (size[1] - crop_size) // 2
    return images[..., top:top + crop_size, left:left + crop_size]


class DeviceLoader:
    """Batches from uint8 images held on ``device``.

    Args:
        images: (N, 3, H, W) uint8.
        labels: (N,) int64.
        image_size: output size; images are resized bilinearly on the device when it differs.
        resize_size: when given (eval only), the shorter side is resized to it (with ``interpolation``)
            and the center ``image_size`` crop is kept instead, as for images read from folders.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, mean, std,
                 device: torch.device, seed: int = 0, crop_padding: int = 4, hflip: bool = True,
                 image_size: int | None = None, channels_last: bool = False, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, resize_size: int | None = None, interpolation: str = "bilinear"):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size  # the global batch: each rank takes batch_size / world_size of it
        self.train, self.device, self.seed = train, device, seed
        self.crop_padding, self.hflip = crop_padding, hflip
        self.image_size = image_size
        self.resize_size, self.interpolation = resize_size, interpolation
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.scale, self.shift = normalizer(mean, std, device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last and self.train else math.ceil(n / self.batch_size)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        if self.train:
            return torch.randperm(self.num_samples, generator=generator).to(self.device)
        return torch.arange(self.num_samples, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's part of each global batch, starting at ``start_step`` (for resuming)."""
        generator = epoch_generator(self.seed, self.epoch)
        order = self._order(generator)
        for step in range(len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            # draw the augmentation for the whole global batch, so every rank's stream is the same
            batch = self.images[index]
            if self.train:
                batch = random_crop_flip(batch, self.crop_padding, self.hflip, generator)
            if step < start_step:
                continue
            if self.world_size > 1:  # this rank's share of the global batch (runtime.shard)
                mine = shard(len(index), self.rank, self.world_size).to(self.device)
                batch, labels = batch[mine], self.labels[index][mine]
            else:
                labels = self.labels[index]
            yield self.prepare(batch), labels

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalized float (B, 3, S, S) on the device."""
        x = batch.float().mul_(self.scale).sub_(self.shift)
        if self.resize_size is not None and not self.train:
            x = resize_center_crop(x, self.resize_size, self.image_size or self.resize_size, self.interpolation)
        elif self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class ShardedBatchSampler:
    """Batches of dataset indices for one rank: the epoch's order (shuffled by ``(seed, epoch)`` when training)
    cut into global batches of ``batch_size``, of which this rank takes positions rank, rank + W, ... (the
    project's one sharding rule, :func:`featurenorm.runtime.shard`)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)) if self.shuffle \
            else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            yield batch[shard(len(batch), self.rank, self.world_size)].tolist()


class FolderLoader:
    """A torch DataLoader (workers, pinned memory, persistent workers) moving batches to ``device``."""

    def __init__(self, dataset, batch_size: int, *, train: bool, cfg: Config, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.train, self.device, self.seed = train, device, cfg.seed
        self.channels_last = cfg.channels_last
        self.epoch = 0
        self.batch_size = max(1, batch_size // world_size)  # the config's batch size is the global batch
        self._generator = torch.Generator()
        self.sampler = None
        if world_size > 1:  # each rank takes its share of every global batch, as DeviceLoader does
            self.sampler = ShardedBatchSampler(len(dataset), batch_size, train, cfg.seed, rank, world_size)
            self._loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                      pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                                      generator=self._generator)
        else:
            self._loader = DataLoader(
                dataset, batch_size=self.batch_size, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                persistent_workers=cfg.num_workers > 0, shuffle=train, generator=self._generator)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start_step: int = 0):
        # reseeding the same generator object keeps persistent workers valid between epochs
        self._generator.manual_seed(self.seed * 100_003 + self.epoch)
        batches = iter(self._loader)
        if start_step:
            # Skipped batches are still loaded, and without workers their random crops and flips
            # draw from the global RNG that the checkpoint restored: put it back, so that the rest
            # of the epoch matches an uninterrupted run. (Workers keep their own RNG streams.)
            rng = torch.get_rng_state()
            for _ in zip(range(start_step), batches):
                pass
            torch.set_rng_state(rng)
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def make_loader(cfg: Config, split: Split, *, train: bool, device: torch.device, batch_size: int | None = None,
                rank: int = 0, world_size: int = 1):
    """The loader the config asks for (``loader``: auto, gpu, torch)."""
    batch_size = batch_size or (cfg.batch_size if train else cfg.eval_batch_size)
    use_device = split.images is not None and cfg.loader in ("auto", "gpu")
    if use_device:
        return DeviceLoader(split.images, split.labels, batch_size, train=train, mean=cfg.mean, std=cfg.std,
                            device=device, seed=cfg.seed, crop_padding=cfg.crop_padding, hflip=cfg.hflip,
                            image_size=cfg.image_size, channels_last=cfg.channels_last, rank=rank,
                            world_size=world_size, resize_size=cfg.resize_size, interpolation=cfg.interpolation)
    return FolderLoader(split_dataset(split, cfg, train), batch_size, train=train, cfg=cfg, device=device,
                        rank=rank, world_size=world_size)
