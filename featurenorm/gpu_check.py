"""GPU evidence in one command: every CUDA path of featurenorm, run once, checked and timed.

``bash scripts/gpu_check.sh [--out DIR] [--device cuda|cpu] [--tiny]`` needs no data set. It
makes synthetic CIFAR-shaped uint8 images on the device, writes them in real on-disk formats
(CIFAR-10 python batches for the ID set; SVHN's ``test_32x32.mat`` and a folder of PNGs for the
two OOD sets, half of the OOD images each), and runs the chain through the library functions that
``train.py``, ``select_block.py`` and ``eval_ood.py`` call. Five steps, each checked and timed on
its own, so that a failing step does not stop the others:

1. ``train``: two epochs of :func:`featurenorm.engine.train` with the recipe's execution settings
   (device-resident loader, bf16 autocast, channels_last, ``torch.compile``).
2. ``torchrun``: one epoch of ``train.py`` under ``torchrun --nproc_per_node=1`` (NCCL on CUDA,
   gloo on CPU); the checkpoint loads and reproduces the logged test accuracy; then
   ``train(resume=True)`` (what ``train.py --resume`` calls, here in the check's own process, which
   spares a second torchrun start) trains epoch 2 from it.
3. ``select_block``: :func:`featurenorm.selection.run_selection` on ``selection_images`` training
   images, against a bare forward pass over as many images, plus the benchmark's
   ``selection_vs_forward``.
4. ``eval_ood``: :func:`featurenorm.evaluation.run_evaluation` with every method on the ID test
   set and both OOD sets, plus the benchmark's ``eval_scoring_vs_forward``.
5. ``bf16``: FeatureNorm of every block under bf16 autocast against fp32, on one test batch.

A step passes when it ran without error and its named checks hold (correct counts, finite values,
epochs, backend). Speed targets are reported beside the figures, never as a pass condition.
Everything lands in ``<out>/gpu_check.json`` (see :func:`run_check`); :func:`format_table` prints it.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import pickle
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import io
from .config import Config, load_config
from .errors import UserError

REPO = Path(__file__).resolve().parents[1]  # train.py lives here
SCHEMA = "featurenorm-gpu-check/1"
STEPS = ("train", "torchrun", "select_block", "eval_ood", "bf16")
NUM_CLASSES = 10
IMAGE_SIZE = 32
BF16_TOLERANCE = 5e-2       # largest relative FeatureNorm difference bf16 vs fp32 that passes
ACCURACY_TOLERANCE = 0.01   # reloaded checkpoint vs logged test accuracy (bf16 kernels may flip near-ties)
ID_NOISE_STD = 32.0         # pixel noise around each class colour, in uint8 steps
# One colour per class, far apart in RGB, so that the full run learns the classes within its two
# epochs: a wrong loss, precision or memory format shows as chance accuracy.
CLASS_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200),
                 (40, 200, 200), (128, 128, 128), (230, 140, 60), (60, 140, 230), (140, 60, 230))

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; NVIDIA's datasheets print the 2:4-sparse
# figure, twice these. Matched against torch.cuda.get_device_name in this order.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"\bH200 NVL\b", 835.5, "NVIDIA H200 NVL datasheet: 1,671 TFLOPS BF16 with sparsity / 2"),
    (r"\bH200\b", 989.4, "NVIDIA H200 SXM datasheet: 1,979 TFLOPS BF16 with sparsity / 2"),
    (r"\bH100 NVL\b", 835.5, "NVIDIA H100 NVL datasheet: 1,671 TFLOPS BF16 with sparsity / 2"),
    (r"\bH100 PCIe\b", 756.5, "NVIDIA H100 PCIe datasheet: 1,513 TFLOPS BF16 with sparsity / 2"),
    (r"\bH100\b", 989.4, "NVIDIA H100 SXM datasheet: 1,979 TFLOPS BF16 with sparsity / 2"),
    (r"\bA100\b", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS BF16 dense"),
    (r"\bL40S\b", 362.05, "NVIDIA L40S datasheet: 733 TFLOPS BF16 with sparsity / 2"),
    (r"\bL4\b", 121.0, "NVIDIA L4 datasheet: 242 TFLOPS BF16 with sparsity / 2"),
)


@dataclass(frozen=True)
class Sizes:
    """How much the check does; the full and the tiny run differ only in these numbers.

    Attributes:
        ood_images: split between the two OOD sets (SVHN-format array, PNG folder).
        num_workers: DataLoader workers for the PNG folder; None: min(8, CPU count).
        bench: overrides of the benchmark's own defaults for the device (empty: as
            ``scripts/benchmark.py --device D`` runs).
        min_train_acc: the second epoch's training accuracy must exceed it (None: not checked;
            the tiny run takes too few steps to learn reliably).
        subprocess_timeout: seconds the ``torchrun`` run may take.
    """

    train_images: int
    test_images: int
    ood_images: int
    selection_images: int
    width: float
    batch_size: int
    eval_batch_size: int
    num_workers: int | None
    bench: dict[str, Any] = field(default_factory=dict)
    min_train_acc: float | None = 0.5
    subprocess_timeout: int = 300


FULL = Sizes(train_images=50_000, test_images=10_000, ood_images=10_000, selection_images=10_000, width=1.0,
             batch_size=128, eval_batch_size=256, num_workers=None)
TINY = Sizes(train_images=256, test_images=128, ood_images=128, selection_images=128, width=0.0625,
             batch_size=32, eval_batch_size=64, num_workers=0,
             bench={"width": 0.0625, "batch_size": 32, "repeats": 3, "steps": 1, "warmup": 1, "fit_samples": 256},
             min_train_acc=None, subprocess_timeout=120)


@dataclass
class Peak:
    """The peak bf16 rate that the FLOP fraction is measured against, and where it comes from."""

    tflops: float
    source: str


@dataclass
class StepResult:
    """One step: ``passed`` when it raised nothing and every check holds."""

    passed: bool = False
    seconds: float = 0.0
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    traceback: str | None = None


@dataclass
class CheckContext:
    """What every step shares: the device, the sizes, the folders and the config keys."""

    out: Path
    device: torch.device
    sizes: Sizes
    compile: bool
    peak: Peak | None
    progress: bool
    base: dict[str, Any]

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def torchrun_dir(self) -> Path:
        return self.out / "torchrun"

    @property
    def config_path(self) -> Path:
        return self.out / "gpu_check_config.json"

    @property
    def ood_counts(self) -> dict[str, int]:
        half = self.sizes.ood_images // 2
        return {"svhn": half, "textures": self.sizes.ood_images - half}

    def config(self, **overrides: Any) -> Config:
        """A fresh validated config (steps mutate theirs, e.g. ``num_classes``)."""
        return load_config(None, base={**self.base, **overrides})

    def checkpoint(self) -> Path:
        """Step 1's checkpoint, else step 2's: the later steps need a trained model, not a particular run."""
        for path in (self.run_dir / "last.pt", self.torchrun_dir / "last.pt"):
            if path.is_file():
                return path
        raise RuntimeError("no checkpoint: steps 1 (train) and 2 (torchrun) both failed to write one")


# ------------------------------------------------------------------------------------------- data
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
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(len(images)) % 10 + 1).reshape(-1, 1).astype(np.uint8)
    savemat(root / "test_32x32.mat", {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": labels})
    return root


def write_png_folder(root: Path, images: np.ndarray) -> Path:
    """Write ``root/00000.png, ...``: one RGB PNG per (3, 32, 32) uint8 image."""
    from PIL import Image

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


# ------------------------------------------------------------------------------------------ figures
def peak_for_name(name: str) -> Peak | None:
    """The :data:`PEAK_BF16_TFLOPS` entry for a GPU name as CUDA reports it; None when it is not listed."""
    for pattern, tflops, source in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return Peak(tflops, source)
    return None


def peak_bf16(device: torch.device, override_tflops: float | None) -> Peak | None:
    """``--peak-tflops`` when given, else the table entry for this GPU; None for CPUs and unlisted GPUs."""
    if override_tflops is not None:
        return Peak(float(override_tflops), "--peak-tflops")
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def flops_per_image(arch: str, width: float, num_classes: int = NUM_CLASSES, image_size: int = IMAGE_SIZE
                    ) -> dict[str, float]:
    """FLOPs per image of a forward pass and of a training step (forward + backward), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on a CPU copy of the model (a multiply-add is 2 FLOPs;
    convolutions and matrix products only).

    Returns:
        ``{"forward": ..., "train_step": ...}``; train_step is 3x forward less the first
        convolution's input gradient, which nobody needs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .models import build_model

    batch = 2  # BatchNorm in training mode needs more than one value per channel
    model = build_model(arch, num_classes, width=width)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(images)
    forward = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return {"forward": forward, "train_step": counter.get_total_flops() / batch}


