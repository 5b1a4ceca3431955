"""eval_ood.py: score the ID test set and the OOD sets, then compute the metrics and write reports.

One forward pass per batch yields the penultimate features, the logits and the selected
block's FeatureNorm; every feature/logit method scores from those. ODIN-style methods need
input gradients and run their own pass. When only ``featurenorm`` is asked for, the forward
pass stops after the selected block. The per-batch loop is :mod:`featurenorm.evaluation.scoring`, the fit of the
methods that learn ID-train statistics :mod:`featurenorm.evaluation.fits`, and the ``ood_results.json`` dict
:func:`featurenorm.evaluation.results.assemble_results`.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..reporting import plots
from ..reporting import tables as report
from ..selection.collect import model_device
from ..training.checkpoint import load_run_model
from ..config import Config
from ..data.batches import ImageBatches, split_batches
from ..benchmarks import benchmark_entry
from ..data.datasets import load_split, resolve_id_dataset
from ..errors import UserError
from .fits import fit_with_cache
from ..methods import METHODS, build_method, method_names
from ..methods.base import PAPER_METHOD
from ..core.blocks import candidate_blocks, classifier_parts
from .results import ResultsMeta, assemble_results
from ..runtime import amp_dtype, init_distributed, shutdown_distributed
from .scoring import DatasetScores, Scorer, collect_features, score_dataset
from ..selection.api import select_block

# Seed of the fitted methods' ID-train subsample (ImageNet): fixed, so that every run fits on the same images.
FIT_SUBSAMPLE_SEED = 0


def uses_block(method: Any) -> bool:
    """Whether a method (a name, class or instance) reads the selected block's FeatureNorm: its class says so
    by listing ``block_norm`` in ``needs``."""
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
    from ..methods.base import Method

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


# ------------------------------------------------------------------------------------------ the run
def run_evaluation(cfg: Config, checkpoint: str | None = None, methods: str | None = None, block: str | None = None,
                   ood_specs: Sequence[str] = (), save_scores: bool = False, all_blocks: bool = False,
                   progress: bool = True) -> Evaluation:
    """eval_ood.py: load the run's model and data, :func:`evaluate_scores`, and write the results (rank 0)."""
    from ..data.ood import open_ood

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
        conversions = {name: batches.conversion for name, batches in ood_loaders.items() if batches.conversion}
        if info.is_main:
            for name, conversion in conversions.items():
                print(f"OOD set '{name}': {conversion} for the {cfg.channels}-channel model", file=sys.stderr)
        test_split = load_split(cfg, train=False)
        try:
            evaluation = evaluate_scores(model, split_batches(cfg, test_split, device), ood_loaders,
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
        entry = benchmark_entry(cfg.benchmark, id_kind or "imagefolder")  # its groups and table layout
        meta = ResultsMeta(id_dataset=id_kind, arch=cfg.arch, checkpoint=weights.description, seed=cfg.seed,
                           block=selected, skipped=skipped, unreadable=unreadable,
                           conversions={k: v for k, v in conversions.items() if k in evaluation.ood_scores},
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
    from ..data.datasets import seeded_subsample, train_subsample_size

    split = load_split(cfg, train=True)
    count = train_subsample_size(cfg, "fit", len(split))
    subset = None if count is None else seeded_subsample(len(split), count, FIT_SUBSAMPLE_SEED)
    return split_batches(cfg, split, device, subset)


def _live_ood_sources(cfg: Config, ood_specs: Sequence[str]) -> tuple[list, dict[str, str]]:
    """The OOD sources that exist, and ``{name: reason}`` for those skipped (each reported on stderr)."""
    from ..data.ood import benchmark_names, check_ood_source, resolve_ood_sources

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
        written.append(plots.plot_feature_norm_hist(
            id_scores.block_norms[block].numpy(), {s: r.block_norms[block].numpy() for s, r in ood_scores.items()},
            block, save_dir / "feature_norm_hist.png"))
    selection = save_dir / "block_selection.json"
    if all_blocks and selection.is_file():
        rows = json.loads(selection.read_text())
        written.append(plots.plot_norm_ratio_vs_auroc(
            rows["blocks"], results["per_block"], save_dir / "norm_ratio_vs_auroc.png", selected=rows["selected"]))
    return written
