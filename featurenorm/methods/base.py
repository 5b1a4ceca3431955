"""The interface every OOD scoring method implements, and the method registry.

A method turns what one shared forward pass yields (:class:`Outputs`) into one score per sample,
with the project-wide convention **higher score = more in-distribution**. Methods that need
statistics of the ID training set (``fits = True``) compute them in :meth:`Method.fit`, which
returns a dict of tensors that the engine caches (``torch.save``) and restores with
:meth:`Method.load_state`. Methods with ``needs_input = True`` (ODIN) need gradients with respect
to the input images, so the engine runs them in their own pass through ``score_images``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserError, check_new_name

if TYPE_CHECKING:
    from ..config import Config

OUTPUT_FIELDS = frozenset({"features", "logits", "block_norm", "block_norms"})
# What a fitted method learns from (Method.fit_on): the penultimate features, or every candidate block's FeatureNorm.
FIT_INPUTS = frozenset({"features", "block_norms"})

# The paper's method: the default of evaluate().
PAPER_METHOD = "featurenorm"


@dataclass
class Outputs:
    """What one shared forward pass yields for a batch; fields a method does not need may be None.

    Attributes:
        features: (B, D) float, pooled penultimate features (``model.forward_features(x)``).
        logits: (B, C) float, ``head(features)``.
        block_norm: (B,) float, FeatureNorm of the selected block.
        block_norms: (B, K) float, FeatureNorm of each of the K candidate blocks, in candidate order.
    """

    features: Tensor | None = None
    logits: Tensor | None = None
    block_norm: Tensor | None = None
    block_norms: Tensor | None = None

    def require(self, field: str, method: str) -> Tensor:
        """The tensor ``field``; a clear error if the engine did not provide it."""
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"method '{method}' needs Outputs.{field}, which is None")
        return value


@dataclass
class ModelParts:
    """The pieces of a classifier that methods score from.

    Attributes:
        model: the network; block names are its ``named_modules()`` names.
        forward_features: images (B, 3, H, W) -> pooled penultimate features (B, D).
        head: the linear classifier, ``logits = head(features)``.
        block: the selected block, for methods that read its FeatureNorm (None if not selected).
    """

    model: nn.Module
    forward_features: Callable[[Tensor], Tensor]
    head: nn.Linear
    block: str | None = None


class Method:
    """Base class of an OOD scoring method.

    Class attributes:
        name: registry name.
        needs: which :class:`Outputs` fields :meth:`score` reads.
        fits: True if the method needs ID-train statistics (call :meth:`fit` or :meth:`load_state`).
        fit_on: what :meth:`fit` learns from: ``"features"`` (the penultimate features, the default) or
            ``"block_norms"`` (every candidate block's FeatureNorm of the ID-train images).
        needs_input: True if the method scores images itself (:meth:`score_images`), not Outputs; the
            evaluator then runs it in a gradient pass of its own with the logits of :meth:`input_logits`.

    The evaluator calls :meth:`from_config`, :meth:`hparams`, :meth:`fit` / :meth:`load_state` (``fits``),
    :meth:`score`, or :meth:`input_logits` and :meth:`score_images` (``needs_input``); nothing else.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    fits: ClassVar[bool] = False
    fit_on: ClassVar[str] = "features"
    needs_input: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: Config) -> Method:
        """Build the method with its hyperparameters read from ``cfg``."""
        return cls()

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters the scores depend on (for result tables and state-cache keys)."""
        return {}

    def fit(self, train_features: Tensor, train_labels: Tensor, head: nn.Linear) -> dict[str, Tensor]:
        """Compute ID-train statistics, load them, and return them as the method's state.

        Args:
            train_features: (N, D) float, penultimate features of the ID training set; for ``fit_on =
                "block_norms"``, (N, K) FeatureNorms of the K candidate blocks instead.
            train_labels: (N,) int64, their class labels.
            head: the classifier, ``logits = head(features)``.
        Returns:
            The state, a dict of tensors (on CPU) that :meth:`load_state` accepts.
        """
        return {}

    def input_logits(self, parts: ModelParts) -> Callable[[Tensor], Tensor]:
        """For ``needs_input`` methods: the differentiable map images (B, 3, H, W) -> logits (B, C) that
        :meth:`score_images` perturbs. Default: the model's own logits, ``head(forward_features(x))``."""
        def logits(images: Tensor) -> Tensor:
            return parts.head(parts.forward_features(images).float())
        return logits

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore the state returned by :meth:`fit`."""

    def score(self, out: Outputs, head: nn.Linear) -> Tensor:
        """Score a batch: (B,) float, higher = more in-distribution."""
        raise NotImplementedError

    def score_images(self, logits_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
        """For ``needs_input`` methods, instead of :meth:`score`: score images (B, 3, H, W) -> (B,) float,
        higher = more in-distribution, with input gradients through ``logits_fn`` (:meth:`input_logits`)."""
        raise NotImplementedError(f"method '{self.name}' scores Outputs with score(); set needs_input and "
                                  "define score_images to score images")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


def state_tensor(state: dict[str, Tensor], key: str, method: str) -> Tensor:
    """``state[key]``, or a UserError that says the cached state is stale."""
    if key not in state:
        raise UserError(f"the saved state of method '{method}' lacks '{key}'; delete the cached "
                        "method state so that it is fitted again")
    return state[key]


def feature_dim_check(features: Tensor, head: nn.Linear, method: str) -> None:
    """Raise ValueError unless ``features`` is (N, D) with D matching the head's input size."""
    if features.dim() != 2 or features.shape[1] != head.in_features:
        raise ValueError(f"method '{method}' expects features of shape (N, {head.in_features}), "
                         f"got {tuple(features.shape)}")


