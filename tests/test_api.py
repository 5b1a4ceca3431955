"""The Python API on models featurenorm did not build: torchvision, timm, plain nn.Modules."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import featurenorm
from featurenorm import FeatureNormDetector, candidate_blocks, evaluate, select_block
from featurenorm.selection.jigsaw import apply_permutation, sample_permutations

REPO = Path(__file__).resolve().parents[1]


def fn_by_hand(z: torch.Tensor) -> torch.Tensor:
    """The paper's FeatureNorm: (1/C) sum_c ||ReLU(z_c)||_2 over the spatial positions. (B, C, H, W) -> (B,)."""
    return torch.sqrt((torch.relu(z.double()) ** 2).sum(dim=(2, 3))).mean(dim=1)


def output_of(model: nn.Module, block: str, images: torch.Tensor) -> torch.Tensor:
    """The block's output from a full forward pass, read by a forward hook of the test's own."""
    kept = {}
    handle = dict(model.named_modules())[block].register_forward_hook(
        lambda module, inputs, output: kept.setdefault("z", output.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    return kept["z"]


def loader(n: int = 12, size: int = 32, batch_size: int = 5, labels: bool = True, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    if not labels:
        return DataLoader(images, batch_size=batch_size)
    return DataLoader(TensorDataset(images, torch.randint(0, 10, (n,), generator=generator)), batch_size=batch_size)


# ------------------------------------------------------------------------------------------ candidate blocks
def test_candidate_blocks_of_torchvision_families():
    tv = pytest.importorskip("torchvision.models")
    assert candidate_blocks(tv.resnet18(num_classes=10)) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    resnet50 = candidate_blocks(tv.resnet50())
    assert len(resnet50) == 16 and resnet50[0] == "layer1.0" and resnet50[-1] == "layer4.2"
    # VGG-16: its 13 conv layers, each read after its ReLU (the module right after the conv)
    vgg16 = tv.vgg16()
    blocks = candidate_blocks(vgg16)
    convs = [i for i, m in enumerate(vgg16.features) if isinstance(m, nn.Conv2d)]
    assert blocks == [f"features.{i + 1}" for i in convs] and len(blocks) == 13
    # MobileNetV3-Large: every entry of features, the 17th being the 960-channel last conv (the paper's block 17)
    mobilenet = tv.mobilenet_v3_large()
    assert candidate_blocks(mobilenet) == [f"features.{i}" for i in range(17)]
    assert mobilenet.features[16][0].out_channels == 960
    assert candidate_blocks(tv.densenet121()) == ["features.denseblock1", "features.transition1",
                                                  "features.denseblock2", "features.transition2",
                                                  "features.denseblock3", "features.transition3",
                                                  "features.denseblock4"]
    efficientnet = candidate_blocks(tv.efficientnet_b0())
    assert efficientnet[:3] == ["features.1.0", "features.2.0", "features.2.1"] and efficientnet[-1] == "features.8"
    assert len(efficientnet) == 1 + 2 + 2 + 3 + 3 + 4 + 1 + 1  # MBConv blocks per stage, then the last conv
    convnext = candidate_blocks(tv.convnext_tiny())
    assert len(convnext) == 3 + 3 + 9 + 3 and convnext[0] == "features.1.0" and convnext[-1] == "features.7.2"


def test_candidate_blocks_of_timm_and_own_models():
    import timm

    from featurenorm.models import build_model

    net = timm.create_model("resnet10t", num_classes=10)
    assert candidate_blocks(net) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    ours = build_model("resnet18", 10, width=0.0625)
    assert candidate_blocks(ours) == ours.block_names
    wrapped = build_model("timm/resnet10t", 10)
    assert candidate_blocks(wrapped) == ["net.layer1.0", "net.layer2.0", "net.layer3.0", "net.layer4.0"]


class Plain(nn.Module):
    """No known family: the fallback must find the two conv stages (4-D outputs inside Sequentials)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stages = nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
                                    nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.pool(self.stages(torch.relu(self.stem(x)))))


def test_fallback_finds_outermost_four_d_modules_and_errors_without_any():
    assert candidate_blocks(Plain(), input_shape=(3, 16, 16)) == ["stages.0", "stages.1"]

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ValueError, match=r"pass blocks=\[\.\.\.\]"):
        candidate_blocks(Flat(), input_shape=(3, 8, 8))


# ------------------------------------------------------------------------------------------ select_block
def test_select_block_on_torchvision_resnet_equals_the_formula():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tv.resnet18(num_classes=10).eval()
    data = loader(12, batch_size=5)
    selection = select_block(model, data, grid=3, seed=7)
    assert [row.name for row in selection.rows] == candidate_blocks(model)
    # the paper's NormRatio: (1/N) sum_i FN(x_i) / FN(jigsaw(x_i)), puzzles drawn batch by batch from the seed
    generator = torch.Generator().manual_seed(7)
    images, puzzles = [], []
    for x, _ in data:
        images.append(x)
        puzzles.append(apply_permutation(x, sample_permutations(x.shape[0], 32, 32, 3, generator), 3))
    images, puzzles = torch.cat(images), torch.cat(puzzles)
    ratios = {}
    for block in candidate_blocks(model):
        ratios[block] = float((fn_by_hand(output_of(model, block, images))
                               / fn_by_hand(output_of(model, block, puzzles))).mean())
    for row in selection.rows:
        assert row.norm_ratio == pytest.approx(ratios[row.name], rel=1e-5)
    assert selection.block == max(ratios, key=ratios.get)
    assert selection.to_dict()["selected"] == selection.selected.to_dict() and selection.num_samples == 12


@pytest.mark.parametrize("kind", ["timm", "ours", "plain"])
def test_select_block_and_detector_on_other_models(kind, tmp_path):
    import timm

    from featurenorm.models import build_model

    torch.manual_seed(0)
    model = {"timm": lambda: timm.create_model("resnet10t", num_classes=10),
             "ours": lambda: build_model("resnet18", 10, width=0.0625),
             "plain": Plain}[kind]().eval()
    size = 16 if kind == "plain" else 32
    data = loader(10, size=size, batch_size=4)
    blocks = candidate_blocks(model, input_shape=(3, size, size))
    selection = select_block(model, data, blocks, num_samples=8)
    assert len(selection.rows) == len(blocks) and selection.num_samples == 8
    assert selection.block == max(selection.rows, key=lambda row: row.norm_ratio).name
    assert selection.plot(tmp_path / "ratio.png").stat().st_size > 0
    detector = FeatureNormDetector(model, blocks=blocks, num_samples=8).fit(data)
    assert detector.block == selection.block and detector.selection.rows == selection.rows
    x = next(iter(data))[0]
    assert torch.allclose(detector.score(x).double(), fn_by_hand(output_of(model, detector.block, x)), rtol=1e-5)


def test_detector_score_equals_an_independent_hook_and_stops_after_the_block():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(1)
    model = tv.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    for block in ("layer2.0", "layer4.1"):
        detector = FeatureNormDetector(model, block=block)
        assert torch.allclose(detector.score(x).double(), fn_by_hand(output_of(model, block, x)), rtol=1e-5)
    ran = []
    model.fc.register_forward_hook(lambda *args: ran.append("fc"))
    model.layer4.register_forward_hook(lambda *args: ran.append("layer4"))
    FeatureNormDetector(model, block="layer3.1").score(x)
    assert ran == []  # the forward pass ended after layer3.1
    with pytest.raises(ValueError, match="not a module"):
        FeatureNormDetector(model, block="layer9")
    with pytest.raises(RuntimeError, match="call fit"):
        FeatureNormDetector(model).score(x)


# ------------------------------------------------------------------------------------------ evaluate
def test_evaluate_on_torchvision_resnet_matches_the_metrics_by_hand():
    tv = pytest.importorskip("torchvision.models")
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(2)
    model = tv.resnet18(num_classes=10).eval()
    id_data, ood_data = loader(10, batch_size=4, seed=1), loader(6, batch_size=4, labels=False, seed=2)
    results = evaluate(model, id_data, {"noise": ood_data}, ["featurenorm", "msp", "mahalanobis"],
                       block="layer3.0", fit_loader=loader(20, batch_size=8, seed=3))
    id_images = torch.cat([x for x, _ in id_data])
    ood_images = torch.cat(list(ood_data))
    id_fn = fn_by_hand(output_of(model, "layer3.0", id_images))
    ood_fn = fn_by_hand(output_of(model, "layer3.0", ood_images))
    expected = roc_auc_score([1] * 10 + [0] * 6, torch.cat([id_fn, ood_fn]).numpy())
    assert results["methods"]["featurenorm"]["noise"]["auroc"] == pytest.approx(expected, abs=1e-6)
    with torch.no_grad():
        msp_id = torch.softmax(model(id_images), 1).max(1).values
        msp_ood = torch.softmax(model(ood_images), 1).max(1).values
    expected_msp = roc_auc_score([1] * 10 + [0] * 6, torch.cat([msp_id, msp_ood]).numpy())
    assert results["methods"]["msp"]["noise"]["auroc"] == pytest.approx(expected_msp, abs=1e-6)
    labels = torch.cat([y for _, y in id_data])
    with torch.no_grad():
        accuracy = float((model(id_images).argmax(1) == labels).float().mean())
    assert results["id_accuracy"] == pytest.approx(accuracy) and results["num_id"] == 10
    assert results["fit"] == {"mahalanobis": "fitted"} and results["block"]["name"] == "layer3.0"
    with pytest.raises(ValueError, match="fit_loader"):
        evaluate(model, id_data, {"noise": ood_data}, ["knn"], block="layer3.0")


# ------------------------------------------------------------------------------------------ pytorch-ood
def test_pytorch_ood_detector_negates_featurenorm_and_agrees_with_evaluate():
    pytorch_ood = pytest.importorskip("pytorch_ood")
    from pytorch_ood.api import Detector, FeatureMapsDetector
    from pytorch_ood.metrics import OODMetrics

    from featurenorm.integrations.pytorch_ood import FeatureNorm

    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(3)
    model = tv.resnet18(num_classes=10).eval()
    detector = FeatureNorm(model).fit(loader(8, batch_size=4, seed=4))
    assert isinstance(detector, FeatureMapsDetector) and isinstance(detector, Detector)
    reference = FeatureNormDetector(model, block=detector.block)
    id_data, ood_data = loader(10, batch_size=5, seed=5), loader(7, batch_size=7, labels=False, seed=6)
    metrics = OODMetrics()
    for x, _ in id_data:
        scores = detector.predict(x)
        assert torch.equal(scores, -reference.score(x))
        metrics.update(scores, torch.zeros(len(x), dtype=torch.long))
    for x in ood_data:
        metrics.update(detector(x), -torch.ones(len(x), dtype=torch.long))  # pytorch-ood: label < 0 = OOD
    ours = evaluate(model, id_data, {"ood": ood_data}, block=detector.block)
    assert metrics.compute()["AUROC"] == pytest.approx(ours["methods"]["featurenorm"]["ood"]["auroc"], abs=1e-6)
    z = output_of(model, detector.block, x)
    assert torch.allclose(detector.predict_feature_maps(z).double(), -fn_by_hand(z), rtol=1e-5)
    assert pytorch_ood.__version__.startswith("0.4")


def test_importing_featurenorm_does_not_import_pytorch_ood():
    code = ("import sys, featurenorm; featurenorm.FeatureNormDetector; featurenorm.evaluate; "
            "print('pytorch_ood' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ README example
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["results"]["methods"]["featurenorm"]["noise"]["auroc"], float)
    assert namespace["detector"].block == namespace["selection"].block
    assert featurenorm.__version__


def test_the_package_exports_the_whole_public_surface():
    import featurenorm

    surface = {"select_block", "BlockSelection", "FeatureNormDetector", "evaluate",  # the stages
               "feature_norm", "FeatureTap", "candidate_blocks", "norm_ratio", "auroc", "aupr", "fpr_at_tpr",
               "Method", "register_method", "register_model", "register_pseudo_ood",  # the extension points
               "load_checkpoint", "Config", "load_config"}
    assert surface <= set(featurenorm.__all__)
    assert all(getattr(featurenorm, name) is not None for name in featurenorm.__all__)
