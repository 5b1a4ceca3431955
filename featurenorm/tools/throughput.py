"""Throughput of OOD scoring, block selection and training, each relative to a bare forward pass.

Every figure is a ratio of two throughputs (images/s) measured side by side in one process, on
the same model and the same in-memory batches. In each repetition the two sides run back to
back (their order alternating), so slow drifts of the machine hit both; the reported ratio is
the median over repetitions of the per-repetition ratios. Higher is better for every ratio.

Figures (``TARGETS`` holds the goal of each):

1. ``eval_scoring_vs_forward``: :meth:`featurenorm.evaluation.scoring.Scorer.score_batch` with every
   one-pass method (all but the ODIN ones) vs ``model(x)``.
2. ``featurenorm_early_exit_vs_forward``: the Scorer with FeatureNorm alone at a block before
   the last, where the forward pass stops, vs ``model(x)``.
3. ``selection_vs_forward``: :func:`featurenorm.selection.collect.collect_paired_norms` over every block
   (puzzles made with ``apply_permutation``) vs ``model(x)`` on the same 2B images.
4. ``train_pipeline_vs_compute``: training steps fed by :class:`featurenorm.data.loaders.DeviceLoader`
   (uint8 -> crop/flip -> normalize) vs the same steps on batches already on the device.
5. ``shared_pass_speedup``: K methods scored from one shared pass vs K separate passes, one full
   forward per method as a one-detector-per-pass library does; ideally K.
6. ``channels_last_vs_contiguous``: training steps of a channels_last copy of the model vs the
   contiguous model (the same weights, the same batches). ``channels_last`` is a CUDA default; on
   CPU it helps on some machines and not on others, so this figure is what to decide by.

The fitted methods are fitted on random features (``fit_samples`` rows), so KNN scores against a
small bank; its cost grows linearly with the bank (the ID training set in a real run).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..selection.collect import collect_paired_norms
from ..config import Config
from ..selection.jigsaw import sample_permutations
from ..data.loaders import DeviceLoader
from ..errors import UserError
from ..methods.base import uses_all_blocks, uses_block
from ..methods import build_method, method_names
from ..models import block_names, build_model
from ..runtime import amp_dtype, autocast, device_name, peak_rss_mib, resolve_device
from ..evaluation.scoring import Scorer
from .timing import Paired, measure_pair

# figure -> (comparison, goal); shared_pass_speedup's goal is a fraction of K (see ``target_met``).
TARGETS: dict[str, tuple[str, float]] = {
    "eval_scoring_vs_forward": (">=", 0.90),
    "featurenorm_early_exit_vs_forward": (">", 1.0),
    "selection_vs_forward": (">=", 0.85),
    "train_pipeline_vs_compute": (">=", 0.95),
    "shared_pass_speedup": (">=", 0.90),  # times K
    "channels_last_vs_contiguous": (">", 1.0),  # met: channels_last pays on this machine
}
FIGURES = tuple(TARGETS)


@dataclass
class BenchSettings:
    """What to measure with. ``steps`` batches are run per timed side of a repetition.

    Many short repetitions (rather than a few long ones) keep the median robust when other
    processes share the CPU: a burst of contention spoils a few repetitions, not the figure.
    """

    device: str = "cpu"
    arch: str = "resnet18"
    width: float = 0.5
    batch_size: int = 64
    repeats: int = 15
    steps: int = 1
    warmup: int = 2
    image_size: int = 32
    num_classes: int = 10
    block: str = "layer4.0"
    fit_samples: int = 1024
    jigsaw_grid: int = 3
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0


def default_settings(device: str = "cpu", **overrides: Any) -> BenchSettings:
    """CPU: width 0.5, batch 64 (about a minute on 2 cores). CUDA: full width, batch 512, bf16, channels_last."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        base = BenchSettings(device=str(resolved), width=1.0, batch_size=512, repeats=15, steps=10, warmup=3,
                             channels_last=True)
    else:
        base = BenchSettings(device=str(resolved))
    for key, value in overrides.items():
        if value is not None:
            setattr(base, key, value)
    if base.batch_size < 1 or base.repeats < 1 or base.steps < 1 or base.width <= 0:
        raise UserError("benchmark needs --batch-size, --repeats and --steps of at least 1 and a positive --width")
    return base


