"""GPU evidence in one command: every CUDA path of featurenorm, run once, checked and timed.

``bash scripts/gpu_check.sh [--out DIR] [--device cuda|cpu] [--tiny]`` needs no data set. It
makes synthetic CIFAR-shaped uint8 images on the device, writes them in real on-disk formats
(CIFAR-10 python batches for the ID set; SVHN's ``test_32x32.mat`` and a folder of PNGs for the
two OOD sets, half of the OOD images each), and runs the chain through the library functions that
``train.py``, ``select_block.py`` and ``eval_ood.py`` call. Five steps, each checked and timed on
its own, so that a failing step does not stop the others:

1. ``train``: two epochs of :func:`featurenorm.training.loop.train` with the recipe's execution settings
   (device-resident loader, bf16 autocast, channels_last and ``torch.compile`` on CUDA).
2. ``torchrun``: one epoch of ``train.py`` under ``torchrun --nproc_per_node=1`` (NCCL on CUDA,
   gloo on CPU); the checkpoint loads and reproduces the logged test accuracy; then
   ``train(resume=True)`` (what ``train.py --resume`` calls, here in the check's own process, which
   spares a second torchrun start) trains epoch 2 from it.
3. ``select_block``: :func:`featurenorm.runs.select.run_selection` on ``selection_images`` training
   images, against a bare forward pass over as many images, plus the benchmark's
   ``selection_vs_forward``.
4. ``eval_ood``: :func:`featurenorm.runs.evaluate.run_evaluation` with every method on the ID test
   set and both OOD sets, plus the benchmark's ``eval_scoring_vs_forward``.
5. ``bf16``: FeatureNorm of every block under bf16 autocast against fp32, on one test batch.

A step passes when it ran without error and its named checks hold (correct counts, finite values,
epochs, backend). Speed targets are reported beside the figures, never as a pass condition.
Everything lands in ``<out>/gpu_check.json`` (see :func:`run_check`); :func:`format_table` prints it.

Modules: ``context`` (sizes, the shared context, the peak table), ``data`` (the synthetic data and
its writers), ``steps`` (the five steps), ``run`` (the whole check, the table, the command line).
"""
from __future__ import annotations

from .context import (ACCURACY_TOLERANCE, BF16_TOLERANCE, CLASS_COLOURS, FULL, ID_NOISE_STD, IMAGE_SIZE, NUM_CLASSES,
                      PEAK_BF16_TFLOPS, REPO, SCHEMA, STEPS, TINY, CheckContext, Peak, Sizes, StepResult,
                      flops_per_image, peak_bf16, peak_for_name)
from .data import (make_data, synthetic_id_images, synthetic_ood_images, write_cifar10, write_png_folder,
                   write_svhn_test)
from .run import base_config, format_table, machine_info, main, resolve_check_device, run_check, run_step, step_summary
from .steps import (STEP_FUNCTIONS, relative_difference, step_bf16, step_eval_ood, step_select_block, step_torchrun,
                    step_train)

__all__ = [
    "ACCURACY_TOLERANCE", "BF16_TOLERANCE", "CLASS_COLOURS", "FULL", "ID_NOISE_STD", "IMAGE_SIZE", "NUM_CLASSES",
    "PEAK_BF16_TFLOPS", "REPO", "SCHEMA", "STEPS", "STEP_FUNCTIONS", "TINY", "CheckContext", "Peak", "Sizes",
    "StepResult", "base_config", "flops_per_image", "format_table", "machine_info", "main", "make_data",
    "peak_bf16", "peak_for_name", "relative_difference", "resolve_check_device", "run_check", "run_step",
    "step_bf16", "step_eval_ood", "step_select_block", "step_summary", "step_torchrun", "step_train",
    "synthetic_id_images", "synthetic_ood_images", "write_cifar10", "write_png_folder", "write_svhn_test",
]
