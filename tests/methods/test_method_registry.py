"""Registry, config plumbing, and every method end to end on a tiny ResNet-18."""
from __future__ import annotations

import pytest
import torch

from featurenorm.config import Config
from featurenorm.errors import UserError
from featurenorm.methods import (METHODS, Method, Outputs, blocknorm_logits_fn, build_method,
                                 method_names)
from featurenorm.models import build_model

DOCUMENTED_ORDER = ["featurenorm", "msp", "odin", "energy", "energy_react", "energy_dice", "maxlogit",
                    "mahalanobis", "knn", "vim", "ash", "msp_blocknorm", "odin_blocknorm",
                    "energy_blocknorm", "norm_profile"]


def test_names_in_documented_order_and_all_registered():
    assert method_names() == DOCUMENTED_ORDER
    assert set(METHODS) == set(DOCUMENTED_ORDER)


@pytest.mark.parametrize("name", DOCUMENTED_ORDER)
def test_build_every_method(name):
    method = build_method(name, Config())
    assert isinstance(method, METHODS[name]) and method.name == name
    assert method.needs <= {"features", "logits", "block_norm", "block_norms"}
    assert method.needs_input == (name in ("odin", "odin_blocknorm"))
    assert method.fits == (name in ("energy_react", "energy_dice", "mahalanobis", "knn", "vim", "norm_profile"))
    assert method.fit_on == ("block_norms" if name == "norm_profile" else "features")


def test_hyperparameters_come_from_the_config():
    cfg = Config(odin_temperature=10.0, odin_epsilon=0.01, energy_temperature=3.0, react_percentile=80.0,
                 dice_sparsity=70.0, ash_percentile=60.0, knn_k=7, vim_dim=12)
    assert build_method("odin", cfg).hparams() == {"odin_temperature": 10.0, "odin_epsilon": 0.01}
    assert build_method("odin_blocknorm", cfg).hparams() == {"odin_temperature": 10.0, "odin_epsilon": 0.01}
    assert build_method("energy", cfg).hparams() == {"energy_temperature": 3.0}
    assert build_method("energy_blocknorm", cfg).hparams() == {"energy_temperature": 3.0}
    assert build_method("energy_react", cfg).hparams() == {"react_percentile": 80.0, "energy_temperature": 3.0}
    assert build_method("energy_dice", cfg).hparams() == {"dice_sparsity": 70.0, "energy_temperature": 3.0}
    assert build_method("ash", cfg).hparams() == {"ash_percentile": 60.0, "energy_temperature": 3.0}
    assert build_method("knn", cfg).hparams() == {"knn_k": 7}
    assert build_method("vim", cfg).hparams() == {"vim_dim": 12}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown OOD method 'energi'; valid names: featurenorm, msp, odin"):
        build_method("energi", Config())


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()
    with torch.no_grad():
        train_features = model.forward_features(torch.randn(40, 3, 32, 32))
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(images)
    return {"model": model, "train_features": train_features, "train_labels": torch.arange(40) % 10,
            "images": images, "features": features, "logits": model.head(features).detach()}


def score_batch(method: Method, run: dict, block_norm: torch.Tensor) -> torch.Tensor:
    model = run["model"]
    if method.name == "odin":
        return method.score_images(model, run["images"])
    if method.name == "odin_blocknorm":
        def features_and_norm(x):
            f = model.forward_features(x)
            return f, f.norm(dim=1)
        return method.score_images(blocknorm_logits_fn(features_and_norm, model.head), run["images"])
    # norm_profile reads a (B, K) profile of block norms: the features stand in for one with K = D blocks
    out = Outputs(features=run["features"], logits=run["logits"], block_norm=block_norm,
                  block_norms=run["features"] + 1.0)
    with torch.no_grad():
        return method.score(out, model.head)


@pytest.mark.parametrize("name", DOCUMENTED_ORDER)
def test_every_method_scores_a_batch_and_restores_its_state(name, tiny_run, tmp_path):
    cfg = Config(knn_k=5)
    block_norm = torch.linspace(1.0, 2.0, 6)
    method = build_method(name, cfg)
    if method.fits:
        train = tiny_run["train_features"] + (1.0 if method.fit_on == "block_norms" else 0.0)
        state = method.fit(train, tiny_run["train_labels"], tiny_run["model"].head)
        torch.save(state, tmp_path / "state.pt")
        restored = build_method(name, cfg)
        restored.load_state(torch.load(tmp_path / "state.pt"))
        assert torch.equal(score_batch(restored, tiny_run, block_norm), score_batch(method, tiny_run, block_norm))
    scores = score_batch(method, tiny_run, block_norm)
    assert scores.shape == (6,) and bool(torch.isfinite(scores).all())


@pytest.mark.parametrize("plain,blocknorm", [("msp", "msp_blocknorm"), ("energy", "energy_blocknorm"),
                                             ("odin", "odin_blocknorm")])
def test_blocknorm_with_the_penultimate_norm_is_the_plain_method(plain, blocknorm, tiny_run):
    # block_norm = ||f|| leaves f unchanged, so the variant must reproduce the plain method
    penultimate_norm = tiny_run["features"].norm(dim=1)
    expected = score_batch(build_method(plain, Config()), tiny_run, penultimate_norm)
    got = score_batch(build_method(blocknorm, Config()), tiny_run, penultimate_norm)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_user_method_is_listed_and_accepted_by_eval(monkeypatch):
    import torch

    from featurenorm.runs.evaluate import parse_methods
    from featurenorm.methods import base

    class MaxFeature(base.Method):
        name = "maxfeature"
        needs = frozenset({"features"})

        def score(self, out, head):
            return out.features.max(dim=1).values

    monkeypatch.setitem(base.METHODS, "maxfeature", MaxFeature)
    assert base.method_names()[-1] == "maxfeature"
    assert parse_methods("msp,maxfeature") == ["msp", "maxfeature"]
    scores = MaxFeature().score(base.Outputs(features=torch.tensor([[1.0, 3.0], [-2.0, -1.0]])), None)
    assert scores.tolist() == [3.0, -1.0]


def test_a_taken_method_name_is_refused_and_the_same_class_again_is_no_change(monkeypatch):
    from featurenorm.methods import base

    monkeypatch.setattr(base, "METHODS", dict(base.METHODS))
    msp = base.METHODS["msp"]
    with pytest.raises(ValueError, match="method name 'msp' is registered already"):
        base.register_method(type("OtherMSP", (msp,), {}))
    assert base.register_method(msp) is msp and base.METHODS["msp"] is msp


def test_a_user_method_reading_block_norm_gets_the_block(monkeypatch):
    from featurenorm.methods.base import uses_block
    from featurenorm.methods import base

    class Scaled(base.Method):
        name = "scaled_norm"
        needs = frozenset({"block_norm"})

        def score(self, out, head):
            return 2 * out.block_norm

    monkeypatch.setitem(base.METHODS, "scaled_norm", Scaled)
    assert uses_block("scaled_norm") and uses_block("featurenorm") and uses_block("msp_blocknorm")
    assert not uses_block("msp") and not uses_block("knn")
