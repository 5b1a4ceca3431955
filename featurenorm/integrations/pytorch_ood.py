"""FeatureNorm as a pytorch-ood detector (pytorch-ood 0.4, ``pip install featurenorm[pytorch-ood]``).

Example::

    from pytorch_ood.metrics import OODMetrics
    from featurenorm.integrations.pytorch_ood import FeatureNorm

    detector = FeatureNorm(model).fit(train_loader)   # NormRatio selects the block
    metrics = OODMetrics()
    metrics.update(detector(images), labels)          # pytorch-ood: label < 0 marks OOD

pytorch-ood's sign convention holds here: **higher = more likely OOD**, so the scores are the
negatives of :meth:`featurenorm.FeatureNormDetector.score`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn
from torch import Tensor

try:
    from pytorch_ood.api import FeatureMapsDetector, ModelNotSetException, RequiresFittingException
except ImportError as err:  # an ImportError with the fix in it, rather than a bare ModuleNotFoundError
    raise ImportError("featurenorm.integrations.pytorch_ood needs pytorch-ood: pip install 'featurenorm[pytorch-ood]'"
                      ) from err

from ..evaluation.detector import FeatureNormDetector
from ..core.tap import feature_norm


class FeatureNorm(FeatureMapsDetector):
    """FeatureNorm (Yu et al., CVPR 2023, https://arxiv.org/abs/2212.02295) of one block, negated.

    ``predict(x)`` runs the model up to the block; ``predict_feature_maps(z)`` scores feature maps
    (B, C, H, W) that the caller already has. ``fit(loader)`` selects the block by NormRatio on ID
    training batches when none was given.

    Args:
        model: the classifier (scored in eval mode); may be None when only ``predict_feature_maps`` is used.
        block: module name to read; None: chosen by :meth:`fit`.
        **selection: options of :func:`featurenorm.select_block` (``grid``, ``num_samples``, ``seed``, ...).
    """

    requires_fit = False  # only when no block is given, see fit()

    def __init__(self, model: nn.Module | None, block: str | None = None, **selection: Any):
        super().__init__()
        self.model = model
        self._featurenorm = FeatureNormDetector(model, block, **selection) if model is not None else None

    @property
    def block(self) -> str | None:
        return self._featurenorm.block if self._featurenorm is not None else None

    @property
    def selection(self):
        """The :class:`featurenorm.BlockSelection` made by :meth:`fit`, or None."""
        return self._featurenorm.selection if self._featurenorm is not None else None

    def fit(self, data_loader: Iterable[Any]) -> "FeatureNorm":
        if self._featurenorm is None:
            raise ModelNotSetException
        self._featurenorm.fit(data_loader)
        return self

    def predict(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) inputs -> (B,) outlier scores, ``-FeatureNorm`` of the block."""
        if self._featurenorm is None:
            raise ModelNotSetException
        if self._featurenorm.block is None:
            raise RequiresFittingException("FeatureNorm has no block: pass block= or call fit(loader) first")
        return -self._featurenorm.score(x)

    def predict_feature_maps(self, feature_maps: Tensor) -> Tensor:
        """(B, C, H, W) feature maps of the block -> (B,) outlier scores, ``-FeatureNorm``."""
        with torch.no_grad():
            return -feature_norm(feature_maps)
