"""ImageNet scale: torchvision classifiers as they are, the ImageNet layout, the imagenet_four benchmark.

The replica is an ImageNet-style folder (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) and the four
OOD folders of the paper's ImageNet protocol, with JPEGs at odd sizes and aspect ratios (and one
grayscale), small enough that an untrained torchvision model runs in about a second. Scores are
checked against a forward pass the test runs itself, with the preprocessing of torchvision's own
``Weights.transforms()``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurenorm.cli import eval_main, select_main
from featurenorm.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n01443537", "n01484850")
OOD_FOLDERS = {"inaturalist": "iNaturalist/images", "sun": "SUN/images", "places": "Places/images",
               "textures": "dtd/images"}
# The preprocessing overrides of the test configs: torchvision's 256/224 shrunk to 36/32.
RESIZE, CROP = 36, 32


def write_jpegs(folder: Path, count: int, seed: int, suffix: str = ".JPEG") -> None:
    """``count`` JPEGs of random smooth pixels, each of a different odd size (40-64 px a side); the third is grayscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        width, height = (int(v) for v in rng.integers(40, 65, 2))
        coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        (image.convert("L") if i == 2 else image).save(folder / f"img_{seed}_{i:03d}{suffix}", quality=90)


def write_replica(root: Path, scale: int = 1) -> dict[str, str]:
    """The ImageNet folder and the four OOD folders under ``root``; returns their config keys."""
    for c, wnid in enumerate(WNIDS):
        write_jpegs(root / "imagenet" / "train" / wnid, 6, seed=100 + c)
        write_jpegs(root / "imagenet" / "val" / wnid, 3 * scale, seed=200 + c)
    keys = {"id_dataset": str(root / "imagenet")}
    for o, (key, folder) in enumerate(OOD_FOLDERS.items()):
        # Textures (DTD) keeps its images in class folders: nested folders count
        target = root / "ood" / folder / ("banded" if key == "textures" else "")
        write_jpegs(target, 4 * scale, seed=300 + o, suffix=".jpg")
        keys[key] = str(root / "ood" / folder)
    (Path(keys["places"]) / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))  # cut short: skipped
    return keys


def imagenet_config(path: Path, arch: str, keys: dict[str, str], save_path: Path, **changes) -> Path:
    cfg = {"arch": arch, "pretrained": False, "benchmark": "imagenet_four", "image_size": CROP,
           "resize_size": RESIZE, "device": "cpu", "num_workers": 0, "eval_batch_size": 8,
           "save_path": str(save_path), "selection_samples": 10, "fit_samples": 12, "knn_k": 3, **keys, **changes}
    path.write_text(json.dumps(cfg))
    return path


