"""eval_ood end to end on a tiny trained digits model, the shared pass, the early exit and the fit cache."""
from __future__ import annotations

import csv
import io as stdio
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from featurenorm.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from featurenorm.data.splits import load_split
from featurenorm.data.loaders import DeviceLoader
from featurenorm.errors import UserError
from featurenorm.runs.evaluate import run_evaluation
from featurenorm.core.tap import block_feature_norms
from featurenorm.methods import build_method
from featurenorm.core.metrics import ood_metrics
from featurenorm.evaluation.scoring import Scorer
from featurenorm.runs.select import run_selection

METHODS = "featurenorm,msp,energy,knn,mahalanobis,odin,energy_blocknorm"


def copy_run(run, tmp_path: Path, **overrides):
    """A writable copy of the session's trained run (last.pt only) and its config."""
    from dataclasses import replace

    shutil.copy(run.save_path / "last.pt", tmp_path / "last.pt")
    return replace(run.cfg, save_path=str(tmp_path), knn_k=5, **overrides)


def ood_folders(tmp_path: Path, make_png_folder) -> list[str]:
    specs = []
    for name, mode, seed in (("photos", "RGB", 1), ("gray", "L", 2)):
        make_png_folder(tmp_path / "ood" / name, 12, size=(20, 24), mode=mode, seed=seed)
        specs.append(f"{name}={tmp_path / 'ood' / name}")
    return specs


