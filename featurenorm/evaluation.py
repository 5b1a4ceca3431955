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
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from . import io, report
from .data.batches import ImageBatches, gather_in_order
from .checkpoint import WeightsSource, load_run_model
from .config import Config
from .data.datasets import load_split, resolve_id_dataset
from .errors import UserError
from .features import FeatureTap
from .methods import METHODS, ModelParts, Outputs, build_method, method_names
from .methods.base import PAPER_METHOD
from .results import AVERAGE, CONVENTION, DEFAULT_TABLE_METRICS
from .metrics import METRIC_KEYS, average_metrics, group_averages, ood_metrics
from .models.blocks import candidate_blocks
from .selection import model_device, select_block
from .runtime import amp_dtype, autocast, init_distributed, progress_bar, shutdown_distributed

# Config keys whose change invalidates fitted ID-train statistics (besides the checkpoint bytes).
FIT_KEYS = ("id_dataset", "dataset", "data_root", "image_size", "resize_size", "interpolation", "mean", "std", "arch",
            "width", "num_classes", "fit_samples", "benchmark", "openood_root")
# Seed of the fitted methods' ID-train subsample (ImageNet): fixed, so that every run fits on the same images.
FIT_SUBSAMPLE_SEED = 0


def uses_block(method: Any) -> bool:
    """Whether a method (a name, class or instance) reads the selected block's FeatureNorm: its class says so
    by listing ``block_norm`` in ``needs``."""
    from .methods.base import METHODS

    cls = METHODS.get(method) if isinstance(method, str) else method
    return cls is not None and "block_norm" in cls.needs


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
            raise UserError(f"--block '{block}' is not a block of {cfg.arch}; valid: {', '.join(candidate_blocks(model))}")
        names = list(cfg.blocks or candidate_blocks(model))
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
    """Everything one batch needs: the model, the methods and which blocks to tap.

    ``forward_features``/``head`` default to :func:`featurenorm.models.blocks.classifier_parts` of the model.
    """

    model: nn.Module
    methods: dict[str, Any]
    block: str | None
    tap_blocks: list[str]
    amp: torch.dtype | None
    need_logits: bool = True
    forward_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    head: nn.Linear | None = None

    def __post_init__(self) -> None:
        if self.forward_features is None or self.head is None:
            from .models.blocks import classifier_parts

            self.forward_features, self.head = classifier_parts(self.model)

    @property
    def parts(self) -> ModelParts:
        return ModelParts(self.model, self.forward_features, self.head, self.block)

    def forward(self, images: torch.Tensor) -> tuple[Outputs, dict[str, torch.Tensor]]:
        """One forward pass: (Outputs, {block: (B,) FeatureNorm}) under inference mode."""
        with torch.inference_mode():
            if not self.tap_blocks:
                with autocast(self.amp, images.device):
                    features = self.forward_features(images)
                features = features.float()
                return Outputs(features=features, logits=self.head(features)), {}
            with FeatureTap(self.model, self.tap_blocks, stop_after_last=not self.need_logits) as tap:
                with autocast(self.amp, images.device):
                    features = tap.run(self.forward_features, images)
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
        """Scores of the methods that perturb their input, each through the logits it defines."""
        scores = {}
        parts = self.parts
        for name, method in self.methods.items():
            if method.needs_input:
                with torch.enable_grad():
                    scores[name] = method.score_images(method.input_logits(parts), images).detach().float().cpu()
        return scores


@dataclass
class DatasetScores:
    scores: dict[str, torch.Tensor] = field(default_factory=dict)       # method -> (N,)
    block_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # block -> (N,)
    correct: int = 0   # correct predictions among the labelled images
    labelled: int = 0  # images with a class label (>= 0)
    count: int = 0     # images scored
    unreadable: list[str] = field(default_factory=list)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``images``, ``(images, labels)`` or ``(images, labels, index)`` -> ``(images, labels, index)``, None
    for what a batch does not carry (the index: each image's position in its set, see
    :class:`~featurenorm.data.batches.ImageBatches`)."""
    if not isinstance(batch, (tuple, list)):
        return batch, None, None
    labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    index = batch[2] if len(batch) > 2 and isinstance(batch[2], torch.Tensor) else None
    return batch[0], labels, index


class _Collected:
    """Per-image values batch by batch, put in set order at the end (across ranks when batches carry an index)."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.index: list[torch.Tensor] = []

    def add(self, values: Mapping[str, torch.Tensor], index: torch.Tensor | None) -> None:
        for name, value in values.items():
            self.parts.setdefault(name, []).append(value)
        if index is not None:
            self.index.append(index)

    def in_order(self) -> dict[str, torch.Tensor]:
        index = torch.cat(self.index) if self.index else None
        return {name: (gather_in_order(torch.cat(v), index) if index is not None else torch.cat(v).cpu())
                for name, v in self.parts.items()}


