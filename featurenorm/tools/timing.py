"""Side-by-side throughput measurement: the ratio of two timed callables, median over interleaved repeats."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Paired:
    """One side-by-side measurement.

    Attributes:
        ratio: median over repetitions of measured / baseline throughput.
        images_per_s: median throughput of the measured side.
        baseline_images_per_s: median throughput of the baseline side.
        ratios: the per-repetition ratios.
    """

    ratio: float
    images_per_s: float
    baseline_images_per_s: float
    ratios: list[float] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_pair(measured: Callable[[], Any], baseline: Callable[[], Any], measured_images: int,
                 baseline_images: int, repeats: int, warmup: int, device: torch.device) -> Paired:
    """Throughput ratio measured / baseline: median over ``repeats`` interleaved repetitions.

    Each call of ``measured`` processes ``measured_images`` images, each call of ``baseline``
    ``baseline_images``. Both run ``warmup`` times first (allocator, kernel selection).
    """
    for _ in range(warmup):
        measured()
        baseline()
    ratios, fast, slow = [], [], []
    for repetition in range(repeats):
        if repetition % 2 == 0:
            t_measured, t_baseline = timed(measured, device), timed(baseline, device)
        else:
            t_baseline, t_measured = timed(baseline, device), timed(measured, device)
        rate, base_rate = measured_images / t_measured, baseline_images / t_baseline
        ratios.append(rate / base_rate)
        fast.append(rate)
        slow.append(base_rate)
    return Paired(statistics.median(ratios), statistics.median(fast), statistics.median(slow), ratios)