def target_met(figure: str, ratio: float, k: int | None = None) -> bool:
    comparison, goal = TARGETS[figure]
    if figure == "shared_pass_speedup":
        goal *= k or 1
    return ratio > goal if comparison == ">" else ratio >= goal


def target_text(figure: str, k: int | None = None) -> str:
    comparison, goal = TARGETS[figure]
    if figure == "shared_pass_speedup":
        return f"{comparison} {goal:.2f} K = {goal * (k or 1):.2f}"
    return f"{comparison} {goal:.2f}"


# ----------------------------------------------------------------------------------- the workloads
def scoring_methods(model: nn.Module, settings: BenchSettings, generator: torch.Generator) -> dict[str, Any]:
    """Every one-pass method of one block (all but ODIN's and those that read every block, norm_profile), the
    fitted ones fitted on random ID-like features."""
    cfg = Config()
    methods = {}
    for name in method_names():
        method = build_method(name, cfg)
        if method.needs_input or uses_all_blocks(method):
            continue
        methods[name] = method
    dim = model.head.in_features
    # post-ReLU pooled features are non-negative; labels cover every class
    features = torch.randn(settings.fit_samples, dim, generator=generator).relu_()
    labels = torch.arange(settings.fit_samples) % settings.num_classes
    head = model.head
    for method in methods.values():
        if method.fits:
            method.fit(features, labels, head)
    return methods


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp: torch.dtype | None) -> torch.Tensor:
    """One SGD step as :func:`featurenorm.training.loop.train` takes it. Returns the loss (on the device)."""
    with autocast(amp, x.device):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _forward_fn(model: nn.Module, batches: Sequence[torch.Tensor], amp: torch.dtype | None) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            for x in batches:
                with autocast(amp, x.device):
                    model(x)
    return forward


def _scoring_fn(scorer: Scorer, batches: Sequence[torch.Tensor]) -> Callable[[], None]:
    def scoring() -> None:
        for x in batches:
            scorer.score_batch(x)
    return scoring


def bench_eval_scoring(model: nn.Module, methods: dict[str, Any], batches: Sequence[torch.Tensor],
                       settings: BenchSettings, amp: torch.dtype | None, device: torch.device) -> Paired:
    """Every one-pass method from one Scorer pass vs a bare forward; batches: (B, 3, S, S) each."""
    scorer = Scorer(model, methods, settings.block, [settings.block], amp, need_logits=True)
    n = len(batches) * settings.batch_size
    return measure_pair(_scoring_fn(scorer, batches), _forward_fn(model, batches, amp), n, n,
                        settings.repeats, settings.warmup, device)


def bench_early_exit(model: nn.Module, methods: dict[str, Any], batches: Sequence[torch.Tensor],
                     settings: BenchSettings, amp: torch.dtype | None, device: torch.device) -> Paired:
    """FeatureNorm alone, the pass stopping after ``settings.block``, vs a bare full forward."""
    scorer = Scorer(model, {"featurenorm": methods["featurenorm"]}, settings.block, [settings.block], amp,
                    need_logits=False)
    n = len(batches) * settings.batch_size
    return measure_pair(_scoring_fn(scorer, batches), _forward_fn(model, batches, amp), n, n,
                        settings.repeats, settings.warmup, device)


def bench_selection(model: nn.Module, batches: Sequence[torch.Tensor], settings: BenchSettings,
                    amp: torch.dtype | None, device: torch.device, generator: torch.Generator) -> Paired:
    """NormRatio's pass over ``2B`` images (B ID + B puzzles) per batch vs a bare forward over 2B images."""
    size = settings.image_size
    paired = [(x, sample_permutations(len(x), size, size, settings.jigsaw_grid, generator).to(device))
              for x in batches]
    blocks = block_names(model)
    doubled = [torch.cat([x, x.flip(3)]) for x in batches]  # the pixels do not matter to the baseline's speed

    def selection() -> None:
        collect_paired_norms(model, paired, blocks, settings.jigsaw_grid, amp, progress=False)

    n = 2 * len(batches) * settings.batch_size
    return measure_pair(selection, _forward_fn(model, doubled, amp), n, n, settings.repeats, settings.warmup,
                        device)


