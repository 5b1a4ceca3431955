"""featurenorm.models: block names, sizes, the forward_features/head split, and the registry's errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from featurenorm.errors import UserError
from featurenorm.models import block_names, build_model, model_names
from featurenorm.models.wrn import parse_wrn_name

RESNET18_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
WRN28_BLOCKS = [f"block{s}.{i}" for s in range(1, 4) for i in range(4)]
# vgg11 features: conv0 relu1 M2 conv3 relu4 M5 conv6 relu7 conv8 relu9 M10 conv11 relu12 conv13 relu14 M15
# conv16 relu17 conv18 relu19 M20; a block is the ReLU after each conv
VGG11_BLOCKS = [f"features.{i}" for i in (1, 4, 7, 9, 12, 14, 17, 19)]
SMALL = [("resnet18", 0.125), ("wrn28_10", 0.05), ("vgg11", 0.125), ("wrn16_2", 0.5), ("resnet50", 0.0625)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [("resnet18", RESNET18_BLOCKS), ("wrn28_10", WRN28_BLOCKS),
                                            ("vgg11", VGG11_BLOCKS)])
def test_block_names(name, expected):
    model = build_model(name, 10, width=0.0625)
    assert block_names(model) == expected
    assert len(expected) == {"resnet18": 8, "wrn28_10": 12, "vgg11": 8}[name]


def test_resnet18_blocks_are_its_basic_blocks_and_vgg_blocks_its_relus():
    resnet = dict(build_model("resnet18", 10, width=0.125).named_modules())
    assert all(type(resnet[name]).__name__ == "BasicBlock" for name in RESNET18_BLOCKS)
    vgg = dict(build_model("vgg11", 10, width=0.125).named_modules())
    assert all(isinstance(vgg[name], nn.ReLU) for name in VGG11_BLOCKS)
    # each ReLU is its own module, so a hook on one fires once per forward
    assert len({id(vgg[name]) for name in VGG11_BLOCKS}) == 8


@pytest.mark.parametrize("name, width", SMALL)
def test_every_block_name_is_a_module(name, width):
    model = build_model(name, 10, width=width)
    modules = dict(model.named_modules())
    assert all(name in modules for name in model.block_names)


def test_full_width_parameter_counts():
    # resnet18 for CIFAR-10: 11,173,962 (about 11.2 M); WRN-28-10: 36,479,194 (about 36.5 M)
    assert n_params(build_model("resnet18", 10)) == 11_173_962
    assert n_params(build_model("wrn28_10", 10)) == 36_479_194


def test_resnet18_stem_and_stage_shapes():
    model = build_model("resnet18", 10)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.out_channels) == ((3, 3), (1, 1), 64)
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [64, 128, 256, 512]
    assert [getattr(model, f"layer{i}")[0].conv1.stride for i in range(1, 5)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert (model.num_features, model.head.in_features, model.head.out_features) == (512, 512, 10)


@pytest.mark.parametrize("name, width", SMALL)
def test_forward_is_head_of_forward_features(name, width):
    torch.manual_seed(0)
    model = build_model(name, 7, width=width).eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (3, model.num_features) == (3, model.head.in_features)
    assert model.head.out_features == 7
    torch.testing.assert_close(model(x), model.head(features), rtol=0, atol=0)


def test_resnet18_forward_features_unrolled():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    out = torch.relu(model.bn1(model.conv1(x)))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            inner = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(out)))))
            out = torch.relu(inner + block.shortcut(out))
    assert out.shape == (2, 64, 4, 4)
    torch.testing.assert_close(model.forward_features(x), out.mean(dim=(2, 3)))


@pytest.mark.parametrize("name, width, stem, features", [
    ("resnet18", 1.0, 64, 512), ("resnet18", 0.125, 8, 64), ("resnet18", 0.25, 16, 128),
    ("wrn28_10", 0.1, 2, 64), ("vgg11", 1.0, 64, 512), ("vgg11", 0.5, 32, 256),
])
def test_width_multiplier_shrinks_channels(name, width, stem, features):
    model = build_model(name, 10, width=width)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert (first_conv.out_channels, model.num_features, model.head.in_features) == (stem, features, features)


def test_width_never_rounds_to_zero_channels():
    model = build_model("resnet18", 10, width=0.001)
    assert min(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) == 1


def test_unknown_architecture_lists_names():
    with pytest.raises(UserError) as err:
        build_model("resnet19", 10)
    message = str(err.value)
    assert message.startswith("unknown architecture 'resnet19' (did you mean 'resnet18'?); available: ")
    assert ", ".join(model_names()) in message
    assert {"resnet18", "resnet34", "resnet50", "vgg11", "vgg13", "vgg16", "wrn28_10"} <= set(model_names())
    assert "wrn{depth}_{widen}, timm/<name>" in message


def test_wrn_names_parse():
    assert parse_wrn_name("wrn16_2") == (16, 2)
    assert parse_wrn_name("wrn40_4") == (40, 4)
    assert parse_wrn_name("wrn16-2") is None and parse_wrn_name("xwrn16_2") is None
    model = build_model("wrn16_2", 10)
    assert model.block_names == ["block1.0", "block1.1", "block2.0", "block2.1", "block3.0", "block3.1"]
    assert [getattr(model, f"block{s}")[0].conv1.out_channels for s in (1, 2, 3)] == [32, 64, 128]
    assert model.num_features == 128


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(UserError, match=r"WideResNet depth must be 6n\+4 \(e\.g\. 16, 22, 28, 40\), got 15"):
        build_model("wrn15_2", 10)


def test_wrn_blocks_output_pre_activations():
    # the pre-activation blocks end in a conv plus the shortcut, with no ReLU: outputs can be negative
    torch.manual_seed(0)
    model = build_model("wrn16_2", 10, width=0.5).eval()
    out = {}
    model.block3[1].register_forward_hook(lambda m, i, o: out.setdefault("x", o))
    model(torch.randn(2, 3, 32, 32))
    assert bool((out["x"] < 0).any())


def test_vgg11_follows_the_paper():
    model = build_model("vgg11", 10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)] + [model.head]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]
    dropouts = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5, 0.5]
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout"] * 2


def test_vgg_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model("vgg11", 10, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    first = model.forward_features(x)
    torch.manual_seed(2)
    assert not torch.equal(first, model.forward_features(x))


def test_block_names_of_a_plain_module_is_a_user_error():
    with pytest.raises(UserError, match=r"Linear declares no block_names; set the config key 'blocks'"):
        block_names(nn.Linear(2, 2))


def test_tiny_timm_model_builds_offline(monkeypatch):
    timm = pytest.importorskip("timm")
    # any attempt to fetch weights fails the test instead of reaching the network
    import timm.models._builder as builder

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download pretrained weights")

    monkeypatch.setattr(builder, "load_pretrained", no_download)
    torch.manual_seed(0)
    model = build_model("timm/resnet10t", 5, pretrained=False).eval()
    assert model.block_names == ["net.layer1.0", "net.layer2.0", "net.layer3.0", "net.layer4.0"]
    modules = dict(model.named_modules())
    assert all(name in modules for name in model.block_names)
    assert (model.num_features, model.head.out_features) == (512, 5)
    assert model.head is model.net.get_classifier()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.net(x))
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)), rtol=0, atol=0)
    # the wrapped network is timm's own model, built from the same seed: the same weights, the same outputs
    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    assert list(reference.state_dict()) == list(model.net.state_dict())
    for name, value in reference.state_dict().items():
        assert torch.equal(value, model.net.state_dict()[name]), name
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_timm_errors_are_user_errors():
    pytest.importorskip("timm")
    with pytest.raises(UserError, match=r"unknown timm model 'no_such_net'"):
        build_model("timm/no_such_net", 10)
    with pytest.raises(UserError, match=r"config key 'width' applies only to featurenorm's own architectures"):
        build_model("timm/resnet10t", 10, width=0.5)


def test_a_taken_model_name_is_refused_and_the_same_builder_again_is_no_change(monkeypatch):
    from featurenorm.models import registry

    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    builder = registry.MODELS["resnet18"]
    with pytest.raises(ValueError, match="model name 'resnet18' is registered already"):
        registry.register_model("resnet18")(lambda num_classes, **_: nn.Linear(1, num_classes))
    assert registry.register_model("resnet18")(builder) is builder and registry.MODELS["resnet18"] is builder
