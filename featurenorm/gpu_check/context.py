"""What every step of the GPU check shares: the constants, the sizes, the context, the peak table.

:class:`CheckContext` carries the device, the :class:`Sizes`, the folders and the config keys;
:func:`peak_bf16` and :func:`flops_per_image` give the FLOP fraction that step 1 reports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config, load_config
from ..models import build_model


REPO = Path(__file__).resolve().parents[2]  # train.py lives here
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

    data_dir: Path = field(init=False)  # the folders and the config file under ``out``
    run_dir: Path = field(init=False)
    torchrun_dir: Path = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self):
        self.data_dir, self.run_dir, self.torchrun_dir = (self.out / name for name in ("data", "run", "torchrun"))
        self.config_path = self.out / "gpu_check_config.json"

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
