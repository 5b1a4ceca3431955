"""eval_ood.py: score the ID test set and the OOD sets, then compute the metrics and write reports.

One forward pass per batch yields the penultimate features, the logits and the selected
block's FeatureNorm; every feature/logit method scores from those. ODIN-style methods need
input gradients and run their own pass. When only ``featurenorm`` is asked for, the forward
pass stops after the selected block.
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from . import io, report
from .checkpoint import default_checkpoint, load_for_config
from .config import Config
from .data.datasets import load_split, resolve_id_dataset
from .errors import UserError
from .features import FeatureTap
from .methods import Outputs, build_method, method_names
from .methods.blocknorm import blocknorm_logits
from .metrics import METRIC_KEYS, average_metrics, group_averages, ood_metrics
from .models import block_names
from .runtime import Dist, amp_dtype, autocast, gather_concat, gather_sharded, init_distributed, progress_bar, shard, \
    shutdown_distributed

CONVENTION = ("ID positive; FPR95 = fraction of OOD accepted at 95% ID acceptance; fpr95_openood = OpenOOD's "
              "FPR@95, OOD positive: fraction of ID rejected at 95% OOD recall")
# Config keys whose change invalidates fitted ID-train statistics (besides the checkpoint bytes).
FIT_KEYS = ("id_dataset", "dataset", "data_root", "image_size", "mean", "std", "arch", "width", "num_classes",
            "benchmark", "openood_root")


def uses_block(name: str) -> bool:
    """Whether a method reads the selected block's FeatureNorm (``block_norm``)."""
    from .methods.base import METHODS

    method = METHODS.get(name)
    return name.endswith("_blocknorm") or (method is not None and "block_norm" in method.needs)


def parse_methods(text: str | None) -> list[str]:
    """``all`` (default) -> every method in table order; ``a,b,c`` -> those, in the order given, duplicates dropped."""
    valid = method_names()
    if not text or text == "all":
        return valid
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in valid]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}' in --methods; valid: {', '.join(valid)}, or all")
    return list(dict.fromkeys(names))


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def resolve_block(cfg: Config, block: str | None, model: nn.Module, checkpoint: Path | None = None) -> dict[str, Any]:
    """The block to score: ``--block`` if given, else the one block_selection.json selected."""
    if block:
        if block not in dict(model.named_modules()):
            raise UserError(f"--block '{block}' is not a block of {cfg.arch}; valid: {', '.join(block_names(model))}")
        names = list(cfg.blocks or block_names(model))
        return {"name": block, "index": names.index(block) if block in names else None, "source": "--block"}
    path = cfg.save_dir / "block_selection.json"
    if not path.is_file():
        raise UserError(f"no block selected: '{path}' not found; run select_block.py --config ... first, "
                        "or pass --block NAME")
    try:
        selection = json.loads(path.read_text())
        selected = selection["selected"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"'{path}' is not a valid block selection; rerun select_block.py") from None
    made_for = selection.get("checkpoint")
    if checkpoint is not None and made_for and not _same_file(made_for, checkpoint):
        warnings.warn(f"{path} was made for checkpoint '{made_for}', not '{checkpoint}'; rerun select_block.py "
                      "for this checkpoint, or pass --block", stacklevel=2)
    if selected["name"] not in dict(model.named_modules()):
        raise UserError(f"'{path}' selects '{selected['name']}', which is not a block of {cfg.arch}; "
                        "rerun select_block.py for this checkpoint")
    return {"name": selected["name"], "index": selected.get("index"), "source": "block_selection.json"}


