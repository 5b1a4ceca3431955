"""scripts/gpu_check.sh: the tiny CPU run end to end, and the pieces its figures rest on.

The end-to-end test runs the real command once (``--tiny --device cpu``) and checks every figure
that issue 15 names against the tiny sizes and against numbers worked out here by hand.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featurenorm import gpu_check
from featurenorm.gpu_check import TINY, relative_difference

pytestmark = pytest.mark.integration  # runs scripts/gpu_check.sh end to end (about 25 s)

REPO = Path(__file__).resolve().parents[2]
TINY_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def resnet18_cifar_flops(width: float, num_classes: int = 10) -> tuple[int, int]:
    """Forward FLOPs per 32x32 image of the CIFAR ResNet-18 (2 per multiply-add, convolutions and
    the head only), and the 3x3 stem's share, from the layer shapes (He et al., 2016)."""
    c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
    stem = 2 * 3 * c1 * 9 * 32 * 32
    total = stem + 4 * (2 * c1 * c1 * 9 * 32 * 32)  # layer1: two blocks of two 3x3 convs at 32x32
    for previous, channels, side in ((c1, c2, 16), (c2, c3, 8), (c3, c4, 4)):
        total += 2 * previous * channels * 9 * side * side      # the strided 3x3 conv
        total += 3 * (2 * channels * channels * 9 * side * side)  # the other three 3x3 convs
        total += 2 * previous * channels * side * side          # the 1x1 shortcut
    total += 2 * c4 * num_classes
    return total, stem


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """``bash scripts/gpu_check.sh --tiny --device cpu --peak-tflops 2`` once: (process, report, out folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--tiny", "--device", "cpu", "--out", str(out),
                           "--peak-tflops", "2", "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    report = json.loads((out / "gpu_check.json").read_text())
    return done, report, out


def test_tiny_run_passes_every_step_and_prints_the_table(tiny_run):
    done, report, _ = tiny_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["passed"] is True and report["mode"] == "tiny"
    assert list(report["steps"]) == ["train", "torchrun", "select_block", "eval_ood", "bf16"]
    for name, step in report["steps"].items():
        assert step["passed"] and step["error"] is None and all(step["checks"].values()), (name, step)
        assert step["seconds"] > 0
        assert any(line.startswith(f"{name} ") and " pass " in line for line in done.stdout.splitlines()), name
    assert "all steps passed" in done.stdout


def test_tiny_run_records_the_machine_and_the_settings_used(tiny_run):
    _, report, out = tiny_run
    machine, settings = report["machine"], report["settings"]
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__
    assert machine["torch_cuda"] == torch.version.cuda
    assert report["peak_bf16"] == {"tflops": 2.0, "source": "--peak-tflops"}
    assert (settings["width"], settings["batch_size"], settings["loader"], settings["channels_last"]) == \
        (TINY.width, TINY.batch_size, "gpu", False)  # channels_last is a CUDA default only
    assert settings["compile"] is False and settings["amp_used"] == "fp32"  # CPU: no inductor, no autocast
    assert report["data"]["train_images"] == TINY.train_images and report["data"]["test_images"] == TINY.test_images
    assert report["data"]["ood_images"] == {"svhn": TINY.ood_images // 2, "textures": TINY.ood_images // 2}
    assert json.loads((out / "gpu_check_config.json").read_text())["selection_samples"] == TINY.selection_images


def test_training_figures_follow_from_the_log_and_the_layer_shapes(tiny_run):
    _, report, out = tiny_run
    f = report["steps"]["train"]["figures"]
    log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    assert f["epoch_seconds"] == [entry["seconds"] for entry in log] and len(log) == 2
    first, steady = f["epoch_seconds"]
    assert f["steady_epoch_seconds"] == steady
    assert f["compile_seconds"] == pytest.approx(max(first - steady, 0.0), abs=1e-3)
    assert f["images_per_s"] == pytest.approx(TINY.train_images / steady, abs=0.1)
    forward, stem = resnet18_cifar_flops(TINY.width)
    # backward costs two forwards, except that the stem needs no gradient for its input
    assert f["flops_per_image"] == {"forward": forward, "train_step": 3 * forward - stem}
    assert f["achieved_tflops"] == pytest.approx((3 * forward - stem) * TINY.train_images / steady / 1e12, rel=1e-9)
    assert f["peak_memory_mib"] is None  # no CUDA memory to report on a CPU
    assert f["peak_fraction"] == pytest.approx(f["achieved_tflops"] / 2.0, rel=1e-9)
    assert f["settings_used"] == {"loader": "gpu", "amp": "fp32", "channels_last": False, "compile": False,
                                  "batch_size": TINY.batch_size, "width": TINY.width, "arch": "resnet18"}
    assert all(math.isfinite(loss) for loss in f["train_loss"])


def test_torchrun_joins_gloo_and_the_checkpoint_reloads_and_resumes(tiny_run):
    _, report, out = tiny_run
    f = report["steps"]["torchrun"]["figures"]
    assert (f["backend"], f["world_size"]) == ("gloo", 1)
    assert (f["checkpoint_epoch_after_first_run"], f["checkpoint_epoch_after_resume"]) == (1, 2)
    assert f["logged_epochs"] == [1, 2]
    assert f["reloaded_test_acc"] == f["logged_test_acc"]  # fp32 on the CPU: the same predictions
    assert (out / "torchrun" / "last.pt").is_file()


def test_selection_and_evaluation_scored_the_tiny_sizes(tiny_run):
    _, report, _ = tiny_run
    select = report["steps"]["select_block"]["figures"]
    assert select["num_samples"] == TINY.selection_images
    assert select["images_through_network"] == 2 * TINY.selection_images
    assert select["images_per_s"] == pytest.approx(2 * TINY.selection_images / select["seconds"], rel=1e-3)
    ratio = select["images_per_s"] / select["bare_forward_images_per_s"]
    assert select["end_to_end_vs_forward"] == pytest.approx(ratio, rel=1e-3)
    assert select["selected"] in TINY_BLOCKS
    evaluation = report["steps"]["eval_ood"]["figures"]
    from featurenorm.methods import method_names

    assert evaluation["methods"] == method_names()
    assert evaluation["num_id"] == TINY.test_images
    assert evaluation["num_ood"] == {"svhn": TINY.ood_images // 2, "textures": TINY.ood_images // 2}
    assert evaluation["images_per_s"] == pytest.approx((TINY.test_images + TINY.ood_images) / evaluation["seconds"],
                                                       rel=1e-3)
    assert evaluation["block"] == select["selected"]  # eval read step 3's block_selection.json
    for figure, goal in ((select["benchmark_selection_vs_forward"], 0.85),
                         (evaluation["benchmark_eval_scoring_vs_forward"], 0.90)):
        assert figure["settings"] == {"width": TINY.width, "batch_size": 32, "repeats": 3, "steps": 1}
        assert figure["ratio"] > 0 and figure["met"] == (figure["ratio"] >= goal)


def test_bf16_changes_the_norms_but_less_than_the_tolerance(tiny_run):
    _, report, _ = tiny_run
    f = report["steps"]["bf16"]["figures"]
    assert list(f["per_block"]) == TINY_BLOCKS
    assert f["largest_relative_difference"] == max(f["per_block"].values())
    # exactly 0 would mean that autocast never ran in bf16
    assert 0 < f["largest_relative_difference"] < f["tolerance"] == gpu_check.BF16_TOLERANCE
    assert f["batch_images"] == TINY.eval_batch_size


# ----------------------------------------------------------------------------- the pieces, in-process
def test_relative_difference_is_in_units_of_the_mean_reference():
    # |1.1 - 1.0| = 0.1 and |2.0 - 3.0| = 1.0; mean |reference| = 2.0
    assert relative_difference(torch.tensor([1.1, 2.0]), torch.tensor([1.0, 3.0])) == pytest.approx(0.5)
    # a reference of 0 on one image does not blow it up
    assert relative_difference(torch.tensor([0.01, 4.0]), torch.tensor([0.0, 4.0])) == pytest.approx(0.005)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0),
    ("NVIDIA L40", None), ("NVIDIA A10G", None), ("Tesla T4", None),
])
def test_peak_table_matches_whole_model_names(name, tflops):
    peak = gpu_check.peak_for_name(name)
    assert (peak.tflops if peak else None) == tflops


def test_peak_tflops_flag_wins_and_cpus_have_no_peak():
    assert gpu_check.peak_bf16(torch.device("cpu"), None) is None
    assert gpu_check.peak_bf16(torch.device("cpu"), 100.0) == gpu_check.Peak(100.0, "--peak-tflops")


def test_written_data_reads_back_through_the_real_readers(tmp_path):
    from featurenorm.config import load_config
    from featurenorm.data.splits import load_split
    from featurenorm.data.ood import load_svhn_test

    generator = torch.Generator().manual_seed(0)
    train_images, train_labels = gpu_check.synthetic_id_images(7, generator, torch.device("cpu"))
    test_images, test_labels = gpu_check.synthetic_id_images(3, generator, torch.device("cpu"))
    ood = gpu_check.synthetic_ood_images(4, "uniform", generator, torch.device("cpu"))
    gpu_check.write_cifar10(tmp_path / "cifar10", train_images.numpy(), train_labels.numpy(), test_images.numpy(),
                            test_labels.numpy())
    gpu_check.write_svhn_test(tmp_path / "svhn", ood.numpy())
    cfg = load_config(None, base={"id_dataset": str(tmp_path / "cifar10"), "save_path": str(tmp_path / "run")})
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert train.name == "cifar10"
    assert torch.equal(train.images, train_images) and torch.equal(train.labels, train_labels)
    assert torch.equal(test.images, test_images) and torch.equal(test.labels, test_labels)
    assert torch.equal(load_svhn_test(tmp_path / "svhn"), ood)
    # each class is its colour plus noise of std 32: the channel means sit near the colour
    means = train_images.double().mean(dim=(2, 3))
    colours = torch.tensor(gpu_check.CLASS_COLOURS, dtype=torch.float64)[train_labels]
    assert (means - colours).abs().max() < 8


def test_a_failing_step_is_recorded_and_makes_the_command_exit_1(monkeypatch, capsys):
    def boom(ctx, result):
        raise RuntimeError("no GPU left")

    def half(ctx, result):
        result.figures["x"] = 1
        result.checks = {"holds": True, "fails": False}

    monkeypatch.setitem(gpu_check.STEP_FUNCTIONS, "train", boom)
    monkeypatch.setitem(gpu_check.STEP_FUNCTIONS, "bf16", half)
    ctx = gpu_check.CheckContext(Path("."), torch.device("cpu"), TINY, False, None, False, {})
    crashed, failed = gpu_check.run_step("train", ctx), gpu_check.run_step("bf16", ctx)
    assert (crashed.passed, crashed.error) == (False, "RuntimeError: no GPU left") and "boom" in crashed.traceback
    assert (failed.passed, failed.error, failed.figures) == (False, "failed checks: fails", {"x": 1})

    fake = {"mode": "tiny", "passed": False, "seconds": 1.0, "peak_bf16": None,
            "machine": {"name": "cpu", "device": "cpu", "torch": "x", "torch_cuda": None},
            "steps": {"train": {"passed": False, "seconds": 0.5, "error": "RuntimeError: no GPU left", "figures": {}},
                      "bf16": {"passed": True, "seconds": 0.5, "error": None, "figures": {}}}}
    monkeypatch.setattr(gpu_check.run, "run_check", lambda *args, **kwargs: fake)  # where main looks it up
    assert gpu_check.main(["--tiny", "--device", "cpu"]) == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "error: RuntimeError: no GPU left" in printed and "SOME STEPS FAILED" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_one_line_error(capsys):
    from featurenorm.errors import run_cli

    assert run_cli(gpu_check.main, ["--device", "cuda", "--out", "unused"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --device cuda: CUDA is not available")