def bench_train_pipeline(settings: BenchSettings, amp: torch.dtype | None, device: torch.device,
                         generator: torch.Generator) -> Paired:
    """Training fed by the device loader (augmentation from uint8) vs training on ready tensors."""
    cfg = Config()
    model = build_model(settings.arch, settings.num_classes, width=settings.width).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    count = settings.steps * settings.batch_size
    size = settings.image_size
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, settings.num_classes, (count,), generator=generator)
    loader = DeviceLoader(images, labels, settings.batch_size, train=True, mean=cfg.mean, std=cfg.std, device=device,
                          seed=settings.seed, crop_padding=cfg.crop_padding, hflip=True, image_size=size,
                          channels_last=settings.channels_last)
    ready = [(x, y) for x, y in loader]  # the same kind of batches, made once, already on the device
    epoch = [0]

    def with_loader() -> None:
        epoch[0] += 1
        loader.set_epoch(epoch[0])
        for x, y in loader:
            train_step(model, optimizer, x, y, amp)

    def on_device() -> None:
        for x, y in ready:
            train_step(model, optimizer, x, y, amp)

    return measure_pair(with_loader, on_device, count, count, settings.repeats, settings.warmup, device)


def bench_channels_last(settings: BenchSettings, amp: torch.dtype | None, device: torch.device,
                        generator: torch.Generator) -> Paired:
    """Training steps in channels_last vs contiguous memory: two copies of one model, the same batches."""
    cfg = Config()
    contiguous = build_model(settings.arch, settings.num_classes, width=settings.width).to(device).train()
    channels_last = build_model(settings.arch, settings.num_classes, width=settings.width).to(device).train()
    channels_last.load_state_dict(contiguous.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last)
    size = settings.image_size
    batches = [(torch.randn(settings.batch_size, 3, size, size, generator=generator).to(device),
                torch.randint(0, settings.num_classes, (settings.batch_size,), generator=generator).to(device))
               for _ in range(settings.steps)]

    def steps_of(model: nn.Module, memory_format: torch.memory_format) -> Callable[[], None]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=cfg.momentum)
        ready = [(x.contiguous(memory_format=memory_format), y) for x, y in batches]

        def run() -> None:
            for x, y in ready:
                train_step(model, optimizer, x, y, amp)
        return run

    count = settings.steps * settings.batch_size
    return measure_pair(steps_of(channels_last, torch.channels_last), steps_of(contiguous, torch.contiguous_format),
                        count, count, settings.repeats, settings.warmup, device)


def bench_shared_pass(model: nn.Module, methods: dict[str, Any], batches: Sequence[torch.Tensor],
                      settings: BenchSettings, amp: torch.dtype | None, device: torch.device) -> Paired:
    """All K methods from one pass vs one full forward per method (K passes)."""
    shared = Scorer(model, methods, settings.block, [settings.block], amp, need_logits=True)
    separate = [Scorer(model, {name: method}, settings.block if uses_block(name) else None,
                       [settings.block] if uses_block(name) else [], amp, need_logits=True)
                for name, method in methods.items()]

    def one_per_method() -> None:
        for scorer in separate:
            for x in batches:
                scorer.score_batch(x)

    n = len(batches) * settings.batch_size
    return measure_pair(_scoring_fn(shared, batches), one_per_method, n, n, settings.repeats, settings.warmup,
                        device)


