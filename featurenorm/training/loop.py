"""The training loop and test-accuracy evaluation.

Resuming is exact on CPU: each epoch's data order and augmentation come from a generator
seeded by ``(seed, epoch)``, and the global RNG state (dropout) is saved in every checkpoint.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import files
from .checkpoint import check_compatible, read_checkpoint, save_checkpoint
from ..config import Config
from ..data.datasets import num_classes_of
from ..data.splits import load_split
from ..data.loaders import make_loader
from ..errors import UserError
from .weights import build_configured
from .stopping import SignalFlag, StopRequested
from ..runtime import Dist, amp_dtype, progress_bar, autocast, git_commit, init_distributed, shutdown_distributed


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, loader, amp: torch.dtype | None = None) -> float:
    """Top-1 accuracy over a loader of ``(images, labels)``; sums are all-reduced under torchrun."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    total = torch.zeros((), dtype=torch.long)
    for x, y in loader:
        with autocast(amp, x.device):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum().cpu()
        total += y.numel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        both = torch.stack([correct, total]).to(next(model.parameters()).device)
        torch.distributed.all_reduce(both)
        correct, total = both.cpu()
    model.train(was_training)
    return float(correct) / max(int(total), 1)


def _check_run_folder(save_dir: Path, resume: bool, overwrite: bool) -> None:
    last = save_dir / "last.pt"
    if not last.exists() or resume or overwrite:
        return
    raise UserError(f"'{save_dir}' already holds a run (last.pt); pass --resume to continue it, --overwrite to "
                    "start over, or --set save_path=<new folder>")