def score_dataset(scorer: Scorer, batches: Iterable, desc: str, progress: bool) -> DatasetScores:
    """Run the one-pass methods, then the input-gradient methods, over one data set.

    ``batches`` yields images, ``(images, labels)`` or ``(images, labels, index)``; they are moved to the
    model's device. Labels, where given and >= 0, count toward the accuracy. With an index (as
    :class:`~featurenorm.data.batches.ImageBatches` yields) the per-image values of every rank are
    gathered back in set order; a ``batches.unreadable`` list names the files left out.
    """
    from .selection import model_device

    device = model_device(scorer.model)
    collected = _Collected()
    hits: list[torch.Tensor] = []  # correct predictions per batch, summed once at the end (no per-batch sync)
    labelled: list[torch.Tensor] = []
    count = 0
    has_input = any(m.needs_input for m in scorer.methods.values())
    bar = progress_bar(total=len(batches) if hasattr(batches, "__len__") else None, desc=desc, leave=False,
                       disable=not progress)
    for batch in batches:
        images, labels, index = split_batch(batch)
        images = images.to(device, non_blocking=True)
        scores, norms, logits = scorer.score_batch(images)
        if has_input:
            scores.update(scorer.input_scores(images))
        collected.add({**{f"score:{k}": v for k, v in scores.items()}, **{f"norm:{k}": v for k, v in norms.items()}},
                      index)
        if labels is not None and logits is not None:
            labels = labels.to(logits.device)
            known = labels >= 0
            hits.append((logits.argmax(1)[known] == labels[known]).sum())
            labelled.append(known.sum())
        count += images.shape[0]
        bar.update(1)
    bar.close()
    values = collected.in_order()
    result = DatasetScores(correct=int(torch.stack(hits).sum()) if hits else 0,
                           labelled=int(torch.stack(labelled).sum()) if labelled else 0, count=count)
    result.scores = {k[len("score:"):]: v for k, v in values.items() if k.startswith("score:")}
    result.block_norms = {k[len("norm:"):]: v for k, v in values.items() if k.startswith("norm:")}
    unreadable = getattr(batches, "all_unreadable", None)
    result.unreadable = unreadable() if unreadable else list(getattr(batches, "unreadable", []))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        totals = torch.tensor([result.correct, result.labelled, result.count], dtype=torch.long)
        torch.distributed.all_reduce(totals)
        result.correct, result.labelled, result.count = (int(v) for v in totals)
    return result


def collect_features(forward_features: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, device: torch.device,
                     amp: torch.dtype | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, D) and labels (N,) of a labelled loader (e.g. the ID training set), in set order."""
    collected = _Collected()
    bar = progress_bar(total=len(loader) if hasattr(loader, "__len__") else None, desc="fit: ID-train features",
                       leave=False, disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            images, labels, index = split_batch(batch)
            if labels is None:
                raise ValueError("the fit loader must yield (images, labels) batches: the fitted methods need labels")
            images = images.to(device, non_blocking=True)
            with autocast(amp, device):
                features = forward_features(images)
            collected.add({"features": features.float().cpu(), "labels": labels.cpu()}, index)
            bar.update(1)
    bar.close()
    if not collected.parts:
        raise ValueError("the fit loader yielded no images")
    values = collected.in_order()
    return values["features"], values["labels"]


# ------------------------------------------------------------------------------------ the Python API
class NoOODImages(ValueError):
    """Every OOD loader was empty (or every file in it unreadable): there is nothing to measure."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


@dataclass
class Evaluation:
    """What :func:`evaluate_scores` returns: the ``ood_results.json`` dict and the per-image scores behind it."""

    results: dict[str, Any]
    id_scores: DatasetScores
    ood_scores: dict[str, DatasetScores]
    with_logits: bool = True
    written: list[Path] = field(default_factory=list)