# ------------------------------------------------------------------------- the independent computation
def sorted_images(folder: str | Path) -> list[Path]:
    """The readable JPEGs under ``folder``, nested folders included, in path order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.name != "broken.jpg")


def preprocess(paths, weights) -> torch.Tensor:
    """torchvision's own preprocessing of the weights, with the test's sizes. -> (N, 3, CROP, CROP)."""
    from PIL import Image

    transform = weights.transforms(crop_size=CROP, resize_size=RESIZE)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def forward_by_hand(model, images: torch.Tensor, block: str) -> dict[str, torch.Tensor]:
    """Logits, penultimate features (the head's input) and the block's FeatureNorm, read by the test's own hooks."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    kept = {}
    hooks = [dict(model.named_modules())[block].register_forward_hook(lambda m, i, o: kept.setdefault("z", o.clone())),
             head.register_forward_pre_hook(lambda m, i: kept.setdefault("f", i[0].clone()))]
    with torch.no_grad():
        logits = model(images)
    for hook in hooks:
        hook.remove()
    z = torch.relu(kept["z"].double())
    return {"logits": logits, "features": kept["f"], "featurenorm": z.pow(2).sum(dim=(2, 3)).sqrt().mean(dim=1)}


def knn_by_hand(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Minus the distance from each L2-normalized feature to its k-th nearest L2-normalized bank row."""
    distances = torch.cdist(F.normalize(features.double(), dim=1), F.normalize(bank.double(), dim=1))
    return -distances.sort(dim=1).values[:, k - 1]


def untrained(arch: str, seed: int = 0):
    """The model featurenorm builds for ``--checkpoint none``: torchvision's, after ``torch.manual_seed(seed)``."""
    from torchvision import models

    torch.manual_seed(seed)
    return models.get_model(arch, weights=None).eval(), models.get_model_weights(arch).DEFAULT


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_select_and_eval_on_untrained_torchvision_models_equal_a_forward_pass_by_hand(arch, tmp_path, capsys,
                                                                                     one_torch_thread):
    keys = write_replica(tmp_path)
    config = imagenet_config(tmp_path / "c.json", f"torchvision/{arch}", keys, tmp_path / "run",
                             num_workers=1 if arch == "resnet18" else 0)  # JPEGs decoded in a worker process
    common = ["--config", str(config), "--checkpoint", "none", "--no-progress"]
    assert run_cli(select_main, common) == 0
    assert run_cli(eval_main, [*common, "--methods", "featurenorm,msp,energy,knn", "--save-scores"]) == 0, \
        capsys.readouterr().err
    selection = json.loads((tmp_path / "run" / "block_selection.json").read_text())
    results = json.loads((tmp_path / "run" / "ood_results.json").read_text())
    scores = np.load(tmp_path / "run" / "scores.npz")
    model, weights = untrained(arch)

    # selection: 10 of the 18 training images, chosen by the seeded rule, preprocessed as torchvision does
    train = [p for wnid in WNIDS for p in sorted_images(Path(keys["id_dataset"]) / "train" / wnid)]
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:10].sort().values
    assert selection["num_samples"] == 10 and selection["checkpoint"] == "random init (seed 0)"
    images = preprocess([train[i] for i in chosen], weights)
    for row in selection["blocks"][::3]:
        expected = forward_by_hand(model, images, row["name"])["featurenorm"].mean()
        assert row["id_norm_mean"] == pytest.approx(float(expected), rel=1e-4)

    # evaluation: the ID test set is val/, the OOD sets the benchmark's four, in the paper's order
    block = selection["selected"]["name"]
    val = [p for wnid in WNIDS for p in sorted_images(Path(keys["id_dataset"]) / "val" / wnid)]
    labels = torch.arange(len(WNIDS)).repeat_interleave(3)
    fit = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:12].sort().values]
    bank = forward_by_hand(model, preprocess(fit, weights), block)["features"]
    assert results["id_dataset"] == "imagenet" and results["num_id"] == len(val)
    assert list(results["methods"]["featurenorm"]) == ["inaturalist", "sun", "places", "textures", "average"]
    assert results["unreadable"] == {"inaturalist": 0, "sun": 0, "places": 1, "textures": 0}
    for name, paths in [("id", val)] + [(key, sorted_images(keys[key])) for key in OOD_FOLDERS]:
        out = forward_by_hand(model, preprocess(paths, weights), block)
        expected = {"featurenorm": out["featurenorm"], "msp": out["logits"].softmax(1).max(1).values,
                    "energy": out["logits"].logsumexp(1), "knn": knn_by_hand(out["features"], bank, 3)}
        for method, values in expected.items():
            np.testing.assert_allclose(scores[f"{method}.{name}"], values.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{method} on {name}")
        if name == "id":
            accuracy = (out["logits"].argmax(1) == labels).double().mean()
            assert results["id_accuracy"] == pytest.approx(float(accuracy))


# ------------------------------------------------------------------------------------------- memory
def peak_rss_mib(run) -> float:
    """The peak RSS of this process while ``run()`` runs: Linux's high-water mark VmHWM, reset before (clear_refs 5)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    run()
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_eval_peak_memory_does_not_grow_with_a_ten_times_larger_replica(tmp_path, one_torch_thread):
    """Scored in this process (no new interpreter) with the peak RSS reset before each run. At 128 px an input
    image is 192 KiB, so keeping the 10x replica's 250 preprocessed images would add 48 MiB."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    configs = {}
    for scale in (1, 10):
        keys = write_replica(tmp_path / f"x{scale}", scale=scale)
        configs[scale] = imagenet_config(tmp_path / f"c{scale}.json", "torchvision/mobilenet_v3_small", keys,
                                         tmp_path / f"run{scale}", image_size=128, resize_size=146, eval_batch_size=4)

    def evaluate(scale: int) -> None:
        assert run_cli(eval_main, ["--config", str(configs[scale]), "--checkpoint", "none", "--no-progress",
                                   "--methods", "featurenorm,msp,energy", "--block", "features.6"]) == 0

    evaluate(1)  # first use: lazy imports and caches, which the measured runs then share
    peaks = {scale: peak_rss_mib(lambda: evaluate(scale)) for scale in (1, 10)}
    for scale in (1, 10):
        results = json.loads((tmp_path / f"run{scale}" / "ood_results.json").read_text())
        assert results["num_id"] == 9 * scale and results["methods"]["energy"]["sun"]["num_ood"] == 4 * scale
    # a one-time rise of up to ~10 MiB was seen on the first larger run; keeping the images would add 48 MiB
    assert peaks[10] - peaks[1] <= 24, peaks


# ------------------------------------------------------------------------------------ pretrained weights
def test_pretrained_weights_come_only_from_the_torch_hub_cache_unless_download_is_set(tmp_path, capsys, monkeypatch):
    import torch.hub
    from torchvision import models

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    keys = write_replica(tmp_path)
    config = imagenet_config(tmp_path / "c.json", "torchvision/mobilenet_v3_small", keys, tmp_path / "run",
                             pretrained=True, selection_samples=4)
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert run_cli(select_main, ["--config", str(config), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "error: pretrained weights MobileNet_V3_Small_Weights.IMAGENET1K_V1 are not in the torch hub cache: put "
        "mobilenet_v3_small-047dcff4.pth (from https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth) "
        f"in {folder}, or set download true to fetch them\n")

    # the file where the message says: read from there, offline, with no training and no checkpoint
    torch.manual_seed(1)
    cached = models.mobilenet_v3_small().state_dict()
    folder.mkdir(parents=True)
    torch.save(cached, folder / "mobilenet_v3_small-047dcff4.pth")
    assert run_cli(select_main, ["--config", str(config), "--no-progress"]) == 0, capsys.readouterr().err
    selection = json.loads((tmp_path / "run" / "block_selection.json").read_text())
    assert selection["checkpoint"] == str(folder / "mobilenet_v3_small-047dcff4.pth")
    model = models.mobilenet_v3_small().eval()
    model.load_state_dict(cached)
    weights = models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    train = [p for wnid in WNIDS for p in sorted_images(Path(keys["id_dataset"]) / "train" / wnid)]
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4].sort().values
    first = selection["blocks"][0]
    expected = forward_by_hand(model, preprocess([train[i] for i in chosen], weights), first["name"])["featurenorm"]
    assert first["id_norm_mean"] == pytest.approx(float(expected.mean()), rel=1e-4)


def test_weights_metadata_gives_the_preprocessing_unless_the_config_overrides_it(tmp_path):
    from featurenorm.config import load_config

    base = {"id_dataset": str(tmp_path), "save_path": str(tmp_path / "run"), "arch": "torchvision/resnet50"}
    # ResNet50_Weights.IMAGENET1K_V1.transforms(): resize 256, crop 224, ImageNet mean/std, bilinear
    v1 = load_config(None, base={**base, "weights": "IMAGENET1K_V1"})
    assert (v1.resize_size, v1.image_size, v1.interpolation) == (256, 224, "bilinear")
    assert v1.mean == [0.485, 0.456, 0.406] and v1.std == [0.229, 0.224, 0.225]
    assert load_config(None, base=base).resize_size == 232  # DEFAULT is IMAGENET1K_V2: resize 232
    # an image_size alone keeps the weights' resize/crop ratio: 64 * 256 / 224 = 73.1
    small = load_config(None, base={**base, "weights": "IMAGENET1K_V1", "image_size": 64, "std": [1, 1, 1]})
    assert (small.resize_size, small.image_size, small.std, small.mean) == (73, 64, [1, 1, 1], v1.mean)
    assert load_config(None, base={**base, "resize_size": 300}).resize_size == 300
    assert load_config(None, base={**base, "arch": "resnet18"}).resize_size is None  # our archs: as before
    from featurenorm.errors import ConfigError
    with pytest.raises(ConfigError, match="resnet50 has no weights 'IMAGENET1K_V3'; valid: IMAGENET1K_V1, IMAGENET1K_V2"):
        load_config(None, base={**base, "weights": "IMAGENET1K_V3"})


# ------------------------------------------------------------------------------------ layout and table
def test_imagenet_layout_is_recognised_and_needs_its_benchmark(tmp_path, capsys):
    from featurenorm.config import load_config
    from featurenorm.data.datasets import resolve_id_dataset
    from featurenorm.data.splits import load_split
    from featurenorm.data.ood import resolve_ood_sources

    keys = write_replica(tmp_path)
    cfg = load_config(imagenet_config(tmp_path / "c.json", "torchvision/resnet18", keys, tmp_path / "run"))
    assert resolve_id_dataset(cfg)[0] == "imagenet"
    val = load_split(cfg, train=False)
    assert val.classes == list(WNIDS) and val.folder == Path(keys["id_dataset"]) / "val" and len(val) == 9
    sources, skipped = resolve_ood_sources(cfg, [], "imagenet")
    assert [(s.name, s.path) for s in sources] == [(k, Path(keys[k])) for k in ("inaturalist", "sun", "places",
                                                                               "textures")] and not skipped
    config = imagenet_config(tmp_path / "p.json", "torchvision/resnet18", keys, tmp_path / "run", benchmark="paper")
    assert run_cli(eval_main, ["--config", str(config), "--checkpoint", "none", "--methods", "msp"]) == 2
    assert capsys.readouterr().err == ("error: benchmark 'paper' has no ID dataset 'imagenet'; it defines cifar10, "
                                       "cifar100, digits, imagefolder, fashion_mnist, mnist: set id_dataset to one of them, or set benchmark "
                                       "to imagenet_four or openood_v1.5\n")


def test_a_random_init_is_scored_only_when_asked(tmp_path, capsys):
    keys = write_replica(tmp_path)
    config = imagenet_config(tmp_path / "c.json", "torchvision/resnet18", keys, tmp_path / "run")
    assert run_cli(select_main, ["--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint '{tmp_path / 'run' / 'last.pt'}' not found; train first (python train.py --config ...), "
        "pass --checkpoint PATH, set pretrained true for torchvision/timm weights, or pass --checkpoint none to score "
        "the randomly initialised model\n")


# ------------------------------------------------------------------------------- the paper's blocks
def test_the_papers_imagenet_blocks_in_torchvision_names():
    from torchvision import models

    from featurenorm.core.blocks import candidate_blocks
    from featurenorm.reporting.paper import IMAGENET_BLOCKS, compare_with_paper, format_comparison, load_paper_results

    words = load_paper_results()["imagenet_selected_blocks"]
    for arch, (key, block, index, count) in IMAGENET_BLOCKS.items():
        with torch.device("meta"):  # shapes only: no weights are allocated
            model = models.get_model(arch.split("/")[1]).eval()
            blocks = candidate_blocks(model)
            shape = {}
            dict(model.named_modules())[block].register_forward_hook(lambda m, i, o: shape.update(z=o.shape))
            model(torch.zeros(1, 3, 224, 224))
        assert (len(blocks), blocks.index(block)) == (count, index)
        # the paper's words: "layer4.1 (2048x7x7)", "13th conv layer (512x14x14)", "block 17 (960x7x7)"
        assert words[key].endswith("({}x{}x{})".format(*shape["z"][1:])), (words[key], shape["z"])
    assert words["vgg16"].startswith("13th") and words["mobilenetv3"].startswith("block 17")

    results = {"arch": "torchvision/resnet50", "id_dataset": "imagenet", "methods": {},
               "block": {"name": "layer4.2", "index": 15}}
    text = format_comparison(compare_with_paper(results))
    assert text.splitlines()[-1] == ("selected block: ours layer4.2 (index 15); paper index 14 of 16 "
                                     "(layer4.1 (2048x7x7)): differs by +1 block(s)")
    assert "ImageNet-1K" in text.splitlines()[0]


def test_reproduce_imagenet_dry_run_prints_the_chain():
    out = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_imagenet.sh"), "resnet50", "--dry-run"],
                         capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    py = ".venv/bin/python" if (REPO / ".venv/bin/python").exists() else "python"
    conf, run = "conf/imagenet_resnet50.json", "runs/imagenet_resnet50"
    assert out.stdout.splitlines() == [
        f"+ {py} select_block.py --config {conf} --set save_path={run} --set download=true",
        f"+ {py} eval_ood.py --config {conf} --set save_path={run} --set download=true --methods all --all-blocks",
        f"+ {py} scripts/compare_paper.py {run}/ood_results.json",
    ]
    bad = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_imagenet.sh"), "resnet18"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr == ("error: unknown arch 'resnet18'; the paper's ImageNet archs are: "
                                                  "resnet50 vgg16 mobilenet_v3_large\n")


def test_in_memory_images_get_the_same_resize_and_center_crop_as_folders():
    """CIFAR-style arrays scored by a torchvision model: torchvision's resize (shorter side, antialiased) and
    center crop, applied to the normalized batch, as the device loader does it for ``resize_size``."""
    from torchvision.transforms.v2 import functional as TF

    from featurenorm.data.loaders import DeviceLoader

    images = torch.randint(0, 256, (3, 3, 40, 61), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    loader = DeviceLoader(images, torch.zeros(3, dtype=torch.int64), 2, train=False, mean=mean, std=std,
                          device=torch.device("cpu"), image_size=32, resize_size=36)
    batches = torch.cat([x for x, _ in loader])
    normalized = TF.normalize(images.float() / 255, mean, std)
    expected = TF.center_crop(TF.resize(normalized, 36, antialias=True), [32, 32])
    assert batches.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batches, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ OpenOOD v1.5 ImageNet
OPENOOD_SETS = {"near": ("ssb_hard", "ninco"), "far": ("inaturalist", "textures", "openimage_o")}


def write_openood_imagenet(root: Path) -> Path:
    """OpenOOD's ImageNet layout: lists under benchmark_imglist/imagenet/, images under images_largescale/
    (Textures under images_classic/); one listed NINCO file is missing."""
    lists = root / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    for split, count in (("train", 4), ("test", 2)):
        lines = []
        for c, wnid in enumerate(WNIDS):
            write_jpegs(root / "images_largescale" / "imagenet_1k" / split / wnid, count, seed=10 * c + count)
            lines += [f"imagenet_1k/{split}/{wnid}/{p.name} {c}"
                      for p in sorted_images(root / "images_largescale" / "imagenet_1k" / split / wnid)]
        (lists / f"{split}_imagenet.txt").write_text("\n".join(lines) + "\n")
    for o, name in enumerate(OPENOOD_SETS["near"] + OPENOOD_SETS["far"]):
        base = root / ("images_classic" if name == "textures" else "images_largescale") / name
        write_jpegs(base, 3, seed=500 + o, suffix=".jpg")
        lines = [f"{name}/{p.name} -1" for p in sorted_images(base)]
        if name == "ninco":
            lines.append(f"{name}/missing.jpg -1")
        (lists / f"test_{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_openood_imagenet_benchmark_groups_and_scores_equal_a_forward_pass_by_hand(tmp_path, capsys,
                                                                                   one_torch_thread):
    root = write_openood_imagenet(tmp_path / "openood")
    config = imagenet_config(tmp_path / "c.json", "torchvision/resnet18", {}, tmp_path / "run",
                             id_dataset="imagenet", benchmark="openood_v1.5", openood_root=str(root))
    common = ["--config", str(config), "--checkpoint", "none", "--no-progress"]
    assert run_cli(select_main, common) == 0, capsys.readouterr().err
    assert run_cli(eval_main, [*common, "--methods", "featurenorm,msp", "--save-scores"]) == 0, \
        capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "ood_results.json").read_text())
    scores = np.load(tmp_path / "run" / "scores.npz")
    block = results["block"]["name"]
    assert results["groups"] == {"near": ["ssb_hard", "ninco"], "far": ["inaturalist", "textures", "openimage_o"]}
    assert results["unreadable"]["ninco"] == 1 and results["num_id"] == 6
    model, weights = untrained("resnet18")
    test = sorted(p for wnid in WNIDS for p in sorted_images(root / "images_largescale" / "imagenet_1k" / "test" / wnid))
    places = {name: root / ("images_classic" if name == "textures" else "images_largescale") / name
              for names in OPENOOD_SETS.values() for name in names}
    for name, paths in [("id", test)] + [(name, sorted_images(folder)) for name, folder in places.items()]:
        out = forward_by_hand(model, preprocess(paths, weights), block)
        np.testing.assert_allclose(scores[f"featurenorm.{name}"], out["featurenorm"].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores[f"msp.{name}"], out["logits"].softmax(1).max(1).values.numpy(),
                                   rtol=1e-4, atol=1e-5)
    per_set = results["methods"]["featurenorm"]
    for group, members in OPENOOD_SETS.items():
        assert per_set[group]["auroc"] == pytest.approx(np.mean([per_set[m]["auroc"] for m in members]))
