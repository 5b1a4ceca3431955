"""select_block.py's run: NormRatio of every block of the config's model on its ID training images; writes
``block_selection.json`` and the plot (rank 0)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.blocks import candidate_blocks
from ..data.batches import split_batches
from ..data.datasets import train_subsample_size
from ..data.splits import load_split
from ..errors import UserError, reported
from ..files import write_json
from ..runtime import amp_dtype, init_distributed, shutdown_distributed
from ..selection.api import BlockSelection, check_options, check_pseudo_ood, emit_warnings
from ..selection.collect import check_finite_norms, collect_sharded_norms
from ..selection.jigsaw import sample_permutations
from ..training.checkpoint import load_run_model

def run_selection(cfg, checkpoint: str | None = None, num_samples: int | None = None, grid: int | None = None,
                  seed: int | None = None, criterion: str | None = None, progress: bool = True,
                  pseudo_ood: str | Sequence[str] | None = None) -> BlockSelection:
    """select_block.py: NormRatio of every block on the ID training images; writes the JSON and the plot.

    The puzzle permutations are drawn once for the seeded subsample, so that the result does not depend
    on batching or on torchrun sharding. ``pseudo_ood`` (default: the config's ``pseudo_ood``) adds other
    kinds, each measured in the same forward pass. Without ``num_samples`` (and config ``selection_samples``)
    every training image is used, except for data sets with a default subsample (ImageNet: 10,000 images, see
    :data:`featurenorm.data.datasets.TRAIN_SUBSAMPLES`). Returns the selection on every rank; rank 0 writes and
    reports weak or conflicting evidence with ``warnings.warn``.
    """
    grid = grid if grid is not None else cfg.jigsaw_grid
    seed = seed if seed is not None else cfg.seed
    criterion = criterion or cfg.criterion
    num_samples = num_samples if num_samples is not None else cfg.selection_samples
    with reported(ValueError):
        check_options(criterion, grid, num_samples, flags=True)
    try:
        kinds = check_pseudo_ood(pseudo_ood if pseudo_ood is not None else cfg.pseudo_ood, criterion)
    except ValueError as err:
        raise UserError(f"--pseudo-ood / pseudo_ood: {err}") from None
    info, device = init_distributed(cfg)
    try:
        model, weights = load_run_model(cfg, checkpoint, device)
        blocks = list(cfg.blocks or candidate_blocks(model))
        split = load_split(cfg, train=True)
        total = len(split)
        if num_samples is None:
            num_samples = train_subsample_size(cfg, "selection", total)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.arange(total)
        if num_samples is not None and num_samples < total:
            chosen = torch.randperm(total, generator=generator)[:num_samples].sort().values
        permutations = sample_permutations(len(chosen), cfg.image_size, cfg.image_size, grid, generator)
        batches = split_batches(cfg, split, device, subset=chosen)
        del split  # ImageNet's 1.3M training paths: the loader's workers need only the subsample's
        norms = collect_sharded_norms(model, batches, permutations, blocks, grid, amp_dtype(cfg, device),
                                      progress=progress and info.is_main, kinds=kinds, mean=cfg.mean, std=cfg.std,
                                      seed=seed, stream=info.rank)
        check_finite_norms(norms, weights.description)
        selection = BlockSelection.from_norms(norms, blocks, criterion, grid, seed, arch=cfg.arch,
                                              checkpoint=weights.description)
        if info.is_main:
            write_json(cfg.save_dir / "block_selection.json", selection.to_dict())
            selection.plot(cfg.save_dir / "norm_ratio.png")
            emit_warnings(selection)
        return selection
    finally:
        shutdown_distributed()
