#!/usr/bin/env python
"""Training-step throughput of the MNIST-family recipe under each speed option, side by side.

Measures one model (conf/fashion_mnist.json's arch, width, batch and image size, 1 channel) in
one process: contiguous vs channels_last memory, eager vs ``torch.compile``, and 1 vs all threads.
Prints images/s per option and the ratio to the default (contiguous, eager, all threads).

    .venv/bin/python scripts/speed_options.py [--config conf/fashion_mnist.json] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from featurenorm.config import load_config
from featurenorm.models import build_model


def throughput(cfg, channels_last: bool, compiled: bool, threads: int, steps: int) -> tuple[float, float]:
    """Median images/s of one training step, and the seconds of the 3 warm-up steps (the compile)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg.arch, 10, width=cfg.width, in_channels=cfg.channels).train()
    x = torch.randn(cfg.batch_size, cfg.channels, cfg.image_size, cfg.image_size)
    y = torch.randint(0, 10, (cfg.batch_size,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):  # warm-up (and the compile)
        step()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return cfg.batch_size / statistics.median(times), warmup


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/fashion_mnist.json")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    cores = torch.get_num_threads()
    options = {"default (contiguous, eager, %d threads)" % cores: (False, False, cores),
               "channels_last": (True, False, cores), "torch.compile": (False, True, cores),
               "1 thread": (False, False, 1)}
    rates, warmups = {}, {}
    for name, (channels_last, compiled, threads) in options.items():
        rates[name], warmups[name] = throughput(cfg, channels_last, compiled, threads, args.steps)
        print(f"{name:<40}{rates[name]:>8.0f} img/s  x{rates[name] / next(iter(rates.values())):.2f}"
              f"  (3 warm-up steps: {warmups[name]:.1f} s)", flush=True)
    print(json.dumps({"config": args.config, "arch": cfg.arch, "width": cfg.width, "batch_size": cfg.batch_size,
                      "image_size": cfg.image_size, "torch": torch.__version__, "images_per_s": rates,
                      "warmup_seconds": warmups}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
