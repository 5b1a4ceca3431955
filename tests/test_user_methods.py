"""A method registered outside the package, loaded with --plugin, is scored by eval_ood.py like a built-in one."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from featurenorm.cli import eval_main
from featurenorm.errors import run_cli

REPO = Path(__file__).resolve().parents[1]

# An input-gradient method with logits of its own: 3 x the model's logits. Its score is the L2 norm of
# the gradient of the max logit with respect to the input (any such score would do; this one can only be
# computed by a pass with gradients enabled).
PLUGIN = '''
import torch
from featurenorm.methods.base import Method, register_method


@register_method
class TripleGradNorm(Method):
    name = "triple_gradnorm"
    needs_input = True

    def input_logits(self, parts):
        def logits(images):
            return 3.0 * parts.head(parts.forward_features(images).float())
        return logits

    def score_images(self, logits_fn, images):
        x = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(logits_fn(x).max(dim=1).values.sum(), x)
        return grad.flatten(1).norm(dim=1)

    def score(self, out, head):
        raise TypeError("needs input gradients")
'''


@pytest.fixture
def registry_restored():
    """Methods a test's plugin registers are removed again afterwards (the registry is process-wide)."""
    from featurenorm.methods.base import METHODS

    before = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(before)


def test_user_input_gradient_method_runs_through_its_own_logits(trained_digits_run, tmp_path, capsys,
                                                                registry_restored):
    from PIL import Image

    from featurenorm.training.checkpoint import load_checkpoint
    from featurenorm.data.splits import load_split
    from featurenorm.data.loaders import DeviceLoader

    plugin = tmp_path / "my_methods.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    ood = tmp_path / "ood"
    ood.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(ood / f"{i}.png")
    cfg = trained_digits_run.cfg
    code = run_cli(eval_main, ["--config", str(trained_digits_run.save_path / "config.json"),
                               "--checkpoint", str(trained_digits_run.save_path / "last.pt"), "--plugin", str(plugin),
                               "--methods", "msp,triple_gradnorm", "--ood", f"pngs={ood}", "--save-scores",
                               "--set", f"save_path={tmp_path / 'run'}", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    scores = np.load(tmp_path / "run" / "scores.npz")
    # independently: the model's own logits times 3, differentiated by the test itself
    model, _ = load_checkpoint(trained_digits_run.save_path / "last.pt")
    split = load_split(cfg, train=False)
    loader = DeviceLoader(split.images, split.labels, cfg.eval_batch_size, train=False, mean=cfg.mean, std=cfg.std,
                          device=torch.device("cpu"), image_size=cfg.image_size)
    expected = []
    for images, _ in loader:
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((3.0 * model(x)).max(dim=1).values.sum(), x)
        expected.append(grad.flatten(1).norm(dim=1))
    expected = torch.cat(expected).numpy()
    assert scores["triple_gradnorm.id"].shape == expected.shape
    assert np.allclose(scores["triple_gradnorm.id"], expected, rtol=1e-4, atol=1e-7)
    assert not np.allclose(scores["triple_gradnorm.id"], expected / 3, rtol=1e-3)  # its own logits, not plain ones


def test_missing_plugin_is_a_one_line_error(tmp_path, capsys):
    code = run_cli(eval_main, ["--config", str(REPO / "conf" / "digits.json"), "--plugin", str(tmp_path / "nope.py")])
    assert code == 2 and capsys.readouterr().err == (f"error: --plugin '{tmp_path / 'nope.py'}' not found; pass an "
                                                     "existing .py file or a module name\n")
