import numpy as np
import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import Outputs, build_method
from featurenorm.methods.odin import ODIN, odin_perturb, odin_score

# A linear "network" logits = x A^T, so the input gradient has a closed form.
A = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
IMAGES = np.array([[0.2, -0.1, 0.4], [1.0, 0.3, -0.2], [-0.5, 0.5, 0.0]])


def linear_logits(x: torch.Tensor) -> torch.Tensor:
    return x @ torch.tensor(A, dtype=x.dtype).T


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def odin_by_hand(x: np.ndarray, temperature: float, epsilon: float, std: np.ndarray | None = None) -> float:
    """ODIN as the paper and the reference code define it, for logits z = A x.

    Liang et al. (ICLR 2018), eq. (2): x~ = x - eps * sign(-grad_x log S_y(x; T)), S_y the max
    softmax at temperature T. The reference code (facebookresearch/odin, calData.py) takes the
    gradient of the cross-entropy loss L = -log S_y, so -grad log S_y = grad L, and divides its
    sign by the normalization std of each channel: x~_c = x_c - eps * sign(dL/dx_c) / std_c.
    Here dL/dx = -(A_y - sum_c p_c A_c) / T, y = argmax.
    """
    std = np.ones_like(x) if std is None else std
    p = softmax(A @ x / temperature)
    y = int(np.argmax(p))
    loss_grad = -(A[y] - p @ A) / temperature
    x_new = x - epsilon * np.sign(loss_grad) / std
    return float(softmax(A @ x_new / temperature).max())


@pytest.mark.parametrize("temperature,epsilon", [(2.0, 0.1), (1000.0, 0.0014), (1.0, 0.0)])
def test_matches_closed_form_gradient(temperature, epsilon):
    images = torch.tensor(IMAGES, dtype=torch.float64)
    scores = odin_score(linear_logits, images, temperature, epsilon)
    expected = [odin_by_hand(x, temperature, epsilon) for x in IMAGES]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)


def test_step_is_eps_over_std_per_channel():
    """The step on channel c is eps / std_c, in the direction that lowers the cross-entropy loss."""
    images = torch.tensor(IMAGES, dtype=torch.float64)
    std = np.array([0.25, 0.5, 2.0])
    perturbed = odin_perturb(linear_logits, images, 2.0, 0.1, std=std.tolist())
    for x, x_new in zip(IMAGES, perturbed.numpy()):
        p = softmax(A @ x / 2.0)
        loss_grad = -(A[int(np.argmax(p))] - p @ A) / 2.0
        np.testing.assert_allclose(x_new - x, -0.1 * np.sign(loss_grad) / std, rtol=0, atol=1e-15)
        np.testing.assert_allclose(np.abs(x_new - x), [0.4, 0.2, 0.05], rtol=0, atol=1e-15)
    scores = odin_score(linear_logits, images, 2.0, 0.1, std=std.tolist())
    assert scores.tolist() == pytest.approx([odin_by_hand(x, 2.0, 0.1, std) for x in IMAGES], abs=1e-12)
    with pytest.raises(ValueError, match="one std per input channel"):
        odin_perturb(linear_logits, images, 2.0, 0.1, std=[0.5, 0.5])


def test_perturbation_step_and_direction():
    images = torch.tensor(IMAGES, dtype=torch.float64)
    perturbed = odin_perturb(linear_logits, images, 2.0, 0.1)
    # every coordinate moves by exactly eps (no gradient coordinate is 0 here) ...
    assert torch.allclose((perturbed - images).abs(), torch.full_like(images, 0.1))
    # ... in the direction that raises the max softmax probability
    before = torch.softmax(linear_logits(images) / 2.0, dim=1).max(dim=1).values
    after = odin_score(linear_logits, images, 2.0, 0.1)
    assert torch.all(after > before)
    assert not images.requires_grad and not perturbed.requires_grad


def test_eps_zero_temperature_one_is_msp():
    images = torch.tensor(IMAGES, dtype=torch.float64)
    msp = torch.softmax(linear_logits(images), dim=1).max(dim=1).values
    assert torch.allclose(odin_score(linear_logits, images, 1.0, 0.0), msp, atol=1e-15)


def test_confident_input_scores_higher():
    images = torch.tensor([[3.0, -3.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    scores = odin_score(linear_logits, images, 1000.0, 0.0014)
    assert scores[0] > scores[1]
    assert scores[1].item() == pytest.approx(odin_by_hand(np.zeros(3), 1000.0, 0.0014), abs=1e-12)


def test_method_reads_config_and_scores_images():
    method = build_method("odin", Config(odin_temperature=2.0, odin_epsilon=0.1, std=[0.2, 0.3, 0.4]))
    assert isinstance(method, ODIN) and method.needs_input
    assert (method.temperature, method.epsilon, method.std) == (2.0, 0.1, [0.2, 0.3, 0.4])
    scores = method.score_images(linear_logits, torch.tensor(IMAGES, dtype=torch.float64))
    expected = [odin_by_hand(x, 2.0, 0.1, np.array([0.2, 0.3, 0.4])) for x in IMAGES]
    assert scores.tolist() == pytest.approx(expected, abs=1e-12)
    # built without a config (the Python API), the config's default std applies: 0.5 per channel
    plain = ODIN(2.0, 0.1).score_images(linear_logits, torch.tensor(IMAGES, dtype=torch.float64))
    assert plain.tolist() == pytest.approx([odin_by_hand(x, 2.0, 0.1, np.full(3, 0.5)) for x in IMAGES], abs=1e-12)
    with pytest.raises(TypeError, match="score_images"):
        method.score(Outputs(logits=torch.zeros(1, 2)), None)


def test_gradients_do_not_leak_into_the_model():
    layer = torch.nn.Linear(3, 2)
    odin_score(layer, torch.randn(4, 3), 1000.0, 0.0014)
    assert layer.weight.grad is None