def train(cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.arch`` on the ID dataset; write last.pt, train_log.jsonl and config.json.

    Returns the final metrics. Raises :class:`StopRequested` after saving when signalled.
    """
    info, device = init_distributed(cfg)
    try:
        return _train(cfg, info, device, resume, overwrite, progress)
    finally:
        shutdown_distributed()


def _train(cfg: Config, info: Dist, device: torch.device, resume: bool, overwrite: bool,
           progress: bool) -> dict[str, Any]:
    save_dir, last_path = cfg.save_dir, cfg.save_dir / "last.pt"
    state = _resume_state(cfg, resume, overwrite)
    train_split, test_split = load_split(cfg, train=True), load_split(cfg, train=False)
    cfg.num_classes = num_classes_of(cfg)
    run = _Run.build(cfg, device, info, state)
    if info.is_main:
        if state is not None:
            _trim_log(save_dir / "train_log.jsonl", run.start_epoch)
        else:
            save_dir.mkdir(parents=True, exist_ok=True)
            (save_dir / "train_log.jsonl").unlink(missing_ok=True)
        files.write_json(save_dir / "config.json", {**cfg.to_dict(), "git_commit": git_commit()})
    train_loader = make_loader(cfg, train_split, train=True, device=device, rank=info.rank, world_size=info.world_size)
    test_loader = make_loader(cfg, test_split, train=False, device=device, rank=info.rank, world_size=info.world_size)
    metrics: dict[str, Any] = dict(state["metrics"]) if state is not None else {}
    with SignalFlag(cfg.stop_grace_seconds) as stop:
        for epoch in range(run.start_epoch, cfg.epochs):
            first = run.start_step if epoch == run.start_epoch else 0
            stats = _EpochStats.start(len(train_loader), device, state.get("partial_epoch") if state and first else None,
                                      first)
            _train_epoch(run, train_loader, epoch, first, stats, stop, progress and info.is_main)
            _check_finite(stats.losses, first, len(train_loader) - 1, epoch, last_path)
            run.scheduler.step()
            seconds = time.perf_counter() - stats.started
            if info.enabled:
                # BatchNorm running stats drift apart on each rank's shard: evaluate rank 0's, which are saved
                _broadcast_buffers(run.model)
                stats.losses, stats.correct, stats.seen = _reduce_train_stats(stats.losses, stats.correct,
                                                                              stats.seen, info.world_size)
            metrics = {"epoch": epoch + 1, "lr": _epoch_lr(cfg, epoch), **stats.summary(),
                       "test_acc": evaluate_accuracy(run.model, test_loader, run.amp), "seconds": round(seconds, 3)}
            if info.is_main:
                files.append_jsonl(save_dir / "train_log.jsonl", metrics)
                if progress:
                    tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['train_loss']:.4f}  "
                               f"train {metrics['train_acc']:.4f}  test {metrics['test_acc']:.4f}  {seconds:.1f}s")
            stopping = _stop_now(stop, info, device, True) and epoch + 1 < cfg.epochs  # after the last: done
            if stopping:
                stop.saving()
            run.save(epoch + 1, 0, metrics, epoch + 1 == cfg.epochs)
            if stopping:
                raise StopRequested(stop.signum)
    return metrics


def _train_epoch(run: "_Run", loader, epoch: int, first: int, stats: "_EpochStats", stop: "SignalFlag",
                 progress: bool) -> None:
    """One epoch of SGD from step ``first``: forward, cross-entropy, backward, step."""
    cfg, device, info = run.cfg, run.device, run.info
    run.train_model.train()
    loader.set_epoch(epoch)
    steps = len(loader)
    bar = progress_bar(total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       leave=False)
    for step, (x, y) in enumerate(loader.iterate(first), start=first):
        with autocast(run.amp, device):
            logits = run.train_model(x)
            loss = F.cross_entropy(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        stats.record(step, loss, logits, y)
        if step % 10 == 0 or step == steps - 1:
            _check_finite(stats.losses, first, step, epoch, run.last_path)
            bar.set_postfix(**stats.postfix(step, info.world_size))
        bar.update(1)
        if _stop_now(stop, info, device, step % STOP_CHECK_EVERY == 0 or step == steps - 1):
            bar.close()
            stop.saving()
            _check_finite(stats.losses, first, step, epoch, run.last_path)  # never save diverged weights
            run.save(epoch, step + 1, run.metrics_before, False, partial=stats.partial(step))
            raise StopRequested(stop.signum)
    bar.close()


def _resume_state(cfg: Config, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from (None for a new run), after checking that it may be continued."""
    save_dir, last_path = cfg.save_dir, cfg.save_dir / "last.pt"
    _check_run_folder(save_dir, resume, overwrite)
    if not resume:
        return None
    if not last_path.exists():
        raise UserError(f"--resume: no checkpoint at '{last_path}'; drop --resume to start a new run")
    state = read_checkpoint(last_path)
    check_compatible(state, cfg, last_path)
    if state.get("finished") and state["epoch"] >= cfg.epochs:
        raise UserError(f"the run in '{save_dir}' already finished {state['epoch']} epochs; raise epochs "
                        "(--set epochs=N) to train longer, or pass --overwrite to start over")
    if state["epoch"] >= cfg.epochs:
        raise UserError(f"the checkpoint in '{save_dir}' is at epoch {state['epoch']}, but epochs is {cfg.epochs}; "
                        f"resume with epochs above {state['epoch']} or pass --overwrite to start over")
    return state


@dataclass
class _Run:
    """The model, its optimizer and schedule, where training starts, and how it is saved."""

    cfg: Config
    device: torch.device
    info: Dist
    model: nn.Module
    train_model: nn.Module  # the model as trained: under DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    amp: torch.dtype | None
    start_epoch: int = 0
    start_step: int = 0
    metrics_before: dict[str, Any] = field(default_factory=dict)

    @property
    def last_path(self) -> Path:
        return self.cfg.save_dir / "last.pt"

    @classmethod
    def build(cls, cfg: Config, device: torch.device, info: Dist, state: dict[str, Any] | None) -> "_Run":
        seed_everything(cfg.seed)
        model = build_configured(cfg, cfg.num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
        start_epoch = start_step = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, start_step = state["epoch"], state.get("step", 0)
            set_rng_state(state["rng"], device)
        train_model = model
        if info.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)
        return cls(cfg, device, info, model, train_model, optimizer, scheduler, amp_dtype(cfg, device), start_epoch,
                   start_step, dict(state["metrics"]) if state is not None else {})

    def save(self, epoch: int, step: int, metrics: dict[str, Any], finished: bool,
             partial: dict[str, Any] | None = None) -> None:
        """Write last.pt (rank 0): weights, optimizer, schedule, RNG and the position in the run."""
        self.metrics_before = metrics
        if self.info.is_main:
            cfg = self.cfg
            save_checkpoint(self.last_path, {
                "arch": cfg.arch, "num_classes": cfg.num_classes, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "step": step, "rng": rng_state(self.device), "config": cfg.to_dict(), "metrics": metrics,
                "finished": finished, "git_commit": git_commit(), **({"partial_epoch": partial} if partial else {})})


@dataclass
class _EpochStats:
    """Per-step losses and running accuracy of one epoch, kept on the device (no host sync per step).

    A mid-epoch stop saves them (:meth:`partial`), so a resumed epoch logs what an uninterrupted one would.
    """

    losses: torch.Tensor
    correct: torch.Tensor
    seen: int
    started: float
    counted_from: int

    @classmethod
    def start(cls, steps: int, device: torch.device, partial: dict[str, Any] | None, first: int) -> "_EpochStats":
        stats = cls(torch.zeros(steps, device=device), torch.zeros((), device=device), 0, time.perf_counter(), first)
        if partial is not None:  # under torchrun every rank restores rank 0's part
            stats.losses[:first] = partial["losses"].to(device)
            stats.correct += partial["correct"]
            stats.seen = int(partial["seen"])
            stats.started -= float(partial["seconds"])
            stats.counted_from = 0
        return stats

    def record(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses[step] = loss.detach().float()
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)

    def postfix(self, step: int, world_size: int) -> dict[str, str]:
        elapsed = time.perf_counter() - self.started
        return {"loss": f"{self.losses[step].item():.3f}", "acc": f"{(self.correct / self.seen).item():.3f}",
                "img_s": f"{self.seen * world_size / max(elapsed, 1e-9):.0f}"}

    def partial(self, step: int) -> dict[str, Any]:
        return {"losses": self.losses[:step + 1].cpu(), "correct": int(self.correct), "seen": self.seen,
                "seconds": time.perf_counter() - self.started}

    def summary(self) -> dict[str, float]:
        done = len(self.losses) - self.counted_from
        return {"train_loss": float(self.losses[self.counted_from:].sum() / max(done, 1)),
                "train_acc": float(self.correct) / max(self.seen, 1)}


def _broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running mean/var, counters) to every rank."""
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def _reduce_train_stats(losses: torch.Tensor, correct: torch.Tensor, seen: int,
                        world_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Whole-job training stats: (steps,) loss averaged over ranks; correct and seen summed."""
    losses = losses.clone()
    torch.distributed.all_reduce(losses)
    counts = torch.stack([correct.to(losses.dtype), torch.tensor(float(seen), device=losses.device)])
    torch.distributed.all_reduce(counts)
    return losses / world_size, counts[0], int(counts[1])