def _read_log(save_dir: Path) -> list[dict[str, Any]]:
    path = save_dir / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed_forward(model: torch.nn.Module, batches: Sequence[torch.Tensor], amp: torch.dtype | None,
                   device: torch.device) -> float:
    """Seconds of a bare ``model(x)`` over ``batches`` (inference mode, ``amp``), after one warm-up batch."""
    from .benchmark import timed
    from .runtime import autocast

    def forward(items: Sequence[torch.Tensor]) -> None:
        with torch.inference_mode():
            for x in items:
                with autocast(amp, device):
                    model(x)

    forward(batches[:1])
    return timed(lambda: forward(batches), device)


def _eval_batches(cfg: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Normalized (B, 3, S, S) batches of ``images`` with the evaluation transform, on ``device``."""
    from .data.loaders import DeviceLoader

    loader = DeviceLoader(images, labels, cfg.eval_batch_size, train=False, mean=cfg.mean, std=cfg.std,
                          device=device, image_size=cfg.image_size, channels_last=cfg.channels_last)
    return [x for x, _ in loader]


def _bench(ctx: CheckContext, figure: str) -> dict[str, Any]:
    """One benchmark figure, measured as ``scripts/benchmark.py --device D`` measures it (tiny: smaller)."""
    from .benchmark import default_settings, run_benchmark

    settings = default_settings(str(ctx.device), **ctx.sizes.bench)
    report = run_benchmark(settings, figures=(figure,))
    entry = report["results"][figure]
    return {"ratio": entry["ratio"], "target": entry["target"], "met": entry["met"],
            "images_per_s": entry["images_per_s"], "baseline_images_per_s": entry["baseline_images_per_s"],
            "settings": {k: report["settings"][k] for k in ("width", "batch_size", "repeats", "steps")}}


# -------------------------------------------------------------------------------------------- steps
def step_train(ctx: CheckContext, result: StepResult) -> None:
    """Two epochs in-process: seconds per epoch with compile time apart, images/s, memory, FLOP fraction."""
    from .engine import train
    from .runtime import amp_dtype

    cfg = ctx.config()
    amp = amp_dtype(cfg, ctx.device)
    result.figures["settings_used"] = {"loader": cfg.loader, "amp": str(amp).replace("torch.", "") if amp else "fp32",
                                       "channels_last": cfg.channels_last, "compile": cfg.compile,
                                       "batch_size": cfg.batch_size, "width": cfg.width, "arch": cfg.arch}
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    metrics = train(cfg, overwrite=True, progress=ctx.progress)
    log = _read_log(ctx.run_dir)
    epoch_seconds = [entry["seconds"] for entry in log]
    steady = epoch_seconds[-1]
    images_per_s = ctx.sizes.train_images / steady
    flops = flops_per_image(cfg.arch, cfg.width)
    achieved = flops["train_step"] * images_per_s
    result.figures.update({
        "epoch_seconds": epoch_seconds,
        "steady_epoch_seconds": steady,
        # the first epoch pays for tracing and compiling (and a recompile for the last, smaller batch)
        "compile_seconds": round(max(epoch_seconds[0] - steady, 0.0), 3),
        "images_per_s": round(images_per_s, 1),
        "train_images": ctx.sizes.train_images,
        "test_acc": metrics["test_acc"],
        "train_acc": [entry["train_acc"] for entry in log],
        "train_loss": [entry["train_loss"] for entry in log],
        "peak_memory_mib": (round(torch.cuda.max_memory_allocated(ctx.device) / 2 ** 20, 1)
                            if ctx.device.type == "cuda" else None),
        "flops_per_image": flops,
        "achieved_tflops": achieved / 1e12,
        "peak_fraction": achieved / (ctx.peak.tflops * 1e12) if ctx.peak else None,
        "target_epoch_seconds": 3.0,
    })
    result.checks = {
        "two epochs logged": [entry["epoch"] for entry in log] == [1, 2],
        "losses finite": all(math.isfinite(entry["train_loss"]) for entry in log),
    }
    if ctx.sizes.min_train_acc is not None:
        # the classes are solid colours: near chance (0.1) means the compiled bf16 step is broken
        result.checks[f"training accuracy above {ctx.sizes.min_train_acc:g}"] = \
            log[-1]["train_acc"] > ctx.sizes.min_train_acc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_train(ctx: CheckContext, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``torchrun --nproc_per_node=1 train.py --config <check config> --set save_path=<out>/torchrun ...``."""
    script = REPO / "train.py"
    if not script.is_file():
        raise RuntimeError(f"train.py not found at {script}; run the check from a featurenorm checkout")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={_free_port()}",
               str(script), "--config", str(ctx.config_path), "--no-progress",
               "--set", f"save_path={ctx.torchrun_dir}", "--set", "compile=false", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):  # let torchrun set its own
        env.pop(key, None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=ctx.sizes.subprocess_timeout)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} under torchrun exited {done.returncode}: "
                           f"{(done.stderr or done.stdout)[-1500:]}")
    return done, seconds


