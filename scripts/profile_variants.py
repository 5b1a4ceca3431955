#!/usr/bin/env python
"""How norm_profile's form was chosen: variants of a FeatureNorm over every block, on the study's development models.

    .venv/bin/python scripts/profile_variants.py RUN... --ood NAME=PATH ... [--fit-samples 5000] [--out FILE.md]

For each run folder (a trained model with its config.json), every candidate block's FeatureNorm is read on a
seeded subsample of the ID training set (the fit), the ID test set, the config's OOD sets and the --ood folders.
Each variant is fitted on the ID-train norms only and scored by its average AUROC over the OOD sets; the gap is
points short of the best single block in hindsight (negative: better than it). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import numpy as np
import torch

from featurenorm.config import load_config
from featurenorm.core.blocks import candidate_blocks
from featurenorm.core.metrics import ood_metrics
from featurenorm.data.batches import split_batches
from featurenorm.data.datasets import resolve_id_dataset, seeded_subsample
from featurenorm.data.ood import check_ood_source, open_ood, resolve_ood_sources
from featurenorm.data.splits import load_split
from featurenorm.errors import run_cli
from featurenorm.evaluation.scoring import Scorer, score_dataset
from featurenorm.methods.norm_profile import norm_profile_score, profile_mean_and_precision
from featurenorm.reporting.summary import mean_std
from featurenorm.training.checkpoint import load_run_model

Score = Callable[[np.ndarray], np.ndarray]


def _log(norms: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(norms, 1e-30))


def _mahalanobis(profiles: np.ndarray, covariance: np.ndarray) -> Score:
    mean, precision = profiles.mean(0), np.linalg.pinv(covariance)
    return lambda p: -np.einsum("ij,jk,ik->i", p - mean, precision, p - mean)


def _norm_profile(train: np.ndarray) -> Score:
    """The shipped method itself (featurenorm.methods.norm_profile), fitted on ``train``."""
    mean, precision = profile_mean_and_precision(torch.from_numpy(train))
    return lambda x: norm_profile_score(torch.from_numpy(x), mean, precision).numpy()


def _zscores(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean, std = _log(train).mean(0), _log(train).std(0) + 1e-12
    return lambda x: (_log(x) - mean) / std


# variant -> (fit on ID-train norms (N, K)) -> score of norms (B, K), higher = more ID
VARIANTS: dict[str, Callable[[np.ndarray], Score]] = {
    "log norms, full covariance (norm_profile)": lambda t: _norm_profile(t),
    "norms, full covariance": lambda t: _mahalanobis(t, np.cov(t, rowvar=False, bias=True)),
    "log norms, diagonal covariance": lambda t: (lambda z: lambda x: -(z(x) ** 2).sum(1))(_zscores(t)),
    "mean z-score of the log norms (one-sided)": lambda t: (lambda z: lambda x: z(x).mean(1))(_zscores(t)),
    "smallest z-score of the log norms (one-sided)": lambda t: (lambda z: lambda x: z(x).min(1))(_zscores(t)),
}


def block_norms(run: str, specs: list[str], fit_samples: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """ID-train (subsample), ID-test and per-OOD-set FeatureNorms (N, K) of every candidate block of a run."""
    cfg = load_config(f"{run}/config.json", [])
    device = torch.device("cpu")
    model, _ = load_run_model(cfg, None, device)
    blocks = list(cfg.blocks or candidate_blocks(model))
    scorer = Scorer(model.eval(), {}, None, blocks, None)

    def norms(batches, desc: str) -> np.ndarray:
        result = score_dataset(scorer, batches, desc, False)
        return np.stack([result.block_norms[b].numpy() for b in blocks], 1).astype(np.float64)

    train = load_split(cfg, train=True)
    fit = norms(split_batches(cfg, train, device, seeded_subsample(len(train), min(fit_samples, len(train)), 0)),
                "fit")
    test = norms(split_batches(cfg, load_split(cfg, train=False), device), "ID test")
    sources, _ = resolve_ood_sources(cfg, specs, resolve_id_dataset(cfg)[0])
    ood = {s.name: norms(open_ood(s, cfg, device), s.name) for s in sources if not check_ood_source(s)}
    return fit, test, ood


def gaps(fit: np.ndarray, test: np.ndarray, ood: dict[str, np.ndarray]) -> dict[str, float]:
    """Variant -> points short of the best single block (average AUROC over the OOD sets)."""
    def average(score: Score) -> float:
        return 100.0 * float(np.mean([ood_metrics(score(test), score(o))["auroc"] for o in ood.values()]))

    best = max(average(lambda x, k=k: x[:, k]) for k in range(fit.shape[1]))
    return {name: best - average(make(fit)) for name, make in VARIANTS.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the development models)")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=PATH", help="extra OOD folder")
    parser.add_argument("--fit-samples", type=int, default=5000, help="ID-train images fitted on (default 5000)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    found = []
    for run in args.runs:
        found.append(gaps(*block_norms(run, args.ood, args.fit_samples)))
        print(run, {name: round(gap, 2) for name, gap in found[-1].items()}, file=sys.stderr, flush=True)
    lines = [f"| variant (fitted on {args.fit_samples} ID-train images) | gap, mean ± std over {len(found)} models "
             "(points) | worst |", "|---|---:|---:|"]
    for name in VARIANTS:
        values = [row[name] for row in found]
        stat = mean_std(values)
        lines.append(f"| {name} | {stat.mean:.2f} ± {stat.std:.2f} | {max(values):.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
