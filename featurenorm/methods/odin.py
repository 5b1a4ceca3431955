"""ODIN: temperature scaling plus a small input perturbation that raises the softmax score."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..config import Config
from .base import Method, Outputs, max_softmax, register_method, require_positive

LogitsFn = Callable[[Tensor], Tensor]


def odin_perturb(logits_fn: LogitsFn, images: Tensor, temperature: float, epsilon: float) -> Tensor:
    """The ODIN input ``x' = x - eps * sign(-grad_x log max_c softmax(logits_fn(x) / T)_c)``.

    The step is taken in the space of the (normalized) images ``logits_fn`` receives. The reference
    code divides the gradient by the per-channel std; following common practice, ``eps`` here is
    not divided by the std, so it is a step in normalized units.

    Args:
        logits_fn: images (B, ...) -> logits (B, C); must treat samples independently (model in
            eval mode), since the gradient is taken of the batch sum.
        images: (B, ...) float, normalized model inputs.
        temperature: softmax temperature T > 0.
        epsilon: perturbation magnitude >= 0.
    Returns:
        (B, ...) perturbed images, detached.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        log_probs = torch.log_softmax(logits_fn(x) / temperature, dim=1)
        log_msp = log_probs.max(dim=1).values
        (grad,) = torch.autograd.grad(log_msp.sum(), x)
    # x - eps * sign(-grad) == x + eps * sign(grad): move to increase the max softmax probability.
    return (x + epsilon * grad.sign()).detach()


def odin_score(logits_fn: LogitsFn, images: Tensor, temperature: float, epsilon: float) -> Tensor:
    """ODIN score ``max_c softmax(logits_fn(x') / T)_c`` with ``x'`` from :func:`odin_perturb`.

    Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in
    Neural Networks", ICLR 2018, https://arxiv.org/abs/1706.02690.

    Args:
        logits_fn: images (B, ...) -> logits (B, C), samples independent (eval mode).
        images: (B, ...) float, normalized model inputs.
    Returns:
        (B,) float, higher = more ID.
    """
    perturbed = odin_perturb(logits_fn, images, temperature, epsilon)
    with torch.no_grad():
        return max_softmax(logits_fn(perturbed) / temperature)


@register_method
class ODIN(Method):
    """ODIN (Liang et al., ICLR 2018, arXiv 1706.02690); T = ``odin_temperature``, eps = ``odin_epsilon``.

    Needs input gradients, so it does not score :class:`Outputs`: the engine calls
    :meth:`score_images` with ``logits_fn = model`` (images -> logits) in a pass of its own.
    """

    name = "odin"
    needs = frozenset()
    needs_input = True

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014) -> None:
        self.temperature = require_positive(temperature, "odin_temperature")
        if epsilon < 0:
            raise ValueError(f"odin_epsilon must not be negative, got {epsilon}")
        self.epsilon = float(epsilon)

    @classmethod
    def from_config(cls, cfg: Config) -> ODIN:
        return cls(cfg.odin_temperature, cfg.odin_epsilon)

    def hparams(self) -> dict[str, Any]:
        return {"odin_temperature": self.temperature, "odin_epsilon": self.epsilon}

    def score_images(self, logits_fn: LogitsFn, images: Tensor) -> Tensor:
        """(B,) ODIN scores of a batch of normalized images."""
        return odin_score(logits_fn, images, self.temperature, self.epsilon)

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        raise TypeError(f"method '{self.name}' needs input gradients; call score_images(logits_fn, images)")