M = TypeVar("M", bound=type[Method])
METHODS: dict[str, type[Method]] = {}


def register_method(cls: M) -> M:
    """Class decorator: add a :class:`Method` subclass to :data:`METHODS` under ``cls.name``."""
    check_new_name(METHODS, cls.name, cls, "method")
    unknown = cls.needs - OUTPUT_FIELDS
    if unknown:
        raise ValueError(f"method '{cls.name}' needs unknown Outputs fields {sorted(unknown)}")
    if cls.fit_on not in FIT_INPUTS:
        raise ValueError(f"method '{cls.name}' fits on '{cls.fit_on}'; valid: {', '.join(sorted(FIT_INPUTS))}")
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """All method names in table order, which is the order of registration: the built-in ones as
    :mod:`featurenorm.methods` imports them (featurenorm, msp, odin, energy, energy_react, energy_dice,
    maxlogit, mahalanobis, knn, vim, ash, msp_blocknorm, odin_blocknorm, energy_blocknorm), then the
    methods registered by users."""
    return list(METHODS)


def build_method(name: str, cfg: Config) -> Method:
    """Build the method ``name`` with its hyperparameters from ``cfg``; UserError if unknown."""
    if name not in METHODS:
        raise UserError(f"unknown OOD method '{name}'; valid names: {', '.join(method_names())}")
    return METHODS[name].from_config(cfg)


def max_softmax(logits: Tensor) -> Tensor:
    """MSP: ``max_c softmax(logits)_c``. (B, C) -> (B,)."""
    return torch.softmax(logits, dim=1).max(dim=1).values


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy ``T * logsumexp(logits / T)``, higher = more ID. (B, C) -> (B,).

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020,
    https://arxiv.org/abs/2010.03759.
    """
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def require_positive(value: float, key: str) -> float:
    """``value`` if it is > 0, else a UserError naming the config key."""
    if not value > 0:
        raise UserError(f"config key '{key}' must be positive for this method, got {value}")
    return float(value)


T = TypeVar("T")


def fitted(value: T | None, method: str) -> T:
    """``value``, or a RuntimeError if the method has not been fitted (or its state loaded)."""
    if value is None:
        raise RuntimeError(f"method '{method}' is not fitted; call fit() or load_state() first")
    return value


def float64_device(device: torch.device) -> torch.device:
    """Where float64 math can run: ``device`` itself, except MPS (no float64 there), which uses CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def fits_on_block_norms(methods: Iterable[Any]) -> bool:
    """Whether any of ``methods`` (instances or classes) learns from the ID-train block norms (``fit_on``), so
    that the fit pass must tap the candidate blocks."""
    return any(method.fit_on == "block_norms" for method in methods)


def uses_all_blocks(method: Any) -> bool:
    """Whether a method (a class or instance) reads every candidate block's FeatureNorm (``block_norms``), in
    its score or its fit."""
    return "block_norms" in method.needs or method.fit_on == "block_norms"


def uses_block(method: Any) -> bool:
    """Whether a method (a name, class or instance) reads the selected block's FeatureNorm: its class says so
    by listing ``block_norm`` in ``needs``."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    return cls is not None and "block_norm" in cls.needs