def step_torchrun(ctx: CheckContext, result: StepResult) -> None:
    """train.py under torchrun: the process group's backend, the checkpoint, and resuming from it."""
    from .checkpoint import load_for_config, read_checkpoint
    from .data.datasets import load_split
    from .data.loaders import make_loader
    from .engine import evaluate_accuracy, train
    from .runtime import amp_dtype

    expected = "nccl" if ctx.device.type == "cuda" else "gloo"
    if ctx.torchrun_dir.exists():
        shutil.rmtree(ctx.torchrun_dir)
    first, first_seconds = _torchrun_train(ctx, "--set", "epochs=1")
    group = re.search(r"process group: backend (\w+), world size (\d+)", first.stderr)
    last = ctx.torchrun_dir / "last.pt"
    state = read_checkpoint(last)
    logged_acc = state["metrics"]["test_acc"]
    cfg = ctx.config(save_path=str(ctx.torchrun_dir), epochs=1, compile=False)
    model = load_for_config(cfg, last, ctx.device)
    loader = make_loader(cfg, load_split(cfg, train=False), train=False, device=ctx.device)
    reloaded_acc = evaluate_accuracy(model, loader, amp_dtype(cfg, ctx.device))
    del model, loader
    started = time.perf_counter()
    train(ctx.config(save_path=str(ctx.torchrun_dir), epochs=2, compile=False), resume=True, progress=ctx.progress)
    resume_seconds = time.perf_counter() - started
    log = _read_log(ctx.torchrun_dir)
    final = read_checkpoint(last)
    result.figures.update({
        "backend": group.group(1) if group else None,
        "world_size": int(group.group(2)) if group else None,
        "first_run_seconds": round(first_seconds, 3),
        "resume_seconds": round(resume_seconds, 3),
        "epoch_seconds": [entry["seconds"] for entry in log],
        "checkpoint_epoch_after_first_run": state["epoch"],
        "checkpoint_epoch_after_resume": final["epoch"],
        "logged_epochs": [entry["epoch"] for entry in log],
        "logged_test_acc": logged_acc,
        "reloaded_test_acc": reloaded_acc,
        "compile": False,  # compile is timed in step 1; this step checks the process group and the checkpoint
    })
    result.checks = {
        f"backend is {expected}": group is not None and group.group(1) == expected,
        "first run saved epoch 1": state["epoch"] == 1 and bool(state["finished"]),
        "checkpoint reloads to the logged accuracy": abs(reloaded_acc - logged_acc) <= ACCURACY_TOLERANCE,
        "resume continued at epoch 2": [entry["epoch"] for entry in log] == [1, 2] and final["epoch"] == 2
        and bool(final["finished"]),
    }


