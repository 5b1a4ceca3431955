"""ODIN on block-norm logits."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..errors import UserError
from ..core.tap import FeatureTap
from .base import ModelParts, register_method
from .blocknorm import blocknorm_logits
from .odin import ODIN


@register_method
class ODINBlockNorm(ODIN):
    """ODIN (Liang et al., ICLR 2018, arXiv 1706.02690) on block-norm logits (Yu et al., CVPR 2023,
    arXiv 2212.02295): ``logits' = head(f / ||f|| * block_norm)``.

    Like :class:`ODIN` it needs input gradients; it differs from ODIN only in :meth:`input_logits`,
    which reads the selected block's FeatureNorm through a forward hook (differentiably).
    T = ``odin_temperature``, eps = ``odin_epsilon``.
    """

    name = "odin_blocknorm"
    needs = frozenset({"block_norm"})

    def input_logits(self, parts: ModelParts) -> Callable[[Tensor], Tensor]:
        if parts.block is None:
            raise UserError(f"method '{self.name}' needs a selected block")
        block = parts.block

        def logits(images: Tensor) -> Tensor:
            with FeatureTap(parts.model, [block]) as tap:
                features = tap.run(parts.forward_features, images)
                return blocknorm_logits(features.float(), tap.values[block].float(), parts.head)
        return logits