def _build_methods(methods: Sequence[Any], cfg: Config | None) -> dict[str, Any]:
    """Names are built with the hyperparameters of ``cfg`` (the defaults when None); instances are kept."""
    from .methods.base import Method

    cfg = cfg or Config()
    built = {}
    for method in methods:
        if isinstance(method, Method):
            built[method.name] = method
        elif isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"unknown method '{method}'; valid: {', '.join(method_names())}")
            built[method] = build_method(method, cfg)
        else:
            raise TypeError(f"methods holds names or Method instances, got {type(method).__name__}")
    if not built:
        raise ValueError("no methods to evaluate")
    return built


def evaluate_scores(model: nn.Module, id_loader: Iterable, ood_loaders: Mapping[str, Iterable],
                    methods: Sequence[Any] = (PAPER_METHOD,), *, block: str | None = None,
                    fit_loader: Iterable | None = None, all_blocks: bool = False, blocks: Sequence[str] | None = None,
                    amp: torch.dtype | None = None, cfg: Config | None = None, fitted: Mapping[str, str] | None = None,
                    progress: bool = False) -> Evaluation:
    """:func:`evaluate`, also returning the per-image scores (ID and each OOD set) behind the metrics.

    Args (beyond :func:`evaluate`'s):
        blocks: the candidate blocks for ``all_blocks`` (default :func:`featurenorm.candidate_blocks`).
        amp: autocast dtype for the forward passes (None: full precision).
        cfg: hyperparameters of the methods given by name (default: the config defaults).
        fitted: ``{method: how}`` for method instances already fitted (e.g. ``"cached"``); not refitted.
    """
    fitted = dict(fitted or {})
    from .models.blocks import classifier_parts

    built = _build_methods(methods, cfg)
    names = list(built)
    needs_block = any(uses_block(type(m)) for m in built.values())
    if (needs_block or all_blocks) and block is None:
        if fit_loader is None:
            raise ValueError("a method reads the block norm: pass block=..., or fit_loader= to select one")
        block = select_block(model, fit_loader).block
    candidates = list(blocks) if blocks is not None else (candidate_blocks(model) if all_blocks else [])
    tap_blocks = candidates + ([block] if block and block not in candidates else [])
    was_training = model.training
    model.eval()
    try:
        forward_features, head = classifier_parts(model)
        fit_status = {n: fitted[n] for n in built if n in fitted}
        unfitted = {n: m for n, m in built.items() if m.fits and n not in fitted}
        if unfitted:
            if fit_loader is None:
                raise ValueError(f"method(s) {', '.join(unfitted)} need ID-train statistics: pass fit_loader=")
            features, labels = collect_features(forward_features, fit_loader, model_device(model), amp, progress)
            for name, method in unfitted.items():
                method.fit(features, labels, head)
                fit_status[name] = "fitted"
        # only FeatureNorm asked for: the forward pass stops after the last tapped block
        need_logits = any(not uses_block(type(m)) or m.needs - {"block_norm"} or m.needs_input
                          for m in built.values())
        scorer = Scorer(model, built, block, tap_blocks, amp, need_logits=need_logits,
                        forward_features=forward_features, head=head)
        id_scores = score_dataset(scorer, id_loader, "ID test", progress)
        _check_finite(id_scores, "the ID test set")
        ood_scores: dict[str, DatasetScores] = {}
        for set_name, loader in ood_loaders.items():
            result = score_dataset(scorer, loader, set_name, progress)
            if result.count:
                _check_finite(result, f"OOD set '{set_name}'")
            ood_scores[set_name] = result
    finally:
        model.train(was_training)
    if not any(result.count for result in ood_scores.values()):
        raise NoOODImages(f"no OOD image could be read (empty: {', '.join(ood_scores)})", list(ood_scores))
    selected = {"name": block, "index": candidates.index(block) if block in candidates else None} if block else None
    results = assemble_results(ResultsMeta(arch=type(model).__name__, block=selected,
                                           hyperparameters={n: m.hparams() for n, m in built.items() if m.hparams()},
                                           fit=fit_status),
                               names, id_scores, {k: v for k, v in ood_scores.items() if v.count},
                               with_logits=need_logits, all_blocks=all_blocks)
    return Evaluation(results, id_scores, ood_scores, with_logits=need_logits)


