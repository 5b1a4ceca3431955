"""timm models: their own evaluation preprocessing, and pretrained weights read offline, fetched only when asked."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from featurenorm.config import load_config
from featurenorm.data.images import eval_transform
from featurenorm.errors import UserError
from featurenorm.models import build_model

timm = pytest.importorskip("timm")


def photos():
    """Real photographs (scikit-image is not installed here; scikit-learn ships two JPEGs)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(np.asarray(image)) for image in load_sample_images().images]


@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224", "convnext_atto", "test_resnet"])
def test_eval_transform_is_timms_own_pixel_for_pixel(name):
    cfg = load_config(None, ["id_dataset=digits", "save_path=unused", f"arch=timm/{name}"])
    net = timm.create_model(name, pretrained=False, num_classes=3)
    reference = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    ours = eval_transform(cfg)
    for photo in photos():
        expected = reference(photo)
        assert expected.shape[1:] == tuple(timm.data.resolve_data_config(model=net)["input_size"][1:])
        assert torch.equal(ours(photo), expected)


def test_config_keys_override_timms_preprocessing():
    cfg = load_config(None, ["id_dataset=digits", "save_path=unused", "arch=timm/resnet10t", "image_size=64",
                             "interpolation=bilinear"])
    # resnet10t: crop_pct 0.875, so floor(64 / 0.875) = 73; mean/std stay timm's
    assert (cfg.image_size, cfg.resize_size, cfg.interpolation) == (64, 73, "bilinear")
    assert cfg.mean == [0.485, 0.456, 0.406] and cfg.std == [0.229, 0.224, 0.225]


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty caches in tmp_path; every network attempt is recorded and fails."""
    import huggingface_hub
    import huggingface_hub.constants
    import timm.models._hub as timm_hub

    attempts: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"{name}: network refused by the test")
        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hf_hub_download"))
    monkeypatch.setattr(timm_hub, "hf_hub_download", refuse("timm hf_hub_download"))
    monkeypatch.setattr(timm_hub, "download_cached_file", refuse("download_cached_file"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("download_url_to_file"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


def test_pretrained_without_the_file_offline_is_one_line_and_tries_no_network(no_network, tmp_path):
    with pytest.raises(UserError) as err:
        build_model("timm/resnet10t", 10, pretrained=True)
    message = str(err.value)
    assert "\n" not in message and no_network == []
    folder = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "main"
    assert message == (f"pretrained weights of timm model timm/resnet10t.c3_in1k are not in the local cache: put "
                       f"model.safetensors (from https://huggingface.co/timm/resnet10t.c3_in1k) in {folder}, "
                       "or set download true to fetch them")


def test_pretrained_reads_the_file_put_where_the_message_says(no_network, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False)
    folder = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "main"
    folder.mkdir(parents=True)
    save_file(source.state_dict(), folder / "model.safetensors")
    model = build_model("timm/resnet10t", 1000, pretrained=True).eval()
    assert no_network == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_download_true_offline_names_the_file(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^download true, but HF_HUB_OFFLINE is set: unset it to fetch "
                                        r"timm/resnet10t.c3_in1k, or put model.safetensors"):
        build_model("timm/resnet10t", 10, pretrained=True, download=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(UserError, match=r"^could not download timm model timm/resnet10t.c3_in1k \(.*refused"):
        build_model("timm/resnet10t", 10, pretrained=True, download=True)
    assert no_network  # only with download true is the network tried
