"""ODIN: temperature scaling plus a small input perturbation that raises the softmax score."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..config import Config
from .base import Method, Outputs, max_softmax, register_method, require_positive

LogitsFn = Callable[[Tensor], Tensor]


def odin_perturb(logits_fn: LogitsFn, images: Tensor, temperature: float, epsilon: float,
                 std: Sequence[float] | None = None) -> Tensor:
    """The ODIN input ``x'_c = x_c - eps * sign(-grad_x log max_k softmax(logits_fn(x) / T)_k)_c / std_c``.

    ``eps`` is a step in pixel units (images in [0, 1]), as in the paper; the model sees
    normalized images ``(pixel - mean_c) / std_c``, where that step is ``eps / std_c`` on channel
    c. The reference code (facebookresearch/odin ``calData.py``, and OpenOOD's
    ``odin_postprocessor.py``) divides the signed gradient by the normalization std the same way.
    Unlike the reference, whose ``(grad >= 0) * 2 - 1`` sends a zero gradient to +1, a zero
    gradient leaves its coordinate in place (``sign(0) = 0``).

    Args:
        logits_fn: images (B, ...) -> logits (B, C); must treat samples independently (model in
            eval mode), since the gradient is taken of the batch sum.
        images: (B, K, ...) float, normalized model inputs with K channels in dim 1.
        temperature: softmax temperature T > 0.
        epsilon: perturbation magnitude >= 0, in pixel units.
        std: the K per-channel normalization stds (None: 1, a step of eps in input units).
    Returns:
        (B, K, ...) perturbed images, detached.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        log_probs = torch.log_softmax(logits_fn(x) / temperature, dim=1)
        log_msp = log_probs.max(dim=1).values
        (grad,) = torch.autograd.grad(log_msp.sum(), x)
    # x - eps * sign(-grad) == x + eps * sign(grad): move to increase the max softmax probability.
    step = epsilon * grad.sign()
    if std is not None:
        per_channel = torch.as_tensor(list(std), dtype=x.dtype, device=x.device)
        if x.dim() < 2 or per_channel.numel() != x.shape[1]:
            raise ValueError(f"ODIN needs one std per input channel: got {per_channel.numel()} for inputs of shape "
                             f"{tuple(x.shape)}")
        step = step / per_channel.view(1, -1, *([1] * (x.dim() - 2)))
    return (x + step).detach()


def odin_score(logits_fn: LogitsFn, images: Tensor, temperature: float, epsilon: float,
               std: Sequence[float] | None = None) -> Tensor:
    """ODIN score ``max_c softmax(logits_fn(x') / T)_c`` with ``x'`` from :func:`odin_perturb`.

    Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in
    Neural Networks", ICLR 2018, https://arxiv.org/abs/1706.02690.

    Args:
        logits_fn: images (B, ...) -> logits (B, C), samples independent (eval mode).
        images: (B, K, ...) float, normalized model inputs.
        std: per-channel normalization stds; the step on channel c is ``epsilon / std[c]``.
    Returns:
        (B,) float, higher = more ID.
    """
    perturbed = odin_perturb(logits_fn, images, temperature, epsilon, std)
    with torch.no_grad():
        return max_softmax(logits_fn(perturbed) / temperature)


@register_method
class ODIN(Method):
    """ODIN (Liang et al., ICLR 2018, arXiv 1706.02690); T = ``odin_temperature``, eps = ``odin_epsilon``.

    eps is in pixel units: on normalized inputs the step on channel c is ``eps / std[c]``, with the
    config's ``std`` (the :class:`~featurenorm.config.Config` default, 0.5 per channel, when built
    without a config), as in the reference code.
    Needs input gradients, so it does not score :class:`Outputs`: the engine calls
    :meth:`score_images` with ``logits_fn = model`` (images -> logits) in a pass of its own.
    """

    name = "odin"
    needs = frozenset()
    needs_input = True

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014,
                 std: Sequence[float] | None = None) -> None:
        self.temperature = require_positive(temperature, "odin_temperature")
        if epsilon < 0:
            raise ValueError(f"odin_epsilon must not be negative, got {epsilon}")
        self.epsilon = float(epsilon)
        self.std = [float(s) for s in (std if std is not None else Config().std)]
        if any(s <= 0 for s in self.std):
            raise ValueError(f"the normalization std must be positive, got {self.std}")

    @classmethod
    def from_config(cls, cfg: Config) -> ODIN:
        return cls(cfg.odin_temperature, cfg.odin_epsilon, cfg.std)

    def hparams(self) -> dict[str, Any]:
        return {"odin_temperature": self.temperature, "odin_epsilon": self.epsilon}

    def score_images(self, logits_fn: LogitsFn, images: Tensor) -> Tensor:
        """(B,) ODIN scores of a batch of normalized images (B, K, ...), K = ``len(std)``."""
        return odin_score(logits_fn, images, self.temperature, self.epsilon, self.std)

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        raise TypeError(f"method '{self.name}' needs input gradients; call score_images(logits_fn, images)")
