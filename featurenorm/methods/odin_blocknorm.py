"""ODIN on block-norm logits."""
from __future__ import annotations

from .base import register_method
from .odin import ODIN


@register_method
class ODINBlockNorm(ODIN):
    """ODIN (Liang et al., ICLR 2018, arXiv 1706.02690) on block-norm logits (Yu et al., CVPR 2023,
    arXiv 2212.02295): ``logits' = head(f / ||f|| * block_norm)``.

    Like :class:`ODIN` it needs input gradients: the engine calls :meth:`score_images` with a
    ``logits_fn`` that maps images to block-norm logits, e.g. built with
    :func:`featurenorm.methods.blocknorm.blocknorm_logits_fn`. T = ``odin_temperature``,
    eps = ``odin_epsilon``.
    """

    name = "odin_blocknorm"
