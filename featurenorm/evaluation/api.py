"""The evaluation API: score ID and OOD batches with every method and compute the metrics.

One forward pass per batch yields the penultimate features, the logits and the selected
block's FeatureNorm; every feature/logit method scores from those. ODIN-style methods need
input gradients and run their own pass. When only ``featurenorm`` is asked for, the forward
pass stops after the selected block. The per-batch loop is :mod:`featurenorm.evaluation.scoring`, the fit of the
methods that learn ID-train statistics :mod:`featurenorm.evaluation.fits`, and the ``ood_results.json`` dict
:func:`featurenorm.evaluation.results.assemble_results`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..config import Config
from ..core.block_rows import SelectedBlock
from ..core.blocks import candidate_blocks, classifier_parts, model_device
from ..errors import UserError
from ..methods import METHODS, build_method, method_names
from ..methods.base import PAPER_METHOD, Method, fits_on_block_norms, uses_all_blocks, uses_block
from ..selection.api import select_block
from .results import FitStatus, ResultsMeta, assemble_results
from .scoring import DatasetScores, Scorer, collect_features, score_dataset


class NoOODImages(ValueError):
    """Every OOD loader was empty (or every file in it unreadable): there is nothing to measure."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


@dataclass
class Evaluation:
    """What :func:`evaluate_scores` returns: the per-image scores (ID and each OOD set) and what the
    ``ood_results.json`` dict is assembled from.

    :attr:`results` assembles that dict once, on first use, with the provenance the model alone gives;
    a run that knows more (its config's arch, dataset, checkpoint, skipped sets) calls :meth:`assemble`
    with it first.
    """

    id_scores: DatasetScores
    ood_scores: dict[str, DatasetScores]
    methods: list[str]
    meta: ResultsMeta
    with_logits: bool = True
    all_blocks: bool = False
    written: list[Path] = field(default_factory=list)
    _results: dict[str, Any] | None = field(default=None, repr=False)

    def assemble(self, **provenance: Any) -> dict[str, Any]:
        """Assemble the results with the :class:`ResultsMeta` fields in ``provenance`` replacing this run's;
        OOD sets without a readable image are left out."""
        self.meta = replace(self.meta, **provenance)
        self._results = assemble_results(self.meta, self.methods, self.id_scores,
                                         {k: v for k, v in self.ood_scores.items() if v.count},
                                         with_logits=self.with_logits, all_blocks=self.all_blocks)
        return self._results

    @property
    def results(self) -> dict[str, Any]:
        """The ``ood_results.json`` dict."""
        return self._results if self._results is not None else self.assemble()


def _build_methods(methods: Sequence[Any], cfg: Config | None) -> dict[str, Any]:
    """Names are built with the hyperparameters of ``cfg`` (the defaults when None); instances are kept."""
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
        fitted: ``{method: FitStatus}`` for method instances already fitted (e.g. read from the cache); not refitted.
    """
    fitted = dict(fitted or {})
    built = _build_methods(methods, cfg)
    names = list(built)
    needs_block = any(uses_block(type(m)) for m in built.values())
    if (needs_block or all_blocks) and block is None:
        if fit_loader is None:
            raise ValueError("a method reads the block norm: pass block=..., or fit_loader= to select one")
        block = select_block(model, fit_loader).block
    profile = any(uses_all_blocks(m) for m in built.values())  # a method reads every candidate block
    candidates = list(blocks) if blocks is not None else (candidate_blocks(model) if all_blocks or profile else [])
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
            tapped = candidates if fits_on_block_norms(unfitted.values()) else None
            data = collect_features(forward_features, fit_loader, model_device(model), amp, progress, model=model,
                                    blocks=tapped)
            for name, method in unfitted.items():
                method.fit(data.input_for(method), data.labels, head)
                fit_status[name] = FitStatus.FITTED
        # only FeatureNorm asked for: the forward pass stops after the last tapped block
        need_logits = any(not uses_block(type(m)) or m.needs - {"block_norm"} or m.needs_input
                          for m in built.values())
        scorer = Scorer(model, built, block, tap_blocks, amp, need_logits=need_logits,
                        forward_features=forward_features, head=head, profile_blocks=candidates if profile else [])
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
    selected = SelectedBlock(block, candidates.index(block) if block in candidates else None) if block else None
    meta = ResultsMeta(arch=type(model).__name__, block=selected,
                       hyperparameters={n: m.hparams() for n, m in built.items() if m.hparams()}, fit=fit_status)
    return Evaluation(id_scores, ood_scores, names, meta, with_logits=need_logits, all_blocks=all_blocks)


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


def _check_finite(result: DatasetScores, where: str) -> None:
    for name, values in {**result.scores, **{f"featurenorm@{b}": v for b, v in result.block_norms.items()}}.items():
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise UserError(f"method '{name}' gave {bad} NaN/inf score(s) on {where}; check the checkpoint "
                            "(it may have diverged) and the data")