def evaluate(model: nn.Module, id_loader: Iterable, ood_loaders: Mapping[str, Iterable],
             methods: Sequence[Any] = (PAPER_METHOD,), *, block: str | None = None, fit_loader: Iterable | None = None,
             all_blocks: bool = False, progress: bool = False) -> dict[str, Any]:
    """Score ID and OOD images with every method and return the metrics in the ``ood_results.json`` schema.

    Example::

        results = evaluate(model, id_test_loader, {"svhn": svhn_loader}, ["featurenorm", "msp", "knn"],
                           block="layer4.0", fit_loader=train_loader)
        results["methods"]["featurenorm"]["svhn"]["auroc"]

    Args:
        model: any classifier in eval mode (methods other than FeatureNorm need a final ``nn.Linear``).
        id_loader: ID test batches, ``images`` or ``(images, labels)``; labels give ``id_accuracy``.
        ood_loaders: ``{name: loader}``; labels, if any, are ignored.
        methods: method names (see :func:`featurenorm.methods.method_names`) or Method instances.
        block: the block FeatureNorm reads; None runs :func:`select_block` on ``fit_loader``.
        fit_loader: labelled ID training batches, for the methods that fit statistics (and for selection).
        all_blocks: also report FeatureNorm at every candidate block (``per_block``).
        progress: show progress bars.

    Convention: higher score = more in-distribution; ID is the positive class of FPR95 and AUROC.
    """
    return evaluate_scores(model, id_loader, ood_loaders, methods, block=block, fit_loader=fit_loader,
                           all_blocks=all_blocks, progress=progress).results


# ------------------------------------------------------------------------------------ fitting + cache
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


def fit_with_cache(cfg: Config, model: nn.Module, methods: dict[str, Any], checkpoint: WeightsSource, fit_loader,
                   amp, progress: bool, is_main: bool) -> dict[str, str]:
    """Fit (or load from ``<save_path>/cache/``) every method that needs ID-train statistics.

    The cache is keyed by the weights (:meth:`WeightsSource.fingerprint`), the config's :data:`FIT_KEYS`
    and the method's hyperparameters.

    Returns ``{method: "cached" | "fitted"}``.
    """
    from .models.blocks import classifier_parts

    fitting = {name: m for name, m in methods.items() if m.fits}
    if not fitting:
        return {}
    cache_dir = cfg.save_dir / "cache"
    ckpt_hash = checkpoint.fingerprint()
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
    if status and is_main:
        print(f"reusing cached ID-train fits from {cache_dir}: {', '.join(status)}", file=sys.stderr)
    if missing:
        forward_features, head = classifier_parts(model)
        features, labels = collect_features(forward_features, fit_loader(), model_device(model), amp,
                                            progress and is_main)
        for name, (method, path) in missing.items():
            state = method.fit(features, labels, head)
            status[name] = "fitted"
            if is_main:
                with io.atomic_path(path) as tmp:
                    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    return status


# ------------------------------------------------------------------------------------------ data
def id_batches(cfg: Config, split, device: torch.device, subset: torch.Tensor | None = None) -> ImageBatches:
    """In-order batches of an ID split (or of its images ``subset``), this rank's share."""
    if split.images is not None:
        return ImageBatches(cfg, device, images=split.images, labels=split.labels, subset=subset, name=split.name)
    return ImageBatches(cfg, device, samples=split.image_samples(), subset=subset, name=split.name)


