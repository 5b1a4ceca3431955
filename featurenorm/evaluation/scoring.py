"""The scoring pass: one forward pass per batch gives every one-pass method's score and the tapped blocks'
FeatureNorms; :func:`score_dataset` runs it over a data set and puts the per-image values in set order.

:func:`collect_features` gathers the penultimate features that the fitted methods learn from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn

from ..core.blocks import model_device
from ..core.tap import FeatureTap
from ..methods import ModelParts, Outputs
from ..runtime import autocast, gather_in_order, progress_bar
from ..core.blocks import classifier_parts


@dataclass
class Scorer:
    """Everything one batch needs: the model, the methods and which blocks to tap.

    ``forward_features``/``head`` default to :func:`featurenorm.core.blocks.classifier_parts` of the model.
    ``profile_blocks`` (tapped too) are the candidate blocks whose FeatureNorms fill ``Outputs.block_norms``, in
    that order, for the methods that read every block.
    """

    model: nn.Module
    methods: dict[str, Any]
    block: str | None
    tap_blocks: list[str]
    amp: torch.dtype | None
    need_logits: bool = True
    forward_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    head: nn.Linear | None = None
    profile_blocks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.forward_features is None or self.head is None:
            self.forward_features, self.head = classifier_parts(self.model)
        self.tap_blocks = list(dict.fromkeys([*self.tap_blocks, *self.profile_blocks]))

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
            block_norms = torch.stack([norms[name] for name in self.profile_blocks], 1) if self.profile_blocks \
                else None
            return Outputs(features=features, logits=self.head(features), block_norm=block_norm,
                           block_norms=block_norms), norms

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
    """Per-image values batch by batch, under ``(group, name)`` keys, put in set order at the end (across
    ranks, in one gather, when the batches carry an index)."""

    def __init__(self):
        self.parts: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.index: list[torch.Tensor] = []

    def add(self, group: str, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.parts.setdefault((group, name), []).append(value)

    def add_index(self, index: torch.Tensor | None) -> None:
        if index is not None:
            self.index.append(index)

    def in_order(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{group: {name: (N, ...) on the CPU}}``."""
        values = {key: torch.cat(parts) for key, parts in self.parts.items()}
        values = gather_in_order(values, torch.cat(self.index)) if self.index else \
            {key: value.cpu() for key, value in values.items()}
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for (group, name), value in values.items():
            grouped.setdefault(group, {})[name] = value
        return grouped


def score_dataset(scorer: Scorer, batches: Iterable, desc: str, progress: bool) -> DatasetScores:
    """Run the one-pass methods, then the input-gradient methods, over one data set.

    ``batches`` yields images, ``(images, labels)`` or ``(images, labels, index)``; they are moved to the
    model's device. Labels, where given and >= 0, count toward the accuracy. With an index (as
    :class:`~featurenorm.data.batches.ImageBatches` yields) the per-image values of every rank are
    gathered back in set order; ``batches.all_unreadable()``, where it exists, names the files left out.
    """
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
        collected.add("scores", scores)
        collected.add("block_norms", norms)
        collected.add_index(index)
        if labels is not None and logits is not None:
            labels = labels.to(logits.device)
            known = labels >= 0
            hits.append((logits.argmax(1)[known] == labels[known]).sum())
            labelled.append(known.sum())
        count += images.shape[0]
        bar.update(1)
    bar.close()
    values = collected.in_order()
    result = DatasetScores(scores=values.get("scores", {}), block_norms=values.get("block_norms", {}),
                           correct=int(torch.stack(hits).sum()) if hits else 0,
                           labelled=int(torch.stack(labelled).sum()) if labelled else 0, count=count)
    # ImageBatches name the files they left out (every rank's); other loaders skip none
    result.unreadable = getattr(batches, "all_unreadable", list)()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        totals = torch.tensor([result.correct, result.labelled, result.count], dtype=torch.long)
        torch.distributed.all_reduce(totals)
        result.correct, result.labelled, result.count = (int(v) for v in totals)
    return result


@dataclass
class FitData:
    """What the fitted methods learn from, in set order: penultimate features (N, D), labels (N,), and, when
    blocks were tapped, every tapped block's FeatureNorm (N, K) in the order asked for."""

    features: torch.Tensor
    labels: torch.Tensor
    block_norms: torch.Tensor | None = None

    def input_for(self, method: Any) -> torch.Tensor:
        """The ``train_features`` argument of ``method.fit``: what its ``fit_on`` names."""
        if method.fit_on == "block_norms":
            if self.block_norms is None:
                raise ValueError(f"method '{method.name}' fits on block norms; collect them with blocks=[...]")
            return self.block_norms
        return self.features


def collect_features(forward_features: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, device: torch.device,
                     amp: torch.dtype | None = None, progress: bool = False, model: nn.Module | None = None,
                     blocks: list[str] | None = None) -> FitData:
    """Penultimate features and labels of a labelled loader (e.g. the ID training set), in set order; with
    ``model`` and ``blocks``, also those blocks' FeatureNorms (one pass for both)."""
    collected = _Collected()
    bar = progress_bar(total=len(loader) if hasattr(loader, "__len__") else None, desc="fit: ID-train features",
                       leave=False, disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            images, labels, index = split_batch(batch)
            if labels is None:
                raise ValueError("the fit loader must yield (images, labels) batches: the fitted methods need labels")
            images = images.to(device, non_blocking=True)
            values = {"labels": labels.cpu()}
            if blocks:
                with FeatureTap(model, blocks) as tap:
                    with autocast(amp, device):
                        features = tap.run(forward_features, images)
                    values["block_norms"] = torch.stack([tap.values[name].float() for name in blocks], 1).cpu()
            else:
                with autocast(amp, device):
                    features = forward_features(images)
            values["features"] = features.float().cpu()
            collected.add("fit", values)
            collected.add_index(index)
            bar.update(1)
    bar.close()
    if not collected.parts:
        raise ValueError("the fit loader yielded no images")
    values = collected.in_order()["fit"]
    return FitData(values["features"], values["labels"], values.get("block_norms"))
