"""The five steps of the GPU check, each filling one :class:`StepResult`, and their helpers."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import Config
from .context import (ACCURACY_TOLERANCE, BF16_TOLERANCE, NUM_CLASSES, REPO, CheckContext, StepResult,
                      flops_per_image)
from ..tools.timing import timed
from ..runtime import autocast, amp_dtype
from ..data.loaders import DeviceLoader, make_loader
from ..tools.throughput import default_settings, run_benchmark
from ..training.loop import train, evaluate_accuracy
from ..training.checkpoint import load_for_config, read_checkpoint
from ..data.splits import load_split
from ..runs.select import run_selection
from ..runs.evaluate import run_evaluation
from ..methods import method_names
from ..core.metrics import METRIC_KEYS
from ..core.tap import block_feature_norms
from ..models import block_names, build_model


def _read_log(save_dir: Path) -> list[dict[str, Any]]:
    path = save_dir / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _timed_forward(model: torch.nn.Module, batches: Sequence[torch.Tensor], amp: torch.dtype | None,
                   device: torch.device) -> float:
    """Seconds of a bare ``model(x)`` over ``batches`` (inference mode, ``amp``), after one warm-up batch."""
    def forward(items: Sequence[torch.Tensor]) -> None:
        with torch.inference_mode():
            for x in items:
                with autocast(amp, device):
                    model(x)

    forward(batches[:1])
    return timed(lambda: forward(batches), device)


def _eval_batches(cfg: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Normalized (B, 3, S, S) batches of ``images`` with the evaluation transform, on ``device``."""
    loader = DeviceLoader(images, labels, cfg.eval_batch_size, train=False, mean=cfg.mean, std=cfg.std,
                          device=device, image_size=cfg.image_size, channels_last=cfg.channels_last)
    return [x for x, _ in loader]


def _bench(ctx: CheckContext, figure: str) -> dict[str, Any]:
    """One benchmark figure, measured as ``scripts/benchmark.py --device D`` measures it (tiny: smaller)."""
    settings = default_settings(str(ctx.device), **ctx.sizes.bench)
    report = run_benchmark(settings, figures=(figure,))
    entry = report["results"][figure]
    return {"ratio": entry["ratio"], "target": entry["target"], "met": entry["met"],
            "images_per_s": entry["images_per_s"], "baseline_images_per_s": entry["baseline_images_per_s"],
            "settings": {k: report["settings"][k] for k in ("width", "batch_size", "repeats", "steps")}}


def step_train(ctx: CheckContext, result: StepResult) -> None:
    """Two epochs in-process: seconds per epoch with compile time apart, images/s, memory, FLOP fraction."""
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
