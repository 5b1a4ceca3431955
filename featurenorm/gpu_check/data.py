"""The check's synthetic CIFAR-shaped data, drawn on the device and written in the real on-disk formats."""
from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .context import CLASS_COLOURS, ID_NOISE_STD, IMAGE_SIZE, NUM_CLASSES, CheckContext


def synthetic_id_images(count: int, generator: torch.Generator, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-coloured noise: class c is ``CLASS_COLOURS[c]`` plus N(0, ``ID_NOISE_STD``^2) per pixel.

    Returns:
        images (count, 3, 32, 32) uint8 and labels (count,) int64, on ``device``.
    """
    colours = torch.tensor(CLASS_COLOURS, dtype=torch.float32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator, device=device)
    images = torch.empty(count, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=device)
    for start in range(0, count, 10_000):  # bounded float memory for the 50,000-image set
        stop = min(count, start + 10_000)
        noise = torch.randn(stop - start, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, device=device)
        pixels = colours[labels[start:stop]][:, :, None, None] + ID_NOISE_STD * noise
        images[start:stop] = pixels.round().clamp(0, 255).to(torch.uint8)
    return images, labels


def synthetic_ood_images(count: int, kind: str, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """OOD images unlike any class: ``uniform`` (every pixel uniform over 0..255) or ``blobs``
    (a random 4x4 colour grid, upsampled bilinearly).

    Returns:
        (count, 3, 32, 32) uint8 on ``device``.
    """
    if kind == "uniform":
        return torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator, device=device,
                             dtype=torch.uint8)
    if kind == "blobs":
        coarse = torch.rand(count, 3, 4, 4, generator=generator, device=device) * 255
        pixels = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return pixels.round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"unknown OOD kind '{kind}'; use uniform or blobs")


def _dump_pickle(path: Path, obj: dict[str, Any]) -> None:
    # the real batches are Python 2 pickles; protocol 2 with str keys is what torchvision's reader sees
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                  test_labels: np.ndarray) -> Path:
    """Write ``root/cifar-10-batches-py`` as CIFAR-10 ships it: five training batches, ``test_batch``, ``batches.meta``.

    Args:
        train_images, test_images: (N, 3, 32, 32) uint8; stored as (N, 3072) rows in CHW order.
        train_labels, test_labels: (N,) ints in 0..9.
    Returns:
        ``root``, the value of the config key ``id_dataset``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = zip(np.array_split(np.arange(len(train_images)), 5), range(1, 6))
    for index, number in parts:
        name = f"data_batch_{number}"
        _dump_pickle(folder / name, {"batch_label": name, "data": train_images[index].reshape(len(index), -1),
                                     "labels": train_labels[index].tolist(),
                                     "filenames": [f"{name}_{i}.png" for i in range(len(index))]})
    _dump_pickle(folder / "test_batch", {"batch_label": "test_batch", "data": test_images.reshape(len(test_images), -1),
                                         "labels": test_labels.tolist(),
                                         "filenames": [f"test_{i}.png" for i in range(len(test_images))]})
    _dump_pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(NUM_CLASSES)],
                                           "num_vis": 3 * IMAGE_SIZE * IMAGE_SIZE})
    return root


def write_svhn_test(root: Path, images: np.ndarray) -> Path:
    """Write ``root/test_32x32.mat`` in SVHN's layout: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) in 1..10.

    Args:
        images: (N, 3, 32, 32) uint8.
    """
    from scipy.io import savemat  # lazy: scipy is heavy, and only this path needs it

    root.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(len(images)) % 10 + 1).reshape(-1, 1).astype(np.uint8)
    savemat(root / "test_32x32.mat", {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": labels})
    return root


def write_png_folder(root: Path, images: np.ndarray) -> Path:
    """Write ``root/00000.png, ...``: one RGB PNG per (3, 32, 32) uint8 image."""
    root.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB").save(root / f"{i:05d}.png")
    return root


def make_data(ctx: CheckContext, seed: int = 0) -> dict[str, Any]:
    """Draw every image on the device, then write the ID set and the two OOD sets under ``<out>/data``.

    Returns:
        figures: seconds to draw on the device and to write, and the counts written.
    """
    sizes, device = ctx.sizes, ctx.device
    if ctx.data_dir.exists():
        shutil.rmtree(ctx.data_dir)  # stale files of a larger earlier run would be read too
    generator = torch.Generator(device=device).manual_seed(seed)
    started = time.perf_counter()
    train_images, train_labels = synthetic_id_images(sizes.train_images, generator, device)
    test_images, test_labels = synthetic_id_images(sizes.test_images, generator, device)
    counts = ctx.ood_counts
    svhn = synthetic_ood_images(counts["svhn"], "uniform", generator, device)
    folder = synthetic_ood_images(counts["textures"], "blobs", generator, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    drawn = time.perf_counter() - started
    arrays = [t.cpu().numpy() for t in (train_images, train_labels, test_images, test_labels, svhn, folder)]
    del train_images, test_images, svhn, folder
    started = time.perf_counter()
    write_cifar10(ctx.data_dir / "cifar10", *arrays[:4])
    write_svhn_test(ctx.data_dir / "svhn", arrays[4])
    write_png_folder(ctx.data_dir / "textures", arrays[5])
    return {"draw_seconds": round(drawn, 3), "write_seconds": round(time.perf_counter() - started, 3),
            "train_images": sizes.train_images, "test_images": sizes.test_images, "ood_images": counts}