# ------------------------------------------------------------------------------------------ the run
def run_benchmark(settings: BenchSettings, log: Callable[[str], None] | None = None,
                  figures: Sequence[str] = FIGURES) -> dict[str, Any]:
    """Measure ``figures`` (default: all six); returns a JSON-ready dict (see :func:`format_table`)."""
    unknown = [figure for figure in figures if figure not in FIGURES]
    if unknown:
        raise ValueError(f"unknown benchmark figure '{unknown[0]}'; valid: {', '.join(FIGURES)}")
    device = resolve_device(settings.device)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cfg = Config(amp=settings.amp)
    amp = amp_dtype(cfg, device)
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, settings.num_classes, width=settings.width).to(device).eval()
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.block not in dict(model.named_modules()):
        raise UserError(f"--block '{settings.block}' is not a block of {settings.arch}; "
                        f"valid: {', '.join(block_names(model))}")
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    batches = [torch.randn(settings.batch_size, 3, settings.image_size, settings.image_size, generator=generator)
               .to(device).contiguous(memory_format=memory_format) for _ in range(settings.steps)]
    methods = scoring_methods(model, settings, generator)

    # Training runs first: its many large live tensors grow glibc's heap, after which inference
    # no longer page-faults on fresh memory every batch. Measured in a fresh process instead, the
    # first figures run ~1.4x slower in absolute terms on CPU (their ratios are unaffected).
    runs: dict[str, Callable[[], Paired]] = {
        "train_pipeline_vs_compute": lambda: bench_train_pipeline(settings, amp, device, generator),
        "eval_scoring_vs_forward": lambda: bench_eval_scoring(model, methods, batches, settings, amp, device),
        "featurenorm_early_exit_vs_forward": lambda: bench_early_exit(model, methods, batches, settings, amp,
                                                                      device),
        "selection_vs_forward": lambda: bench_selection(model, batches, settings, amp, device, generator),
        "shared_pass_speedup": lambda: bench_shared_pass(model, methods, batches, settings, amp, device),
        "channels_last_vs_contiguous": lambda: bench_channels_last(settings, amp, device, generator),
    }
    k = len(methods)
    results: dict[str, Any] = {}
    cuda_peaks: dict[str, float] = {}
    for figure, run in runs.items():
        if figure not in figures:
            continue
        if log:
            log(f"measuring {figure} ...")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        paired = run()
        entry: dict[str, Any] = {**asdict(paired), "target": target_text(figure, k),
                                 "met": target_met(figure, paired.ratio, k)}
        if figure == "shared_pass_speedup":
            entry.update(k=k, methods=list(methods))
        results[figure] = entry
        if device.type == "cuda":
            cuda_peaks[figure] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    results = {figure: results[figure] for figure in FIGURES if figure in results}  # in the documented order
    return {
        "settings": asdict(settings),
        "machine": {"device": device.type, "name": device_name(device), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "amp": str(amp).replace("torch.", "") if amp else "fp32",
                    "cpu_count": os.cpu_count(), "load_average_before": load_before},
        "results": results,
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": cuda_peaks or None,
    }


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of :func:`run_benchmark`'s result."""
    s, m = report["settings"], report["machine"]
    lines = [f"{s['arch']} width {s['width']}, batch {s['batch_size']}, {m['device']} ({m['name']}, "
             f"{m['threads']} threads), {m['amp']}, {s['repeats']} repeats x {s['steps']} batches, torch {m['torch']}",
             f"{'figure':<36}{'ratio':>8}  {'target':<20}{'met':<5}{'img/s':>10}{'baseline img/s':>16}"]
    for figure, r in report["results"].items():
        name = f"{figure} (K={r['k']})" if "k" in r else figure
        lines.append(f"{name:<36}{r['ratio']:>8.3f}  {r['target']:<20}{'yes' if r['met'] else 'NO':<5}"
                     f"{r['images_per_s']:>10.1f}{r['baseline_images_per_s']:>16.1f}")
    lines.append(f"peak RSS: {report['peak_rss_mib']:.0f} MiB")
    load, cpus = m.get("load_average_before"), m.get("cpu_count")
    if load is not None and cpus and load > 0.5 * cpus:
        lines.append(f"warning: the load average was {load:.1f} on {cpus} CPUs before the run; other processes "
                     "may have been busy, so the figures may be noisy")
    if report.get("cuda_peak_mib"):
        lines.append("peak CUDA memory (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in report["cuda_peak_mib"].items()))
    lines.append("images/s: the measured side, then the baseline; selection counts ID images and puzzles")
    return "\n".join(lines)
