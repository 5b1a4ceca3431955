"""The check as a whole: run each step in isolation, record the machine, write the report, print the table."""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import files
from ..errors import UserError
from .context import FULL, NUM_CLASSES, SCHEMA, STEPS, TINY, CheckContext, Sizes, StepResult, peak_bf16
from .data import make_data
from .steps import STEP_FUNCTIONS
from ..runtime import device_name, git_commit, amp_dtype


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


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The device, its name and memory, and the software versions."""
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


def base_config(out: Path, device: torch.device, sizes: Sizes, compile_model: bool,
                channels_last: bool) -> dict[str, Any]:
    """The config keys of the check: the recipe's execution settings, the synthetic data, the sizes."""
    workers = sizes.num_workers if sizes.num_workers is not None else min(8, os.cpu_count() or 1)
    data = out / "data"
    return {
        "id_dataset": str(data / "cifar10"), "data_root": str(data), "num_classes": NUM_CLASSES,
        "arch": "resnet18", "width": sizes.width, "epochs": 2, "milestones": [], "batch_size": sizes.batch_size,
        "eval_batch_size": sizes.eval_batch_size, "device": str(device), "loader": "gpu", "amp": "bf16",
        "channels_last": channels_last, "compile": compile_model, "num_workers": workers,
        "selection_samples": sizes.selection_images, "save_path": str(out / "run"),
        "svhn": str(data / "svhn"), "textures": str(data / "textures"), "seed": 0,
    }


def run_check(out: str | Path, device: str = "cuda", tiny: bool = False, peak_tflops: float | None = None,
              compile_model: bool | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, channels_last: bool | None = None) -> dict[str, Any]:
    """Make the data, run the five steps, write and return ``<out>/gpu_check.json``.

    Args:
        compile_model: None: on for CUDA; off for CPU, where inductor's first C++ compile of
            the training step takes about 50 s on two cores.
        channels_last: None: on for CUDA, where it is the recipe's default; off for CPU, where
            oneDNN's channels_last kernels were measured slower on some CPUs and, at width 0.0625
            on an AVX2-only AMD EPYC, to hang or crash in the first backward pass.
    Returns:
        ``{"schema", "passed", "seconds", "mode", "machine", "settings", "peak_bf16",
        "data", "steps": {step: {"passed", "seconds", "error", "figures", "checks", "traceback"}}}``.
    """
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
    if channels_last is None:
        channels_last = torch_device.type == "cuda"
    ctx = CheckContext(out=out, device=torch_device, sizes=sizes, compile=compile_model,
                       peak=peak_bf16(torch_device, peak_tflops), progress=progress,
                       base=base_config(out, torch_device, sizes, compile_model, channels_last))
    for stale in (ctx.run_dir, ctx.torchrun_dir):
        if stale.exists():
            shutil.rmtree(stale)  # a fit cache or selection of an earlier run would skew the timings
    files.write_json(ctx.config_path, ctx.base)
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
    files.write_json(out / "gpu_check.json", report)
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
    parser = argparse.ArgumentParser(prog="gpu_check.sh",
                                     description="Run every CUDA path of featurenorm once on synthetic data; "
                                                 "write gpu_check.json and print a table.")
    parser.add_argument("--out", default="runs/gpu_check", help="output folder (default runs/gpu_check)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="a few hundred images at width 0.0625 (seconds, for CI)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s (default: from a table)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile in step 1 (auto: on for CUDA, off for CPU)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last memory format (auto: on for CUDA, off for CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UserError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    switch = {"auto": None, "on": True, "off": False}
    report = run_check(args.out, args.device, args.tiny, args.peak_tflops, switch[args.compile],
                       progress=not args.no_progress, log=lambda text: print(text, file=sys.stderr, flush=True),
                       channels_last=switch[args.channels_last])
    print(format_table(report))
    print(f"wrote {Path(args.out) / 'gpu_check.json'}")
    return 0 if report["passed"] else 1