STOP_CHECK_EVERY = 10  # steps between the ranks' agreements on a stop signal under torchrun


def _stop_now(stop: "SignalFlag", info: Dist, device: torch.device, checkpoint_step: bool) -> bool:
    """Whether to stop after this step.

    A plain run stops at the step where its signal arrived. Under torchrun every rank must stop
    at the same step or one would wait forever in the next all-reduce, so the ranks agree (the
    highest signal number wins) at every ``STOP_CHECK_EVERY``-th step and at epoch ends only:
    agreeing costs a host sync, too much for every GPU step.
    """
    if not info.enabled:
        return stop.signum is not None
    if not checkpoint_step:
        return False
    flag = torch.tensor([stop.signum or 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if int(flag.item()):
        stop.signum = int(flag.item())
    return stop.signum is not None


def _epoch_lr(cfg: Config, epoch: int) -> float:
    """The learning rate used during ``epoch`` (0-based) under MultiStepLR."""
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def _trim_log(path: Path, epochs_done: int) -> None:
    """Drop log lines past the checkpoint's epoch (written before a crash, redone on resume) and torn lines."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("epoch", 0) <= epochs_done:
            kept.append(line + "\n")
    files.write_text(path, "".join(kept))


def _check_finite(losses: torch.Tensor, first: int, step: int, epoch: int, last_path: Path) -> None:
    """Raise when any loss of steps ``first..step`` (0-based) of ``epoch`` is NaN or infinite."""
    window = losses[first:step + 1]
    bad = ~torch.isfinite(window)
    if bool(bad.any()):
        at = first + int(bad.nonzero()[0])
        kept = f"'{last_path}' still holds the last good state" if last_path.exists() else "no checkpoint was written"
        raise UserError(f"loss became {losses[at].item()} at epoch {epoch + 1}, step {at + 1}; training stopped and "
                        f"{kept}. Lower lr or check the data")
