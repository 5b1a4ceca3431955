"""eval_ood.py's run: the config's model, block, ID and OOD data through :func:`featurenorm.evaluation.api.evaluate_scores`,
the results schema filled in with the run's provenance, and every output file written (rank 0)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..benchmarks import benchmark_entry
from ..config import Config
from ..core.blocks import candidate_blocks
from ..data.batches import ImageBatches, split_batches
from ..data.datasets import resolve_id_dataset, seeded_subsample, train_subsample_size
from ..data.ood import benchmark_names, check_ood_source, open_ood, resolve_ood_sources
from ..data.splits import load_split
from ..errors import UserError
from ..evaluation.api import Evaluation, NoOODImages, evaluate_scores
from ..evaluation.fits import fit_with_cache
from ..methods import build_method, method_names
from ..methods.base import uses_block
from ..reporting import plots
from ..reporting import tables as report
from ..core.block_rows import SelectedBlock
from ..selection.api import BlockSelection
from ..runtime import amp_dtype, init_distributed, shutdown_distributed
from ..training.checkpoint import load_run_model

# Seed of the fitted methods' ID-train subsample (ImageNet): fixed, so that every run fits on the same images.
FIT_SUBSAMPLE_SEED = 0


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


def resolve_block(cfg: Config, block: str | None, model: nn.Module,
                  checkpoint: Path | None = None) -> SelectedBlock:
    """The block to score: ``--block`` if given, else the one block_selection.json selected."""
    if block:
        if block not in dict(model.named_modules()):
            raise UserError(f"--block '{block}' is not a block of {cfg.arch}; valid: {', '.join(candidate_blocks(model))}")
        names = list(cfg.blocks or candidate_blocks(model))
        return SelectedBlock(block, names.index(block) if block in names else None, source="--block")
    path = cfg.save_dir / "block_selection.json"
    if not path.is_file():
        raise UserError(f"no block selected: '{path}' not found; run select_block.py --config ... first, "
                        "or pass --block NAME")
    try:
        selection = BlockSelection.read(path)
    except ValueError:
        raise UserError(f"'{path}' is not a valid block selection; rerun select_block.py") from None
    made_for, selected = selection.checkpoint, selection.selected
    if checkpoint is not None and made_for and not _same_file(made_for, checkpoint):
        warnings.warn(f"{path} was made for checkpoint '{made_for}', not '{checkpoint}'; rerun select_block.py "
                      "for this checkpoint, or pass --block", stacklevel=2)
    if selected.name not in dict(model.named_modules()):
        raise UserError(f"'{path}' selects '{selected.name}', which is not a block of {cfg.arch}; "
                        "rerun select_block.py for this checkpoint")
    return SelectedBlock(selected.name, selected.index, source="block_selection.json")


def run_evaluation(cfg: Config, checkpoint: str | None = None, methods: str | None = None, block: str | None = None,
                   ood_specs: Sequence[str] = (), save_scores: bool = False, all_blocks: bool = False,
                   progress: bool = True) -> Evaluation:
    """eval_ood.py: load the run's model and data, :func:`evaluate_scores`, and write the results (rank 0)."""
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
        blocks = list(cfg.blocks or candidate_blocks(model))
        fit_status = fit_with_cache(cfg, model, built, weights, lambda: _fit_batches(cfg, device),
                                    amp, progress, info.is_main, blocks=blocks)
        ood_loaders = {source.name: open_ood(source, cfg, device) for source in live}
        conversions = {name: batches.conversion for name, batches in ood_loaders.items() if batches.conversion}
        if info.is_main:
            for name, conversion in conversions.items():
                print(f"OOD set '{name}': {conversion} for the {cfg.channels}-channel model", file=sys.stderr)
        test_split = load_split(cfg, train=False)
        try:
            evaluation = evaluate_scores(model, split_batches(cfg, test_split, device), ood_loaders,
                                         list(built.values()), block=selected.name if selected else None,
                                         all_blocks=all_blocks, blocks=blocks,
                                         amp=amp, cfg=cfg, fitted=fit_status, progress=show)
        except NoOODImages as err:
            skipped.update({name: "no readable images" for name in err.names})
            raise UserError("no OOD image could be read (skipped "
                            f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())}); check the OOD folders") from None
        id_kind = resolve_id_dataset(cfg)[0] if cfg.id_dataset else None
        # listed ID test images left out (missing or not images) count under the ID set's name
        unreadable = {id_kind: len(test_split.unreadable)} if test_split.unreadable else {}
        unreadable.update({name: len(result.unreadable) for name, result in evaluation.ood_scores.items()})
        for name in [name for name, result in evaluation.ood_scores.items() if result.count == 0]:
            skipped[name] = "no readable images"
            del evaluation.ood_scores[name]
        entry = benchmark_entry(cfg.benchmark, id_kind or "imagefolder")  # its groups and table layout
        evaluation.assemble(id_dataset=id_kind, arch=cfg.arch, checkpoint=weights.description, seed=cfg.seed,
                            block=selected, skipped=skipped, unreadable=unreadable,
                            conversions={k: v for k, v in conversions.items() if k in evaluation.ood_scores},
                            benchmark=cfg.benchmark, groups=entry.groups, table_metrics=entry.table_metrics)
        if info.is_main:
            evaluation.written = write_outputs(cfg, evaluation, selected, save_scores, all_blocks)
        return evaluation
    finally:
        shutdown_distributed()


def _fit_batches(cfg: Config, device: torch.device) -> ImageBatches:
    """The ID-train images the fitted methods read: all, or a seeded subsample (``fit_samples``; ImageNet: 1%)."""
    split = load_split(cfg, train=True)
    count = train_subsample_size(cfg, "fit", len(split))
    subset = None if count is None else seeded_subsample(len(split), count, FIT_SUBSAMPLE_SEED)
    return split_batches(cfg, split, device, subset)


def _live_ood_sources(cfg: Config, ood_specs: Sequence[str]) -> tuple[list, dict[str, str]]:
    """The OOD sources that exist, and ``{name: reason}`` for those skipped (each reported on stderr)."""
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


def write_outputs(cfg: Config, evaluation: Evaluation, selected: SelectedBlock | None, save_scores: bool,
                  all_blocks: bool) -> list[Path]:
    """Write the JSON/Markdown/CSV results, optionally the scores, and the plots; return the paths."""
    save_dir = cfg.save_dir
    results, id_scores, ood_scores = evaluation.results, evaluation.id_scores, evaluation.ood_scores
    written = list(report.write_ood_results(results, save_dir).values())
    if save_scores:
        arrays = {f"{m}.id": v.numpy() for m, v in id_scores.scores.items()}
        for set_name, result in ood_scores.items():
            arrays.update({f"{m}.{set_name}": v.numpy() for m, v in result.scores.items()})
        written.append(report.write_scores_npz(arrays, save_dir / "scores.npz"))
    if selected and selected.name in id_scores.block_norms:
        block = selected.name
        written.append(plots.plot_feature_norm_hist(
            id_scores.block_norms[block].numpy(), {s: r.block_norms[block].numpy() for s, r in ood_scores.items()},
            block, save_dir / "feature_norm_hist.png"))
    selection = save_dir / "block_selection.json"
    if all_blocks and selection.is_file():
        chosen = BlockSelection.read(selection)
        written.append(plots.plot_norm_ratio_vs_auroc(
            chosen.rows, results["per_block"], save_dir / "norm_ratio_vs_auroc.png", selected=chosen.selected))
    return written
