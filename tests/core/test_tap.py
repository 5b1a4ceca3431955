import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featurenorm.core.tap import FeatureTap, block_feature_norms, feature_norm
from featurenorm.models import build_model

RESNET18_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def hand_tensor() -> torch.Tensor:
    """(2, 2, 2, 2): FeatureNorm 2.5 for image 0, 6.0 for image 1 (see test below)."""
    return torch.tensor([
        [[[3.0, -1.0], [0.0, 4.0]],      # ReLU -> 3, 0, 0, 4: L2 = 5
         [[-2.0, -2.0], [-2.0, -2.0]]],  # dead channel: L2 = 0       -> mean 2.5
        [[[1.0, 1.0], [1.0, 1.0]],       # L2 = 2
         [[-5.0, 6.0], [8.0, 0.0]]],     # ReLU -> 0, 6, 8, 0: L2 = 10 -> mean 6.0
    ])


def test_feature_norm_hand_computed_4d():
    assert torch.equal(feature_norm(hand_tensor()), torch.tensor([2.5, 6.0]))


def test_feature_norm_2d_is_mean_of_rectified_channels():
    z = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -1.0, -1.0]])
    torch.testing.assert_close(feature_norm(z), torch.tensor([4.0 / 3.0, 0.0]))


def test_feature_norm_bf16_computed_in_float32():
    out = feature_norm(hand_tensor().bfloat16())  # all values exactly representable in bf16
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([2.5, 6.0]))


def test_feature_norm_gradient_is_finite_on_dead_channels():
    z = hand_tensor().requires_grad_(True)
    feature_norm(z).sum().backward()
    expected = torch.zeros(2, 2, 2, 2)
    # d/dz mean_c ||ReLU z_c|| = ReLU'(z) * z / ||ReLU z_c|| / C, with C = 2; dead channel -> 0.
    expected[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]]) / 5 / 2
    expected[1, 0] = torch.full((2, 2), 1.0 / 2 / 2)
    expected[1, 1] = torch.tensor([[0.0, 6.0], [8.0, 0.0]]) / 10 / 2
    torch.testing.assert_close(z.grad, expected)


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125)
    for module in model.modules():  # non-trivial eval-mode BatchNorm
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def unrolled_block_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stem, then each BasicBlock called one by one, written out without hooks."""
    out = F.relu(model.bn1(model.conv1(images)))
    outputs = {}
    for stage in range(1, 5):
        for j, block in enumerate(getattr(model, f"layer{stage}")):
            out = block(out)
            outputs[f"layer{stage}.{j}"] = out
    return outputs


@pytest.fixture(scope="module")
def resnet_and_reference():
    model = tiny_resnet()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = unrolled_block_outputs(model, images)
    return model, images, outputs


def test_tap_matches_unrolled_forward_for_all_blocks(resnet_and_reference):
    model, images, outputs = resnet_and_reference
    with torch.no_grad(), FeatureTap(model, RESNET18_BLOCKS) as tap:
        logits = tap.run(model, images)
    torch.testing.assert_close(logits, model.head(torch.flatten(F.adaptive_avg_pool2d(outputs["layer4.1"], 1), 1)))
    assert list(tap.values) == RESNET18_BLOCKS
    for name in RESNET18_BLOCKS:
        torch.testing.assert_close(tap.values[name], feature_norm(outputs[name]), rtol=1e-6, atol=1e-7)
        assert tap.shapes[name] == tuple(outputs[name].shape[1:])
    assert tap.shapes["layer1.0"] == (8, 32, 32) and tap.shapes["layer4.1"] == (64, 4, 4)


def test_early_exit_skips_the_rest_and_gives_same_values(resnet_and_reference):
    model, images, outputs = resnet_and_reference
    later_calls = []
    guard = model.layer3.register_forward_hook(lambda *args: later_calls.append(1))
    try:
        subset = ["layer2.0", "layer1.1"]  # listed out of forward order on purpose
        with torch.no_grad(), FeatureTap(model, subset, stop_after_last=True) as tap:
            returned = tap.run(model.forward_features, images)
    finally:
        guard.remove()
    assert returned is None
    assert later_calls == []
    assert set(tap.values) == set(subset)
    for name in subset:
        torch.testing.assert_close(tap.values[name], feature_norm(outputs[name]), rtol=1e-6, atol=1e-7)


def test_block_feature_norms_equals_reference(resnet_and_reference):
    model, images, outputs = resnet_and_reference
    norms = block_feature_norms(model, images, ["layer3.0", "layer1.0"])
    assert list(norms) == ["layer3.0", "layer1.0"]
    for name, values in norms.items():
        torch.testing.assert_close(values, feature_norm(outputs[name]), rtol=1e-6, atol=1e-7)


def all_hooks(model: nn.Module) -> list:
    return [h for module in model.modules() for h in module._forward_hooks.values()]


def test_hooks_removed_after_exception_in_with_block():
    model = tiny_resnet()
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureTap(model, RESNET18_BLOCKS):
            assert len(all_hooks(model)) == 8
            raise RuntimeError("boom")
    assert all_hooks(model) == []


class ReusedActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


def test_reused_module_is_refused_and_hooks_removed():
    model = ReusedActivation()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"'act'.*reused"):
        with FeatureTap(model, ["act"]) as tap:
            tap.run(model, x)
    assert all_hooks(model) == []


def test_tap_on_2d_output_of_a_module_used_once():
    model = ReusedActivation()
    x = torch.randn(2, 4)
    with torch.no_grad(), FeatureTap(model, ["fc1"]) as tap:
        tap.run(model, x)
        expected = torch.relu(model.fc1(x)).mean(dim=1)
    torch.testing.assert_close(tap.values["fc1"], expected)
    assert tap.shapes["fc1"] == (4,)


def test_unknown_block_lists_valid_names():
    with pytest.raises(ValueError, match="layer5.0.*valid names: layer1.0, layer1.1, .*layer4.1"):
        FeatureTap(tiny_resnet(), ["layer1.0", "layer5.0"])
    with pytest.raises(ValueError, match="valid names: fc1, act, fc2"):
        FeatureTap(ReusedActivation(), ["fc3"])


def test_block_that_does_not_run_is_reported():
    model = tiny_resnet()
    with pytest.raises(ValueError, match="head did not run"):
        with torch.no_grad(), FeatureTap(model, ["layer1.0", "head"]) as tap:
            tap.run(model.forward_features, torch.randn(1, 3, 32, 32))


def test_tap_keeps_autograd_graph_for_input_gradients():
    model = ReusedActivation()
    x = torch.randn(2, 4, requires_grad=True)
    with FeatureTap(model, ["fc1"]) as tap:
        tap.run(model, x)
    tap.values["fc1"].sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    torch.relu(model.fc1(x_ref)).mean(dim=1).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
