"""Device, precision and process-group plumbing shared by training, selection and evaluation."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import Config
from .errors import UserError


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    grouped: bool = False  # joined a process group: every torchrun job, even one of a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the ranks work through a process group (DDP, gathers, all-reduces)."""
        return self.grouped or self.world_size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain run: the process that prints the results."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local GPU) when available, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key 'device' has an invalid value '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for but CUDA is not available; use --set device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(cfg: Config) -> tuple[Dist, torch.device]:
    """Join the process group (NCCL on GPUs, gloo on CPU) when torchrun started this process or ``WORLD_SIZE`` > 1.

    A one-process torchrun job joins too, so that it runs the same DDP and collective code as a
    larger one (on a single GPU that is the only way to exercise NCCL). Rank 0 says so on stderr.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    grouped = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it, also for one process
    info = Dist(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")), grouped)
    device = resolve_device(cfg.device, info.local_rank)
    if grouped and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        if info.is_main:
            print(f"process group: backend {backend}, world size {world_size}", file=sys.stderr, flush=True)
    return info, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 by default on GPUs that support it, none (fp32) otherwise."""
    if device.type != "cuda" or cfg.amp == "fp32":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the featurenorm checkout, when it is one (recorded in every run folder)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def progress_bar(**kwargs):
    """A tqdm bar that redraws often on a terminal and rarely in a log file."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 15.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)


# ------------------------------------------------------------------------------------ the machine
def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (the platform's processor elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def shard(n: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's positions ``[rank, rank + W, rank + 2W, ...]`` of ``range(n)``: (n_rank,) int64."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return torch.arange(rank, n, world_size)


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group; ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


Values = Union[torch.Tensor, Mapping[Any, torch.Tensor]]


def merge_in_order(parts: Sequence[tuple[Values, torch.Tensor]]) -> Values:
    """``[(values, positions (n_r,)), ...]`` of several ranks -> the values in set order.

    ``values`` is one (n_r, ...) tensor per rank, or a mapping of such tensors (all put in the same order).
    """
    order = torch.argsort(torch.cat([part[1].cpu() for part in parts]), stable=True)
    first = parts[0][0]
    if isinstance(first, Mapping):
        return {key: torch.cat([part[0][key].cpu() for part in parts])[order] for key in first}
    return torch.cat([part[0].cpu() for part in parts])[order]


def gather_in_order(values: Values, index: torch.Tensor) -> Values:
    """Per-image values of every rank of the process group (if any), in set order, on the CPU.

    Args:
        values: (n_rank, ...) this rank's values, or a mapping of such tensors (gathered together, in one
            collective call).
        index: (n_rank,) their positions in the set.
    """
    values = {key: value.cpu() for key, value in values.items()} if isinstance(values, Mapping) else values.cpu()
    _, world_size = process_group()
    parts: list = [(values, index.cpu())]
    if world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, (values, index.cpu()))
    return merge_in_order(parts)