def write_random_pngs(folder: Path, n: int, size: tuple[int, int], mode: str, seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def evaluated(trained_digits_run, tmp_path_factory):
    """One full evaluation (selection first) shared by the assertions below."""
    root = tmp_path_factory.mktemp("evaluated")
    cfg = copy_run(trained_digits_run, root)
    run_selection(cfg, num_samples=64, progress=False)
    specs = []
    for name, mode, seed in (("photos", "RGB", 1), ("gray", "L", 2)):
        write_random_pngs(root / "ood" / name, 12, size=(20, 24), mode=mode, seed=seed)
        specs.append(f"{name}={root / 'ood' / name}")
    results = run_evaluation(cfg, methods=METHODS, ood_specs=specs, save_scores=True, all_blocks=True,
                             progress=False).results
    return cfg, results, specs


def test_json_csv_and_markdown_agree(evaluated):
    cfg, results, _ = evaluated
    saved = json.loads((cfg.save_dir / "ood_results.json").read_text())
    assert list(saved["methods"]) == METHODS.split(",")
    assert set(saved["methods"]["msp"]) == {"photos", "gray", "average"}
    rows = {r["method"]: r for r in csv.DictReader(stdio.StringIO((cfg.save_dir / "ood_results.csv").read_text()))}
    markdown = (cfg.save_dir / "ood_results.md").read_text()
    for method, per_set in saved["methods"].items():
        for set_name in ("photos", "gray", "average"):
            for metric in ("fpr95", "auroc"):
                percent = round(100 * per_set[set_name][metric], 2)
                assert float(rows[method][f"{set_name}_{metric}"]) == pytest.approx(percent, abs=1e-9)
        line = next(l for l in markdown.splitlines() if l.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert float(cells[0]) == pytest.approx(round(100 * per_set["photos"]["fpr95"], 2))
        assert float(cells[-1]) == pytest.approx(round(100 * per_set["average"]["auroc"], 2))


def test_npz_scores_reproduce_the_json_metrics(evaluated):
    cfg, _, _ = evaluated
    saved = json.loads((cfg.save_dir / "ood_results.json").read_text())
    scores = np.load(cfg.save_dir / "scores.npz")
    for method, per_set in saved["methods"].items():
        for set_name in ("photos", "gray"):
            metrics = ood_metrics(scores[f"{method}.id"], scores[f"{method}.{set_name}"])
            for key in ("fpr95", "auroc", "aupr_in", "aupr_out"):
                assert metrics[key] == pytest.approx(per_set[set_name][key], abs=1e-12)
            assert per_set[set_name]["num_ood"] == 12 == len(scores[f"{method}.{set_name}"])
        assert len(scores[f"{method}.id"]) == saved["num_id"] == 360


def test_featurenorm_scores_equal_block_feature_norms_at_the_selected_block(evaluated):
    cfg, results, _ = evaluated
    selection = json.loads((cfg.save_dir / "block_selection.json").read_text())
    assert results["block"]["name"] == selection["selected"]["name"]
    model, _ = load_checkpoint(cfg.save_dir / "last.pt")
    split = load_split(cfg, train=False)
    images = next(iter(DeviceLoader(split.images, split.labels, 10_000, train=False, mean=cfg.mean, std=cfg.std,
                                    device=torch.device("cpu"))))[0]
    expected = block_feature_norms(model, images, [results["block"]["name"]])[results["block"]["name"]]
    scores = np.load(cfg.save_dir / "scores.npz")["featurenorm.id"]
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        accuracy = int((model(images).argmax(1) == split.labels).sum()) / len(split.labels)
    assert results["id_accuracy"] == pytest.approx(accuracy, abs=1e-9)


def unrolled_block_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every residual block's output of the CIFAR ResNet-18, by calling its modules one after another."""
    outputs = {}
    with torch.inference_mode():
        out = torch.relu(model.bn1(model.conv1(images)))
        for stage in range(1, 5):
            for index, block in enumerate(getattr(model, f"layer{stage}")):
                out = block(out)
                outputs[f"layer{stage}.{index}"] = out
    return outputs


def pairwise_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + P(equal) / 2, over every pair."""
    greater = (positive[:, None] > negative[None, :]).mean()
    equal = (positive[:, None] == negative[None, :]).mean()
    return float(greater + equal / 2)


def test_all_blocks_analysis_equals_an_unrolled_computation(evaluated):
    """per_block: FeatureNorm (the paper's formula) of each block's output, from a forward pass unrolled by hand,
    against every OOD set, by the AUROC's definition."""
    from featurenorm.data.ood import open_ood, resolve_ood_sources

    cfg, results, specs = evaluated
    model, _ = load_checkpoint(cfg.save_dir / "last.pt")
    model.eval()
    assert list(results["per_block"]) == model.block_names

    def feature_norms(images: torch.Tensor) -> dict[str, np.ndarray]:
        # FN(z) = 1/C sum_c || ReLU(z_c) ||_2 over the spatial positions
        return {name: z.clamp_min(0).pow(2).sum(dim=(2, 3)).sqrt().mean(dim=1).double().numpy()
                for name, z in unrolled_block_outputs(model, images).items()}

    split = load_split(cfg, train=False)
    id_images = next(iter(DeviceLoader(split.images, split.labels, 10_000, train=False, mean=cfg.mean, std=cfg.std,
                                       device=torch.device("cpu"))))[0]
    id_norms = feature_norms(id_images)
    sources, _ = resolve_ood_sources(cfg, specs, "digits")
    for source in sources:
        ood_images = torch.cat([batch[0] if isinstance(batch, (tuple, list)) else batch
                                for batch in open_ood(source, cfg, "cpu")])
        ood_norms = feature_norms(ood_images)
        for block in model.block_names:
            expected = pairwise_auroc(id_norms[block], ood_norms[block])
            assert results["per_block"][block][source.name]["auroc"] == pytest.approx(expected, abs=1e-9), block
    for name in ("norm_ratio.png", "feature_norm_hist.png", "norm_ratio_vs_auroc.png"):
        assert (cfg.save_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_oracle_gap_names_the_best_block_in_hindsight(evaluated):
    cfg, results, _ = evaluated
    averages = {block: (per_set["photos"]["auroc"] + per_set["gray"]["auroc"]) / 2
                for block, per_set in results["per_block"].items()}
    best = max(averages.values())
    oracle = json.loads((cfg.save_dir / "ood_results.json").read_text())["oracle"]
    assert oracle["best_block"] == next(block for block, value in averages.items() if value == best)
    assert oracle["best_auroc"] == pytest.approx(best, abs=1e-12)
    assert oracle["selected_block"] == results["block"]["name"]
    assert oracle["selected_auroc"] == pytest.approx(averages[results["block"]["name"]], abs=1e-12)
    assert oracle["difference"] == pytest.approx(best - averages[results["block"]["name"]], abs=1e-12)


def test_one_forward_per_batch_for_all_one_pass_methods(trained_digits_run):
    model, cfg = load_checkpoint(trained_digits_run.save_path / "last.pt")
    names = ["featurenorm", "msp", "energy", "maxlogit", "ash", "energy_blocknorm", "msp_blocknorm"]
    methods = {n: build_method(n, cfg) for n in names}
    calls = []
    handle = model.conv1.register_forward_hook(lambda *a: calls.append(1))
    scorer = Scorer(model, methods, "layer3.0", ["layer3.0"], None, need_logits=True)
    scores, norms, logits = scorer.score_batch(torch.randn(5, 3, 32, 32))
    handle.remove()
    assert len(calls) == 1
    assert set(scores) == set(names) and all(v.shape == (5,) for v in scores.values())
    torch.testing.assert_close(scores["featurenorm"], norms["layer3.0"])
    torch.testing.assert_close(scores["maxlogit"], logits.max(1).values)


def test_featurenorm_alone_stops_after_the_selected_block(trained_digits_run):
    model, cfg = load_checkpoint(trained_digits_run.save_path / "last.pt")
    after = []
    model.layer4.register_forward_hook(lambda *a: after.append(1))
    model.head.register_forward_hook(lambda *a: after.append(1))
    scorer = Scorer(model, {"featurenorm": build_method("featurenorm", cfg)}, "layer3.1", ["layer3.1"], None,
                    need_logits=False)
    x = torch.randn(4, 3, 32, 32)
    scores, _, logits = scorer.score_batch(x)
    assert after == [] and logits is None
    torch.testing.assert_close(scores["featurenorm"], block_feature_norms(model, x, ["layer3.1"])["layer3.1"])


def test_featurenorm_without_a_selection_says_to_run_select_block(trained_digits_run, tmp_path, make_png_folder):
    cfg = copy_run(trained_digits_run, tmp_path)
    specs = ood_folders(tmp_path, make_png_folder)
    with pytest.raises(UserError, match="select_block.py"):
        run_evaluation(cfg, methods="featurenorm", ood_specs=specs, progress=False)
    # --block works without a selection, and featurenorm alone reports no accuracy (no logits)
    results = run_evaluation(cfg, methods="featurenorm", block="layer2.1", ood_specs=specs, progress=False).results
    assert results["block"] == {"name": "layer2.1", "index": 3, "source": "--block"}
    assert results["id_accuracy"] is None


def test_fit_cache_is_reused_invalidated_and_recovered(trained_digits_run, tmp_path, make_png_folder, capsys):
    cfg = copy_run(trained_digits_run, tmp_path)
    specs = ood_folders(tmp_path, make_png_folder)
    methods = "knn,mahalanobis,energy_react"
    first = run_evaluation(cfg, methods=methods, ood_specs=specs, progress=False).results
    assert first["fit"] == {"knn": "fitted", "mahalanobis": "fitted", "energy_react": "fitted"}
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    capsys.readouterr()

    second = run_evaluation(cfg, methods=methods, ood_specs=specs, progress=False).results
    assert second["fit"] == {"knn": "cached", "mahalanobis": "cached", "energy_react": "cached"}
    assert "reusing cached ID-train fits" in capsys.readouterr().err
    assert second["methods"] == first["methods"]

    # a corrupt cache file is recomputed, not trusted
    knn_file = next((tmp_path / "cache").glob("knn-*.pt"))
    knn_file.write_bytes(b"not a torch file")
    third = run_evaluation(cfg, methods=methods, ood_specs=specs, progress=False).results
    assert third["fit"]["knn"] == "fitted" and third["fit"]["mahalanobis"] == "cached"
    assert "unreadable" in capsys.readouterr().err
    assert third["methods"] == first["methods"]

    # a changed checkpoint invalidates every fit; so does a changed key (knn_k)
    state = read_checkpoint(tmp_path / "last.pt")
    state["model"]["head.bias"] = state["model"]["head.bias"] + 1.0
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in state.items() if k != "format"})
    fourth = run_evaluation(cfg, methods=methods, ood_specs=specs, progress=False).results
    assert set(fourth["fit"].values()) == {"fitted"}
    from dataclasses import replace
    fifth = run_evaluation(replace(cfg, knn_k=3), methods=methods, ood_specs=specs, progress=False).results
    assert fifth["fit"] == {"knn": "fitted", "mahalanobis": "cached", "energy_react": "cached"}


def test_all_blocks_and_block_follow_the_blocks_key(trained_digits_run, tmp_path, make_png_folder):
    from featurenorm.runs.evaluate import run_evaluation

    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "last.pt")
    make_png_folder(tmp_path / "ood", 6, size=(16, 16))
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path), blocks=["layer2.1", "layer3.1"])
    results = run_evaluation(cfg, methods="featurenorm", block="layer3.1", all_blocks=True,
                             ood_specs=[f"noise={tmp_path / 'ood'}"], progress=False).results
    assert list(results["per_block"]) == ["layer2.1", "layer3.1"]
    assert results["block"]["index"] == 1
    assert results["per_block"]["layer3.1"]["noise"] == {
        k: v for k, v in results["methods"]["featurenorm"]["noise"].items() if k != "num_ood"}


def test_a_selection_made_for_another_checkpoint_warns(trained_digits_run, tmp_path, make_png_folder):
    from featurenorm.runs.evaluate import run_evaluation
    from featurenorm.runs.select import run_selection

    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "last.pt")
    shutil.copy(trained_digits_run.save_path / "last.pt", tmp_path / "other.pt")
    make_png_folder(tmp_path / "ood", 6, size=(16, 16))
    cfg = replace(trained_digits_run.cfg, save_path=str(tmp_path))
    run_selection(cfg, num_samples=20, progress=False)
    specs = [f"noise={tmp_path / 'ood'}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_evaluation(cfg, methods="featurenorm", ood_specs=specs, progress=False)
        assert not [w for w in caught if "was made for checkpoint" in str(w.message)]
        run_evaluation(cfg, checkpoint=str(tmp_path / "other.pt"), methods="featurenorm", ood_specs=specs,
                       progress=False)
    assert [w for w in caught if "was made for checkpoint" in str(w.message)]