# ------------------------------------------------------------------------------------------ the run
def run_evaluation(cfg: Config, checkpoint: str | None = None, methods: str | None = None, block: str | None = None,
                   ood_specs: Sequence[str] = (), save_scores: bool = False, all_blocks: bool = False,
                   progress: bool = True) -> Evaluation:
    """eval_ood.py: load the run's model and data, :func:`evaluate_scores`, and write the results (rank 0)."""
    from .data.ood import open_ood

    names = parse_methods(methods)
    info, device = init_distributed(cfg)
    try:
        model, weights = load_run_model(cfg, checkpoint, device)
        amp = amp_dtype(cfg, device)
        show = progress and info.is_main
        selected = resolve_block(cfg, block, model, weights.description) \
            if any(map(uses_block, names)) or all_blocks else None
        built = {name: build_method(name, cfg) for name in names}
        live, skipped = _live_ood_sources(cfg, ood_specs)
        fit_status = fit_with_cache(cfg, model, built, weights, lambda: _fit_batches(cfg, device),
                                    amp, progress, info.is_main)
        ood_loaders = {source.name: open_ood(source, cfg, device) for source in live}
        test_split = load_split(cfg, train=False)
        try:
            evaluation = evaluate_scores(model, id_batches(cfg, test_split, device), ood_loaders,
                                         list(built.values()), block=selected["name"] if selected else None,
                                         all_blocks=all_blocks, blocks=list(cfg.blocks or candidate_blocks(model)),
                                         amp=amp, cfg=cfg, fitted=fit_status, progress=show)
        except NoOODImages as err:
            skipped.update({name: "no readable images" for name in err.names})
            raise UserError("no OOD image could be read (skipped "
                            f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())}); check the OOD folders") from None
        id_kind = resolve_id_dataset(cfg)[0] if cfg.id_dataset else None
        # listed ID test images left out (missing or not images) count under the ID set's name
        unreadable = {id_kind: len(test_split.unreadable)} if test_split.unreadable else {}
        unreadable.update({name: len(result.unreadable) for name, result in evaluation.ood_scores.items()})
        for name, result in list(evaluation.ood_scores.items()):
            if result.count == 0:
                skipped[name] = "no readable images"
                del evaluation.ood_scores[name]
        from .data.benchmarks import benchmark_entry

        entry = benchmark_entry(cfg.benchmark, id_kind or "imagefolder")  # its groups and table layout
        meta = ResultsMeta(id_dataset=id_kind, arch=cfg.arch, checkpoint=weights.description, seed=cfg.seed,
                           block=selected, skipped=skipped, unreadable=unreadable,
                           hyperparameters=evaluation.results["hyperparameters"], fit=fit_status,
                           benchmark=cfg.benchmark, groups=entry.groups, table_metrics=entry.table_metrics)
        evaluation.results = assemble_results(meta, names, evaluation.id_scores, evaluation.ood_scores,
                                              with_logits=evaluation.with_logits, all_blocks=all_blocks)
        if info.is_main:
            evaluation.written = write_outputs(cfg, evaluation, selected, save_scores, all_blocks)
        return evaluation
    finally:
        shutdown_distributed()


def _fit_batches(cfg: Config, device: torch.device) -> ImageBatches:
    """The ID-train images the fitted methods read: all, or a seeded subsample (``fit_samples``; ImageNet: 1%)."""
    from .data.datasets import seeded_subsample, train_subsample_size

    split = load_split(cfg, train=True)
    count = train_subsample_size(cfg, "fit", len(split))
    subset = None if count is None else seeded_subsample(len(split), count, FIT_SUBSAMPLE_SEED)
    return id_batches(cfg, split, device, subset)


def _live_ood_sources(cfg: Config, ood_specs: Sequence[str]) -> tuple[list, dict[str, str]]:
    """The OOD sources that exist, and ``{name: reason}`` for those skipped (each reported on stderr)."""
    from .data.ood import benchmark_names, check_ood_source, resolve_ood_sources

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
        keys = ", ".join(benchmark_names(id_kind, cfg.benchmark)[:2] + ["..."])
        raise UserError(f"no OOD data set to evaluate{why}: configure OOD paths ({keys}) or pass --ood name=path")
    for name, reason in skipped.items():
        print(f"skipping OOD set '{name}': {reason}", file=sys.stderr)
    return live, skipped


def _check_finite(result: DatasetScores, where: str) -> None:
    for name, values in {**result.scores, **{f"featurenorm@{b}": v for b, v in result.block_norms.items()}}.items():
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise UserError(f"method '{name}' gave {bad} NaN/inf score(s) on {where}; check the checkpoint "
                            "(it may have diverged) and the data")


@dataclass
class ResultsMeta:
    """The provenance fields of ``ood_results.json``."""

    arch: str | None
    block: dict[str, Any] | None
    hyperparameters: dict[str, Any]
    fit: dict[str, str]
    id_dataset: str | None = None
    checkpoint: str | None = None
    seed: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    benchmark: str | None = None
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # e.g. OpenOOD's near and far
    table_metrics: Sequence[str] = DEFAULT_TABLE_METRICS


