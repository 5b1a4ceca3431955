"""weights_file: a user's own state_dict for a timm or torchvision architecture, loaded as a user would save it."""
from __future__ import annotations

import pytest
import torch

from featurenorm.config import load_config
from featurenorm.errors import ConfigError, UserError
from featurenorm.core.tap import block_feature_norms
from featurenorm.training.weights import architecture_module, build_configured
from featurenorm.core.blocks import candidate_blocks

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def config(arch: str, path, *extra: str):
    return load_config(None, ["id_dataset=digits", "save_path=unused", f"arch={arch}", f"weights_file={path}",
                              "image_size=32", *extra])


def originals():
    torch.manual_seed(3)
    return {"timm/resnet10t": timm.create_model("resnet10t", pretrained=False, num_classes=7),
            "torchvision/resnet18": torchvision.models.resnet18(num_classes=7)}


@pytest.mark.parametrize("arch", ["timm/resnet10t", "torchvision/resnet18"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_a_saved_state_dict_gives_the_original_logits_and_feature_norms(arch, prefix, tmp_path):
    original = originals()[arch].eval()
    path = tmp_path / "weights.pth"
    torch.save({f"{prefix}{k}": v for k, v in original.state_dict().items()}, path)
    torch.manual_seed(99)  # a different init: every weight must come from the file
    model = build_configured(config(arch, path), None).eval()  # num_classes read from the file: 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    ours = block_feature_norms(model, x, candidate_blocks(model))
    theirs = block_feature_norms(original, x, candidate_blocks(original))
    assert len(ours) == len(theirs) == {"timm/resnet10t": 4, "torchvision/resnet18": 8}[arch]
    for (name, value), (their_name, their_value) in zip(ours.items(), theirs.items()):
        assert name.removeprefix("net.") == their_name
        torch.testing.assert_close(value, their_value, rtol=0, atol=0)
    assert architecture_module(model).state_dict().keys() == original.state_dict().keys()


def test_a_file_that_does_not_fit_is_one_line_with_counts(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), path)
    with pytest.raises(UserError) as err:
        build_configured(config("timm/convnext_atto", path, "num_classes=7"), None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"weights_file '{path}' does not fit ConvNeXt: ")
    assert "missing key(s), first 'stem.0.weight'" in message and "unexpected key(s), first 'conv1.weight'" in message


def test_weights_file_is_loaded_weights_only_and_checked(tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"weight": torch.nn.Linear(2, 2)}, path)  # a pickled module: code, refused
    with pytest.raises(UserError, match=r"refused to load"):
        build_configured(config("torchvision/resnet18", path), 10)
    with pytest.raises(UserError, match=r"weights_file '.*missing.pth' not found"):
        build_configured(config("torchvision/resnet18", tmp_path / "missing.pth"), 10)
    with pytest.raises(ConfigError, match=r"config key 'weights_file' loads into timm/<name> and torchvision/<name>"):
        config("resnet18", path)
    with pytest.raises(ConfigError, match=r"config key 'weights_file' replaces the pretrained weights"):
        config("timm/resnet10t", path, "pretrained=true")