# ------------------------------------------------------------------------------------ the scoring pass
@dataclass
class Scorer:
    """Everything one batch needs: the model, the methods and which blocks to tap."""

    model: nn.Module
    methods: dict[str, Any]
    block: str | None
    tap_blocks: list[str]
    amp: torch.dtype | None
    need_logits: bool = True

    @property
    def head(self) -> nn.Linear:
        return self.model.head

    def forward(self, images: torch.Tensor) -> tuple[Outputs, dict[str, torch.Tensor]]:
        """One forward pass: (Outputs, {block: (B,) FeatureNorm}) under inference mode."""
        with torch.inference_mode():
            if not self.tap_blocks:
                with autocast(self.amp, images.device):
                    features = self.model.forward_features(images)
                features = features.float()
                return Outputs(features=features, logits=self.head(features)), {}
            with FeatureTap(self.model, self.tap_blocks, stop_after_last=not self.need_logits) as tap:
                with autocast(self.amp, images.device):
                    features = tap.run(self.model.forward_features, images)
                norms = {name: value.float() for name, value in tap.values.items()}
            if features is None:  # early exit: only FeatureNorm was asked for
                return Outputs(block_norm=norms[self.block]), norms
            features = features.float()
            block_norm = norms.get(self.block) if self.block else None
            return Outputs(features=features, logits=self.head(features), block_norm=block_norm), norms

    def score_batch(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                          torch.Tensor | None]:
        """Scores of every one-pass method, the tapped block norms, and the logits.

        All stay on the images' device: copying them to the CPU here would make the host wait for
        every batch (a GPU sync per method); :func:`score_dataset` copies once per data set.
        """
        out, norms = self.forward(images)
        with torch.inference_mode():
            scores = {name: method.score(out, self.head).float()
                      for name, method in self.methods.items() if not method.needs_input}
        return scores, norms, out.logits

    def input_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores of the methods that perturb the input (ODIN and its block-norm variant)."""
        scores = {}
        for name, method in self.methods.items():
            if not method.needs_input:
                continue
            if name == "odin_blocknorm":
                def logits_fn(x: torch.Tensor) -> torch.Tensor:
                    with FeatureTap(self.model, [self.block]) as tap:
                        features = tap.run(self.model.forward_features, x)
                        return blocknorm_logits(features.float(), tap.values[self.block].float(), self.head)
            else:
                def logits_fn(x: torch.Tensor) -> torch.Tensor:
                    return self.model(x).float()
            with torch.enable_grad():
                scores[name] = method.score_images(logits_fn, images).detach().float().cpu()
        return scores


@dataclass
class DatasetScores:
    scores: dict[str, torch.Tensor] = field(default_factory=dict)       # method -> (N,)
    block_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # block -> (N,)
    correct: int = 0
    count: int = 0
    unreadable: list[str] = field(default_factory=list)


def score_dataset(scorer: Scorer, batches: Iterable, total: int | None, desc: str, info: Dist, n_full: int | None,
                  progress: bool, with_labels: bool) -> DatasetScores:
    """Run the one-pass methods, then the input-gradient methods, over one data set; gather shards.

    ``n_full``: the data set's size when the shards are strided (``runtime.shard``), so that the
    gathered scores come back in single-process order; None concatenates the shards in rank order.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    norm_parts: dict[str, list[torch.Tensor]] = {}
    hits: list[torch.Tensor] = []  # correct predictions per batch, summed once at the end (no per-batch sync)
    count = 0
    has_input = any(m.needs_input for m in scorer.methods.values())
    bar = progress_bar(total=total, desc=desc, leave=False, disable=not progress)
    for batch in batches:
        images, labels = (batch if with_labels else (batch, None))
        scores, norms, logits = scorer.score_batch(images)
        if has_input:
            scores.update(scorer.input_scores(images))
        for name, value in scores.items():
            parts.setdefault(name, []).append(value)
        for name, value in norms.items():
            norm_parts.setdefault(name, []).append(value)
        if labels is not None and logits is not None:
            hits.append((logits.argmax(1) == labels.to(logits.device)).sum())
        count += images.shape[0]
        bar.update(1)
    bar.close()
    correct = int(torch.stack(hits).sum()) if hits else 0
    result = DatasetScores(correct=correct, count=count)

    def gather(values: list[torch.Tensor]) -> torch.Tensor:
        if n_full is None:  # shards of unknown size (unreadable files dropped): concatenate in rank order
            return gather_concat(torch.cat(values).cpu(), info)
        return gather_sharded(torch.cat(values).cpu(), n_full, info)

    result.scores = {k: gather(v) for k, v in parts.items()}
    result.block_norms = {k: gather(v) for k, v in norm_parts.items()}
    if info.enabled:
        both = torch.tensor([correct, count], dtype=torch.long)
        torch.distributed.all_reduce(both)
        result.correct, result.count = int(both[0]), int(both[1])
    return result