def assemble_results(meta: ResultsMeta, names: Sequence[str], id_scores: DatasetScores,
                     ood_scores: Mapping[str, DatasetScores], *, with_logits: bool, all_blocks: bool) -> dict[str, Any]:
    """The ``ood_results.json`` dict: metrics per method and OOD set (plus ``average``), and provenance."""
    methods: dict[str, Any] = {}
    for name in names:
        per_set = {}
        for set_name, result in ood_scores.items():
            metrics = ood_metrics(id_scores.scores[name].numpy(), result.scores[name].numpy())
            per_set[set_name] = {**metrics, "num_ood": int(result.scores[name].numel())}
        per_set[AVERAGE] = average_metrics({k: {m: v[m] for m in METRIC_KEYS}
                                              for k, v in per_set.items()})
        per_set.update(group_averages(per_set, meta.groups))
        methods[name] = per_set
    # without logits (FeatureNorm alone, early exit) there is no accuracy to report
    accuracy = id_scores.correct / id_scores.labelled if with_logits and id_scores.labelled else None
    num_id = id_scores.count
    results: dict[str, Any] = {
        "id_dataset": meta.id_dataset, "arch": meta.arch, "id_accuracy": accuracy, "num_id": num_id,
        "checkpoint": meta.checkpoint, "seed": meta.seed, "block": meta.block, "convention": CONVENTION,
        "skipped": meta.skipped, "unreadable": meta.unreadable, "benchmark": meta.benchmark,
        "table_metrics": list(meta.table_metrics),
        "groups": {g: [s for s in members if s in ood_scores] for g, members in meta.groups.items()},
        "hyperparameters": meta.hyperparameters,
        "fit": meta.fit, "methods": methods,
    }
    if all_blocks:
        per_block = {}
        for block in id_scores.block_norms:
            per_set = {s: ood_metrics(id_scores.block_norms[block].numpy(), r.block_norms[block].numpy())
                       for s, r in ood_scores.items()}
            per_set[AVERAGE] = average_metrics(per_set)
            per_set.update(group_averages(per_set, meta.groups))
            per_block[block] = per_set
        results["per_block"] = per_block
        if meta.block and meta.block.get("name") in per_block:
            results["oracle"] = oracle_gap(per_block, meta.block["name"])
    return results


def oracle_gap(per_block: Mapping[str, Mapping[str, Any]], selected: str) -> dict[str, Any]:
    """How far the selected block falls short of the best block in hindsight, by average OOD AUROC.

    The "oracle" looks at the OOD test sets, which selection never may; the gap says what the
    selection rule cost on this run. The first block wins ties.

    Args:
        per_block: ``ood_results.json["per_block"]``: ``{block: {set: metrics, "average": metrics}}``.
        selected: the block FeatureNorm was scored at (one of ``per_block``).

    Returns:
        ``{"best_block", "best_auroc", "selected_block", "selected_auroc", "difference"}``, AUROCs as
        fractions and ``difference = best_auroc - selected_auroc`` (>= 0).
    """
    averages = {block: per_set["average"]["auroc"] for block, per_set in per_block.items()}
    best = max(averages, key=lambda block: averages[block])
    return {"best_block": best, "best_auroc": averages[best], "selected_block": selected,
            "selected_auroc": averages[selected], "difference": averages[best] - averages[selected]}


def write_outputs(cfg: Config, evaluation: Evaluation, selected, save_scores: bool, all_blocks: bool) -> list[Path]:
    """Write the JSON/Markdown/CSV results, optionally the scores, and the plots; return the paths."""
    save_dir = cfg.save_dir
    results, id_scores, ood_scores = evaluation.results, evaluation.id_scores, evaluation.ood_scores
    written = list(report.write_ood_results(results, save_dir).values())
    if save_scores:
        arrays = {f"{m}.id": v.numpy() for m, v in id_scores.scores.items()}
        for set_name, result in ood_scores.items():
            arrays.update({f"{m}.{set_name}": v.numpy() for m, v in result.scores.items()})
        written.append(report.write_scores_npz(arrays, save_dir / "scores.npz"))
    if selected and selected["name"] in id_scores.block_norms:
        block = selected["name"]
        written.append(report.plot_feature_norm_hist(
            id_scores.block_norms[block].numpy(), {s: r.block_norms[block].numpy() for s, r in ood_scores.items()},
            block, save_dir / "feature_norm_hist.png"))
    selection = save_dir / "block_selection.json"
    if all_blocks and selection.is_file():
        rows = json.loads(selection.read_text())
        written.append(report.plot_norm_ratio_vs_auroc(
            rows["blocks"], results["per_block"], save_dir / "norm_ratio_vs_auroc.png", selected=rows["selected"]))
    return written