def step_select_block(ctx: CheckContext, result: StepResult) -> None:
    """run_selection on ``selection_images`` training images vs a bare forward over the same 2N images."""
    from .checkpoint import load_for_config
    from .data.datasets import load_split
    from .runtime import amp_dtype
    from .selection import run_selection

    cfg = ctx.config()
    checkpoint = ctx.checkpoint()
    count = ctx.sizes.selection_images
    started = time.perf_counter()
    selection = run_selection(cfg, str(checkpoint), num_samples=count, progress=ctx.progress).to_dict()
    seconds = time.perf_counter() - started
    # the baseline: as many images through the bare model, each batch doubled as selection doubles
    # it with the puzzles (the pixels do not matter to the speed)
    model = load_for_config(cfg, checkpoint, ctx.device)
    split = load_split(cfg, train=True)
    batches = [torch.cat([x, x.flip(3)]) for x in _eval_batches(cfg, split.images[:count], split.labels[:count],
                                                                  ctx.device)]
    forward_seconds = _timed_forward(model, batches, amp_dtype(cfg, ctx.device), ctx.device)
    del model, batches
    images = 2 * selection["num_samples"]  # ID images and their puzzles
    rows = selection["blocks"]
    result.figures.update({
        "seconds": round(seconds, 3),
        "num_samples": selection["num_samples"],
        "images_through_network": images,
        "images_per_s": round(images / seconds, 1),
        "bare_forward_images_per_s": round(images / forward_seconds, 1),
        "end_to_end_vs_forward": (images / seconds) / (images / forward_seconds),
        "selected": selection["selected"]["name"],
        "checkpoint": str(checkpoint),
        "benchmark_selection_vs_forward": _bench(ctx, "selection_vs_forward"),
    })
    result.checks = {
        f"{count} images scored": selection["num_samples"] == count,
        "every NormRatio finite": all(math.isfinite(row["norm_ratio"]) for row in rows),
        "a block selected": selection["selected"]["name"] in [row["name"] for row in rows],
    }


