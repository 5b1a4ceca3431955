"""timm ViT, Swin and ConvNeXt: every candidate block read with its layout; every stage block listed."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from featurenorm.core.tap import BlockError, FeatureTap, feature_norm
from featurenorm.core.layouts import CHANNELS_FIRST, tokens
from featurenorm.models import build_model
from featurenorm.core.blocks import block_layouts, candidate_blocks

timm = pytest.importorskip("timm")

# tiny variants at 32 px, random init
TINY = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=3)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2, depths=(1, 2, 1, 1))),
    "convnext": ("convnext_atto", {}),
}


def formula(channels_first: torch.Tensor) -> torch.Tensor:
    """FeatureNorm from the paper's formula on (B, C, *positions): mean_c sqrt(sum_p ReLU(z)^2), written out."""
    rectified = channels_first.flatten(2).clamp(min=0).double()
    return (rectified ** 2).sum(dim=2).sqrt().mean(dim=1)


def explicit_layout(kind: str, net: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A channels-first copy (B, C, *positions) of the block output, the layout spelled out per family."""
    if kind == "vit":  # (B, N, C): tokens first; the class token is not a position of the image
        b, n, c = out.shape
        assert n == net.num_prefix_tokens + (32 // 8) ** 2
        return torch.stack([out[:, net.num_prefix_tokens:, channel] for channel in range(c)], dim=1)  # (B, C, N)
    if kind == "swin":  # (B, H, W, C): channels last
        b, h, w, c = out.shape
        return torch.stack([out[..., channel] for channel in range(c)], dim=1)  # (B, C, H, W)
    assert out.dim() == 4  # ConvNeXt: channels first already
    return out.clone()


@pytest.mark.parametrize("kind", sorted(TINY))
def test_every_block_reads_feature_norm_with_its_layout(kind):
    name, options = TINY[kind]
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 5, **options).eval()
    x = torch.randn(2, 3, 32, 32)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[b].register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, o.detach().clone()))
               for b in model.block_names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad(), FeatureTap(model, model.block_names) as tap:
        tap.run(model, x)
    assert len(model.block_names) == {"vit": 3, "swin": 5, "convnext": 12}[kind]
    for block in model.block_names:
        expected = formula(explicit_layout(kind, model.net, outputs[block]))
        torch.testing.assert_close(tap.values[block].double(), expected, rtol=1e-5, atol=1e-6)
        # a channels-first copy of the same tensor, read as a plain conv map, gives the same value
        copy = explicit_layout(kind, model.net, outputs[block]).contiguous()
        torch.testing.assert_close(feature_norm(copy), tap.values[block], rtol=1e-5, atol=1e-6)
        assert tap.shapes[block] == tuple(copy.shape[1:])


def test_layouts_declared_per_family():
    for kind, (name, options) in TINY.items():
        net = timm.create_model(name, pretrained=False, num_classes=5, **options)
        kinds = {layout.kind for layout in block_layouts(net).values()}
        assert kinds == {{"vit": "tokens", "swin": "channels_last", "convnext": "channels_first"}[kind]}
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            reg_tokens=2)
    assert set(block_layouts(vit).values()) == {tokens(3)}  # class token + 2 registers left out


def test_a_block_whose_layout_cannot_be_told_is_refused():
    name, options = TINY["vit"]
    model = build_model(f"timm/{name}", 5, **options).eval()
    with pytest.raises(BlockError, match=r"layout of block 'net.blocks.0.mlp' .* cannot be told"):
        FeatureTap(model, ["net.blocks.0.mlp"])
    sequence = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6))  # (B, N, 6) outputs, undeclared
    with pytest.raises(BlockError, match=r"block '0' returns a 3-D output \(2, 5, 6\).*declare it"):
        with FeatureTap(sequence, ["0"]) as tap:
            tap.run(sequence, torch.randn(2, 5, 4))
    with FeatureTap(sequence, ["0"], layouts={"0": tokens(1)}) as tap:  # declared: read per channel
        out = tap.run(sequence, torch.randn(2, 5, 4))
    assert tap.shapes["0"] == (6, 4) and out.shape == (2, 5, 6)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))  # undeclared 4-D: channels first, as before
    with FeatureTap(conv, ["0"]) as tap:
        tap.run(conv, torch.randn(1, 3, 8, 8))
    assert tap.layouts == {"0": None} and tap.shapes["0"] == (4, 6, 6) and block_layouts(conv) is None


@pytest.mark.parametrize("name, stages", [
    ("resnet18", lambda net: [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]),
    ("efficientnet_b0", lambda net: [(f"blocks.{i}", stage) for i, stage in enumerate(net.blocks)]),
    ("tf_efficientnet_lite0", lambda net: [(f"blocks.{i}", stage) for i, stage in enumerate(net.blocks)]),
    ("convnext_atto", lambda net: [(f"stages.{i}.blocks", stage.blocks) for i, stage in enumerate(net.stages)]),
])
def test_candidate_blocks_are_every_block_of_every_stage_in_forward_order(name, stages):
    net = timm.create_model(name, pretrained=False, num_classes=5)
    expected = [f"{prefix}.{j}" for prefix, container in stages(net) for j in range(len(container))]
    assert candidate_blocks(net) == expected
    assert len(expected) == {"resnet18": 8, "efficientnet_b0": 16, "tf_efficientnet_lite0": 16,
                             "convnext_atto": 12}[name]
    assert set(block_layouts(net).values()) == {CHANNELS_FIRST}
    order: list[str] = []  # forward order: the order in which the blocks run
    modules = dict(net.named_modules())
    handles = [modules[b].register_forward_hook(lambda m, i, o, b=b: order.append(b)) for b in expected]
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert order == expected