# ------------------------------------------------------------------------------------ fitting + cache
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fit_cache_key(checkpoint_hash: str, cfg: Config, method: Any) -> str:
    """Hash of the checkpoint bytes, the data keys that change ID-train features, and the method."""
    keyed = {k: cfg.to_dict().get(k) for k in FIT_KEYS}
    text = json.dumps({"checkpoint": checkpoint_hash, "config": keyed, "method": method.name,
                       "hparams": method.hparams()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_cached_state(path: Path) -> dict[str, torch.Tensor] | None:
    """A cached fit, or None when it is missing or unreadable (then it is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt or foreign: refit
        print(f"warning: cache file {path} is unreadable; recomputing it", file=sys.stderr)
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        print(f"warning: cache file {path} has unexpected content; recomputing it", file=sys.stderr)
        return None
    return state


def train_features(cfg: Config, model: nn.Module, device: torch.device, info: Dist, amp,
                   progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, D) and labels (N,) of the ID training set, with the eval transform."""
    split = load_split(cfg, train=True)
    n = len(split)
    loader = id_loader(cfg, split, device, info)
    feats, labels = [], []
    bar = progress_bar(total=len(loader), desc="fit: ID-train features", leave=False, disable=not progress)
    with torch.inference_mode():
        for images, y in loader:
            with autocast(amp, device):
                f = model.forward_features(images)
            feats.append(f.float().cpu())
            labels.append(y.cpu())
            bar.update(1)
    bar.close()
    return gather_sharded(torch.cat(feats), n, info), gather_sharded(torch.cat(labels), n, info)


def fit_methods(cfg: Config, model: nn.Module, methods: dict[str, Any], checkpoint: Path, device: torch.device,
                info: Dist, amp, progress: bool) -> dict[str, str]:
    """Fit (or load from ``<save_path>/cache/``) every method that needs ID-train statistics.

    Returns ``{method: "cached" | "fitted"}``.
    """
    fitting = {name: m for name, m in methods.items() if m.fits}
    if not fitting:
        return {}
    cache_dir = cfg.save_dir / "cache"
    ckpt_hash = file_sha256(checkpoint)
    status: dict[str, str] = {}
    missing = {}
    for name, method in fitting.items():
        path = cache_dir / f"{name}-{fit_cache_key(ckpt_hash, cfg, method)}.pt"
        state = load_cached_state(path)
        if state is not None:
            try:
                method.load_state(state)
                status[name] = "cached"
                continue
            except Exception:
                print(f"warning: cache file {path} does not fit {name}; recomputing it", file=sys.stderr)
        missing[name] = (method, path)
    if status and info.is_main:
        print(f"reusing cached ID-train fits from {cache_dir}: {', '.join(status)}", file=sys.stderr)
    if missing:
        features, labels = train_features(cfg, model, device, info, amp, progress and info.is_main)
        for name, (method, path) in missing.items():
            state = method.fit(features, labels, model.head)
            status[name] = "fitted"
            if info.is_main:
                with io.atomic_path(path) as tmp:
                    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    return status


# ------------------------------------------------------------------------------------------ data
def id_loader(cfg: Config, split, device: torch.device, info: Dist):
    """In-order batches ``(images, labels)`` of this rank's strided share of an ID split."""
    from .data.loaders import DeviceLoader, FolderLoader

    index = shard(len(split), info)
    if split.images is not None:
        return DeviceLoader(split.images[index], split.labels[index], cfg.eval_batch_size, train=False,
                            mean=cfg.mean, std=cfg.std, device=device, image_size=cfg.image_size,
                            channels_last=cfg.channels_last)
    from torch.utils.data import Subset

    from .data.images import split_dataset
    return FolderLoader(Subset(split_dataset(split, cfg, train=False), index.tolist()), cfg.eval_batch_size,
                        train=False, cfg=cfg, device=device)


# ------------------------------------------------------------------------------------------ the run
def run_evaluation(cfg: Config, checkpoint: str | None = None, methods: str | None = None, block: str | None = None,
                   ood_specs: Sequence[str] = (), save_scores: bool = False, all_blocks: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Score ID test and OOD sets with every requested method; write the results (rank 0)."""
    from .data.ood import check_ood_source, open_ood, resolve_ood_sources

    names = parse_methods(methods)
    info, device = init_distributed(cfg)
    try:
        path = default_checkpoint(cfg, checkpoint)
        model = load_for_config(cfg, path, device)
        amp = amp_dtype(cfg, device)
        show = progress and info.is_main
        selected = resolve_block(cfg, block, model, path) if any(map(uses_block, names)) or all_blocks else None
        built = {name: build_method(name, cfg) for name in names}
        id_kind, _ = resolve_id_dataset(cfg)
        sources, skipped = resolve_ood_sources(cfg, ood_specs, id_kind)
        live = []
        for source in sources:
            reason = check_ood_source(source)
            if reason:
                skipped[source.name] = reason
            else:
                live.append(source)
        if not live:
            why = f" (skipped {'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
            raise UserError(f"no OOD data set to evaluate{why}: configure OOD paths (svhn, textures, ...) or pass "
                            "--ood name=path")
        for name, reason in skipped.items():
            print(f"skipping OOD set '{name}': {reason}", file=sys.stderr)

        fit_status = fit_methods(cfg, model, built, path, device, info, amp, progress)
        tap_blocks = list(cfg.blocks or block_names(model)) if all_blocks else []
        if selected and selected["name"] not in tap_blocks:
            tap_blocks.append(selected["name"])
        # only FeatureNorm asked for: the forward pass stops after the last tapped block
        need_logits = names != ["featurenorm"]
        scorer = Scorer(model, built, selected["name"] if selected else None, tap_blocks, amp,
                        need_logits=need_logits)

        test_split = load_split(cfg, train=False)
        loader = id_loader(cfg, test_split, device, info)
        id_scores = score_dataset(scorer, loader, len(loader), "ID test", info, len(test_split), show, True)
        _check_finite(id_scores, "the ID test set")
        ood_scores: dict[str, DatasetScores] = {}
        # listed ID test images left out (missing or not images) count under the ID set's name
        unreadable: dict[str, int] = {id_kind: len(test_split.unreadable)} if test_split.unreadable else {}
        for source in live:
            data = open_ood(source, cfg, device, rank=info.rank, world_size=info.world_size)
            result = score_dataset(scorer, data, len(data) if hasattr(data, "__len__") else None, source.name,
                                   info, None, show, False)
            result.unreadable = list(data.unreadable)
            if info.enabled:
                _merge_ood_shards(result, data, info)
            unreadable[source.name] = len(result.unreadable)
            if result.count == 0:
                skipped[source.name] = "no readable images"
                continue
            _check_finite(result, f"OOD set '{source.name}'")
            ood_scores[source.name] = result
        if not ood_scores:
            raise UserError("no OOD image could be read (skipped "
                            f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())}); check the OOD folders")

        results = assemble_results(cfg, path, selected, names, built, id_scores, ood_scores, skipped, unreadable,
                                   all_blocks, fit_status, need_logits)
        if info.is_main:
            write_outputs(cfg, results, id_scores, ood_scores, selected, save_scores, all_blocks)
        return results
    finally:
        shutdown_distributed()


def _merge_ood_shards(result: DatasetScores, data, info: Dist) -> None:
    """Put an OOD set's gathered scores (rank order) back in file order; collect every rank's unreadable files.

    Args:
        result: scores gathered by :func:`score_dataset` with ``n_full=None`` (concatenated by rank).
        data: the set's :class:`~featurenorm.data.ood.OODData` after the pass (``indices``, ``unreadable``).
    """
    order = torch.argsort(gather_concat(data.indices, info), stable=True)
    result.scores = {k: v[order] for k, v in result.scores.items()}
    result.block_norms = {k: v[order] for k, v in result.block_norms.items()}
    parts: list = [None] * info.world_size
    torch.distributed.all_gather_object(parts, list(data.unreadable))
    position = {path: i for i, path in enumerate(data.paths or [])}
    result.unreadable = sorted((p for part in parts for p in part), key=lambda p: position.get(p, -1))


def _check_finite(result: DatasetScores, where: str) -> None:
    for name, values in {**result.scores, **{f"featurenorm@{b}": v for b, v in result.block_norms.items()}}.items():
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise UserError(f"method '{name}' gave {bad} NaN/inf score(s) on {where}; check the checkpoint "
                            "(it may have diverged) and the data")


def assemble_results(cfg, path, selected, names, built, id_scores: DatasetScores,
                     ood_scores: dict[str, DatasetScores], skipped, unreadable, all_blocks, fit_status,
                     with_logits: bool) -> dict[str, Any]:
    from .data.benchmarks import benchmark_entry

    id_kind = resolve_id_dataset(cfg)[0] if cfg.id_dataset else None
    entry = benchmark_entry(cfg.benchmark, id_kind or "imagefolder")  # its groups and table layout
    methods: dict[str, Any] = {}
    for name in names:
        per_set = {}
        for set_name, result in ood_scores.items():
            metrics = ood_metrics(id_scores.scores[name].numpy(), result.scores[name].numpy())
            per_set[set_name] = {**metrics, "num_ood": int(result.scores[name].numel())}
        per_set["average"] = average_metrics({k: {m: v[m] for m in METRIC_KEYS}
                                              for k, v in per_set.items()})
        per_set.update(group_averages(per_set, entry.groups))
        methods[name] = per_set
    # without logits (FeatureNorm alone, early exit) there is no accuracy to report
    accuracy = id_scores.correct / id_scores.count if with_logits and id_scores.count else None
    results: dict[str, Any] = {
        "id_dataset": id_kind, "arch": cfg.arch,
        "id_accuracy": accuracy, "num_id": id_scores.count, "checkpoint": str(path), "seed": cfg.seed,
        "block": selected, "convention": CONVENTION, "skipped": skipped, "unreadable": unreadable,
        "benchmark": cfg.benchmark, "table_metrics": list(entry.table_metrics),
        "groups": {g: [s for s in members if s in ood_scores] for g, members in entry.groups.items()},
        "hyperparameters": {n: built[n].hparams() for n in names if built[n].hparams()},
        "fit": fit_status, "methods": methods,
    }
    if all_blocks:
        per_block = {}
        for block in id_scores.block_norms:
            per_set = {s: ood_metrics(id_scores.block_norms[block].numpy(), r.block_norms[block].numpy())
                       for s, r in ood_scores.items()}
            per_set["average"] = average_metrics(per_set)
            per_set.update(group_averages(per_set, entry.groups))
            per_block[block] = per_set
        results["per_block"] = per_block
    return results


def write_outputs(cfg: Config, results, id_scores: DatasetScores, ood_scores: dict[str, DatasetScores], selected,
                  save_scores: bool, all_blocks: bool) -> None:
    save_dir = cfg.save_dir
    written = report.write_ood_results(results, save_dir)
    results["_written"] = [str(p) for p in written.values()]
    if save_scores:
        arrays = {f"{m}.id": v.numpy() for m, v in id_scores.scores.items()}
        for set_name, result in ood_scores.items():
            arrays.update({f"{m}.{set_name}": v.numpy() for m, v in result.scores.items()})
        results["_written"].append(str(report.write_scores_npz(arrays, save_dir / "scores.npz")))
    if selected and selected["name"] in id_scores.block_norms:
        block = selected["name"]
        results["_written"].append(str(report.plot_feature_norm_hist(
            id_scores.block_norms[block].numpy(), {s: r.block_norms[block].numpy() for s, r in ood_scores.items()},
            block, save_dir / "feature_norm_hist.png")))
    selection = save_dir / "block_selection.json"
    if all_blocks and selection.is_file():
        rows = json.loads(selection.read_text())
        results["_written"].append(str(report.plot_norm_ratio_vs_auroc(
            rows["blocks"], results["per_block"], save_dir / "norm_ratio_vs_auroc.png", selected=rows["selected"])))