def step_eval_ood(ctx: CheckContext, result: StepResult) -> None:
    """run_evaluation with every method on the ID test set and both OOD sets."""
    from .evaluation import run_evaluation
    from .methods import method_names
    from .metrics import METRIC_KEYS

    cfg = ctx.config()
    checkpoint = ctx.checkpoint()
    # without step 3's block_selection.json, score FeatureNorm at a fixed block rather than fail too
    block = None if (cfg.save_dir / "block_selection.json").is_file() else "layer4.0"
    started = time.perf_counter()
    results = run_evaluation(cfg, str(checkpoint), "all", block, progress=ctx.progress).results
    seconds = time.perf_counter() - started
    methods = results["methods"]
    first = next(iter(methods.values()))
    num_ood = {name: first[name]["num_ood"] for name in first if "num_ood" in first[name]}
    images = results["num_id"] + sum(num_ood.values())
    finite = all(math.isfinite(per_set[name][key]) for per_set in methods.values() for name in per_set
                 for key in METRIC_KEYS)
    result.figures.update({
        "seconds": round(seconds, 3),
        "num_id": results["num_id"],
        "num_ood": num_ood,
        "images_per_s": round(images / seconds, 1),
        "methods": list(methods),
        "block": results["block"]["name"] if results["block"] else None,
        "id_accuracy": results["id_accuracy"],
        "featurenorm_average_auroc": methods["featurenorm"]["average"]["auroc"] if "featurenorm" in methods else None,
        "benchmark_eval_scoring_vs_forward": _bench(ctx, "eval_scoring_vs_forward"),
    })
    result.checks = {
        "every method scored": list(methods) == method_names(),
        f"{ctx.sizes.test_images} ID images": results["num_id"] == ctx.sizes.test_images,
        "every OOD image": num_ood == ctx.ood_counts,
        "every metric finite": finite,
    }


