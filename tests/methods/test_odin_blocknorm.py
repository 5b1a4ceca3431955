import pytest
import torch

from featurenorm.config import Config
from featurenorm.methods import blocknorm_logits_fn, build_method

# A tiny differentiable "network": features = x P, block norm = 2 * ||x||_1 (both depend on x)
P = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.2, 0.3]], dtype=torch.float64)
W = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]], dtype=torch.float64)
BIAS = torch.tensor([0.1, 0.0, -0.2], dtype=torch.float64)
IMAGES = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.3, -0.2]], dtype=torch.float64)


def features_and_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x @ P, 2.0 * x.abs().sum(dim=1)


STD = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)  # the normalization std of each input channel


def odin_blocknorm_unrolled(x: torch.Tensor, temperature: float, epsilon: float) -> torch.Tensor:
    """Each step written out: blocknorm logits, log max softmax, input gradient, step (eps / std per channel,
    as in the ODIN reference code), score."""
    x = x.clone().requires_grad_(True)
    f = x @ P
    block_norm = 2.0 * x.abs().sum(dim=1)
    logits = (f / f.norm(dim=1, keepdim=True) * block_norm[:, None]) @ W.T + BIAS
    log_msp = torch.log_softmax(logits / temperature, dim=1).max(dim=1).values
    log_msp.sum().backward()
    x_new = (x - epsilon * torch.sign(-x.grad) / STD).detach()
    f_new = x_new @ P
    logits_new = (f_new / f_new.norm(dim=1, keepdim=True) * 2.0 * x_new.abs().sum(dim=1)[:, None]) @ W.T + BIAS
    return torch.softmax(logits_new / temperature, dim=1).max(dim=1).values


def make_head() -> torch.nn.Linear:
    head = torch.nn.Linear(2, 3).double()
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.copy_(BIAS)
    return head


@pytest.mark.parametrize("temperature,epsilon", [(2.0, 0.05), (1000.0, 0.0014)])
def test_matches_unrolled_autograd(temperature, epsilon):
    method = build_method("odin_blocknorm", Config(odin_temperature=temperature, odin_epsilon=epsilon,
                                                   std=STD.tolist()))
    assert method.needs_input
    scores = method.score_images(blocknorm_logits_fn(features_and_norm, make_head()), IMAGES)
    expected = odin_blocknorm_unrolled(IMAGES, temperature, epsilon)
    assert torch.allclose(scores, expected, atol=1e-14)
    # the perturbation raises the score over plain (eps = 0) blocknorm MSP
    plain = odin_blocknorm_unrolled(IMAGES, temperature, 0.0)
    assert torch.all(scores > plain)


def test_logits_fn_gives_blocknorm_logits():
    logits = blocknorm_logits_fn(features_and_norm, make_head())(IMAGES[:1])
    # x = (0.2, -0.1, 0.4): f = (0.33, 0.12), ||x||_1 = 0.7 -> block norm 1.4
    f = torch.tensor([0.33, 0.12], dtype=torch.float64)
    f_new = f / f.norm() * 1.4
    expected = [f_new[0] - f_new[1] + 0.1, 0.5 * f_new[0] + 2 * f_new[1], f_new[1] - 0.2]
    assert logits[0].tolist() == pytest.approx([v.item() for v in expected], abs=1e-12)