def relative_difference(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """max_i |approx_i - reference_i| / mean_i |reference_i|: the largest error in units of the
    batch's mean value.

    Dividing each image by its own value instead would blow up where a block's norm is near 0
    (a few narrow blocks switch off for some images), although such an image's rank is safe.

    Args:
        approx, reference: (B,).
    """
    reference = reference.double()
    return float((approx.double() - reference).abs().max() / reference.abs().mean().clamp_min(1e-30))


def step_bf16(ctx: CheckContext, result: StepResult) -> None:
    """FeatureNorm of every block on one test batch, bf16 autocast vs fp32: largest relative difference."""
    from .checkpoint import load_for_config
    from .data.datasets import load_split
    from .features import block_feature_norms
    from .models import block_names, build_model
    from .runtime import autocast

    cfg = ctx.config()
    try:
        checkpoint = ctx.checkpoint()
        model = load_for_config(cfg, checkpoint, ctx.device)
        source = str(checkpoint)
    except RuntimeError:  # no trained model: an untrained one still shows what bf16 does to the norms
        torch.manual_seed(0)
        model = build_model(cfg.arch, NUM_CLASSES, width=cfg.width).to(ctx.device).eval()
        source = "untrained (no checkpoint)"
    split = load_split(cfg, train=False)
    batch = _eval_batches(cfg, split.images, split.labels, ctx.device)[0]
    blocks = block_names(model)
    fp32 = block_feature_norms(model, batch, blocks)
    with autocast(torch.bfloat16, ctx.device):
        bf16 = block_feature_norms(model, batch, blocks)
    per_block = {name: relative_difference(bf16[name], fp32[name]) for name in blocks}
    largest = max(per_block.values())
    result.figures.update({"largest_relative_difference": largest, "tolerance": BF16_TOLERANCE,
                           "per_block": per_block, "batch_images": int(batch.shape[0]), "model": source})
    result.checks = {
        f"below {BF16_TOLERANCE:g}": math.isfinite(largest) and largest < BF16_TOLERANCE,
        "bf16 changed the norms (autocast ran)": largest > 0,  # exactly 0: both passes ran in fp32
    }


STEP_FUNCTIONS: dict[str, Callable[[CheckContext, StepResult], None]] = {
    "train": step_train, "torchrun": step_torchrun, "select_block": step_select_block, "eval_ood": step_eval_ood,
    "bf16": step_bf16,
}


def run_step(name: str, ctx: CheckContext) -> StepResult:
    """Run one step; an exception or a failed check becomes its error text, never the caller's."""
    result = StepResult()
    started = time.perf_counter()
    try:
        STEP_FUNCTIONS[name](ctx, result)
        failed = [check for check, ok in result.checks.items() if not ok]
        result.passed = bool(result.checks) and not failed
        if failed:
            result.error = "failed checks: " + "; ".join(failed)
    except Exception as err:  # one failing step must not stop the others
        result.error = f"{type(err).__name__}: {err}"
        result.traceback = "".join(traceback.format_exc().splitlines(keepends=True)[-30:])
    finally:
        result.seconds = round(time.perf_counter() - started, 3)
        _free_device_memory(ctx.device)
    return result


# -------------------------------------------------------------------------------------------- the run
def machine_info(device: torch.device) -> dict[str, Any]:
    """The device, its name and memory, and the software versions."""
    from .benchmark import device_name
    from .runtime import git_commit

    info: dict[str, Any] = {
        "device": str(device), "name": device_name(device), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,  # the CUDA torch was built for
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "platform": platform.platform(), "git_commit": git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(memory_gib=round(props.total_memory / 2 ** 30, 1), capability=f"{props.major}.{props.minor}",
                    bf16_supported=torch.cuda.is_bf16_supported(), nccl=_nccl_version())
    return info


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older releases
    except Exception:  # no NCCL in this build: the torchrun step will say so
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def resolve_check_device(name: str) -> torch.device:
    if name not in ("cuda", "cpu") and not name.startswith("cuda:"):
        raise UserError(f"--device must be cuda, cuda:N or cpu, got '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available here; pass --device cpu (with --tiny for the quick run)")
    device = torch.device(name)
    return torch.device("cuda:0") if device.type == "cuda" and device.index is None else device


def base_config(out: Path, device: torch.device, sizes: Sizes, compile_model: bool) -> dict[str, Any]:
    """The config keys of the check: the recipe's execution settings, the synthetic data, the sizes."""
    workers = sizes.num_workers if sizes.num_workers is not None else min(8, os.cpu_count() or 1)
    data = out / "data"
    return {
        "id_dataset": str(data / "cifar10"), "data_root": str(data), "num_classes": NUM_CLASSES,
        "arch": "resnet18", "width": sizes.width, "epochs": 2, "milestones": [], "batch_size": sizes.batch_size,
        "eval_batch_size": sizes.eval_batch_size, "device": str(device), "loader": "gpu", "amp": "bf16",
        "channels_last": True, "compile": compile_model, "num_workers": workers,
        "selection_samples": sizes.selection_images, "save_path": str(out / "run"),
        "svhn": str(data / "svhn"), "textures": str(data / "textures"), "seed": 0,
    }


def run_check(out: str | Path, device: str = "cuda", tiny: bool = False, peak_tflops: float | None = None,
              compile_model: bool | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make the data, run the five steps, write and return ``<out>/gpu_check.json``.

    Args:
        compile_model: None: on for CUDA; off for CPU, where inductor's first C++ compile of
            the training step takes about 50 s on two cores.
    Returns:
        ``{"schema", "passed", "seconds", "mode", "machine", "settings", "peak_bf16",
        "data", "steps": {step: {"passed", "seconds", "error", "figures", "checks", "traceback"}}}``.
    """
    from .runtime import amp_dtype

    say = log or (lambda text: None)
    started = time.perf_counter()
    torch_device = resolve_check_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    sizes = TINY if tiny else FULL
    if compile_model is None:
        compile_model = torch_device.type == "cuda"
    ctx = CheckContext(out=out, device=torch_device, sizes=sizes, compile=compile_model,
                       peak=peak_bf16(torch_device, peak_tflops), progress=progress,
                       base=base_config(out, torch_device, sizes, compile_model))
    for stale in (ctx.run_dir, ctx.torchrun_dir):
        if stale.exists():
            shutil.rmtree(stale)  # a fit cache or selection of an earlier run would skew the timings
    io.write_json(ctx.config_path, ctx.base)
    amp = amp_dtype(ctx.config(), torch_device)
    report: dict[str, Any] = {
        "schema": SCHEMA, "passed": False, "seconds": None, "mode": "tiny" if tiny else "full",
        "machine": machine_info(torch_device),
        "settings": {**{k: ctx.base[k] for k in ("arch", "width", "batch_size", "eval_batch_size", "loader", "amp",
                                                  "channels_last", "compile", "num_workers")},
                     # autocast is a CUDA feature here: the CPU runs fp32 (step 5 uses CPU bf16 itself)
                     "amp_used": str(amp).replace("torch.", "") if amp else "fp32",
                     "sizes": dataclasses.asdict(sizes), "config": str(ctx.config_path)},
        "peak_bf16": dataclasses.asdict(ctx.peak) if ctx.peak else None,
        "steps": {},
    }
    say(f"making synthetic data on {torch_device} ...")
    try:
        report["data"] = make_data(ctx)
    except Exception as err:  # every step then fails on the missing files, each with its own message
        report["data"] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        say(f"making the data failed: {report['data']['error']}")
    for number, name in enumerate(STEPS, 1):
        say(f"[{number}/{len(STEPS)}] {name} ...")
        result = run_step(name, ctx)
        report["steps"][name] = dataclasses.asdict(result)
        say(f"[{number}/{len(STEPS)}] {name}: {'pass' if result.passed else 'FAIL'} in {result.seconds:.1f}s"
            + (f" ({result.error})" if result.error else ""))
    report["passed"] = all(step["passed"] for step in report["steps"].values())
    report["seconds"] = round(time.perf_counter() - started, 3)
    io.write_json(out / "gpu_check.json", report)
    return report


def _number(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def step_summary(name: str, step: dict[str, Any]) -> str:
    """One line of the step's headline figures (empty when it failed before measuring)."""
    f = step["figures"]
    try:
        if name == "train":
            fraction = f.get("peak_fraction")
            extra = "compile" if f["settings_used"]["compile"] else "first-epoch extra (compile off)"
            return (f"{_number(f['steady_epoch_seconds'], 2)} s/epoch, {extra} {_number(f['compile_seconds'])} s, "
                    f"{_number(f['images_per_s'], 0)} img/s, peak mem {_number(f['peak_memory_mib'], 0, ' MiB')}, "
                    f"{_number(None if fraction is None else 100 * fraction, 1, '%')} of peak bf16, "
                    f"test acc {f['test_acc']:.3f}")
        if name == "torchrun":
            return (f"backend {f['backend']}, epochs {f['logged_epochs']}, acc logged {f['logged_test_acc']:.3f} / "
                    f"reloaded {f['reloaded_test_acc']:.3f}")
        if name == "select_block":
            bench = f["benchmark_selection_vs_forward"]
            return (f"{_number(f['images_per_s'], 0)} img/s vs bare forward "
                    f"{_number(f['bare_forward_images_per_s'], 0)} ({f['end_to_end_vs_forward']:.2f}); "
                    f"pass alone {bench['ratio']:.3f} ({bench['target']}); selected {f['selected']}")
        if name == "eval_ood":
            bench = f["benchmark_eval_scoring_vs_forward"]
            return (f"{f['num_id']} ID + {sum(f['num_ood'].values())} OOD, {len(f['methods'])} methods, "
                    f"{_number(f['images_per_s'], 0)} img/s; scoring vs forward {bench['ratio']:.3f} "
                    f"({bench['target']})")
        if name == "bf16":
            return f"largest relative difference {f['largest_relative_difference']:.2e} (tolerance {f['tolerance']:g})"
    except (KeyError, TypeError):
        return ""
    return ""


def format_table(report: dict[str, Any]) -> str:
    """The human-readable summary of :func:`run_check`'s report."""
    m = report["machine"]
    peak = report["peak_bf16"]
    peak_text = f"{peak['tflops']:g} TFLOP/s ({peak['source']})" if peak else "unknown (pass --peak-tflops)"
    lines = [f"featurenorm GPU check ({report['mode']}): {m['name']} ({m['device']}), torch {m['torch']}, "
             f"built for CUDA {m['torch_cuda'] or 'n/a'}",
             f"peak bf16: {peak_text}",
             f"{'step':<14}{'result':<8}{'seconds':>9}  figures"]
    for name, step in report["steps"].items():
        lines.append(f"{name:<14}{'pass' if step['passed'] else 'FAIL':<8}{step['seconds']:>9.1f}  "
                     f"{step_summary(name, step)}")
        if step["error"]:
            lines.append(f"{'':<14}error: {step['error'][:300]}")
    lines.append(f"total {report['seconds']:.1f} s; {'all steps passed' if report['passed'] else 'SOME STEPS FAILED'}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="Run every CUDA path of featurenorm once on synthetic data; "
                                                 "write gpu_check.json and print a table.")
    parser.add_argument("--out", default="runs/gpu_check", help="output folder (default runs/gpu_check)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="a few hundred images at width 0.0625 (seconds, for CI)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s (default: from a table)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile in step 1 (auto: on for CUDA, off for CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UserError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    compile_model = {"auto": None, "on": True, "off": False}[args.compile]
    report = run_check(args.out, args.device, args.tiny, args.peak_tflops, compile_model,
                       progress=not args.no_progress, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(report))
    print(f"wrote {Path(args.out) / 'gpu_check.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    from .errors import run_cli

    sys.exit(run_cli(main))
