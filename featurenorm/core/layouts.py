"""How a block's output tensor is laid out, so that FeatureNorm reads channels and positions right.

Convolutional blocks return channels-first maps ``(B, C, H, W)``; a vision transformer block returns
tokens ``(B, N, C)``; timm's Swin stages return channels-last maps ``(B, H, W, C)``. FeatureNorm is the
same in every case: per channel, the L2 norm of the rectified values over the positions, then the mean
over channels. :meth:`Layout.channels_first` brings any layout to ``(B, C, *positions)`` for that.

Tokens: the positions are the patch tokens only. The first ``prefix_tokens`` tokens (the class token,
register tokens, DeiT's distillation token: timm's ``num_prefix_tokens``) are left out, because they are
not positions of the image but summaries learned by attention; counting them would add one or more
"positions" whose activation does not scale with the image's content the way the patches' do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("channels_first", "tokens", "channels_last")


@dataclass(frozen=True)
class Layout:
    """A block output's layout.

    Attributes:
        kind: ``channels_first`` (B, C, *spatial) or (B, C); ``tokens`` (B, N, C); ``channels_last``
            (B, H, W, C).
        prefix_tokens: for ``tokens``, how many leading non-patch tokens (class, register, distillation)
            are left out.
    """

    kind: str
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layout '{self.kind}'; one of {', '.join(KINDS)}")
        if self.prefix_tokens < 0 or (self.prefix_tokens and self.kind != "tokens"):
            raise ValueError(f"prefix_tokens {self.prefix_tokens} applies only to the tokens layout and must be >= 0")

    def channels_first(self, z: torch.Tensor) -> torch.Tensor:
        """The same values as (B, C, *positions); a view, no copy.

        Args:
            z: (B, C, ...) for channels_first, (B, N, C) for tokens, (B, H, W, C) for channels_last.

        Raises:
            ValueError: when ``z`` does not have the layout's number of dimensions, or has no patch token.
        """
        if self.kind == "channels_first":
            if z.dim() < 2:
                raise ValueError(f"a channels_first output needs (B, C, ...), got shape {tuple(z.shape)}")
            return z
        if self.kind == "tokens":
            if z.dim() != 3 or z.shape[1] <= self.prefix_tokens:
                raise ValueError(f"a tokens output needs (B, N, C) with more than {self.prefix_tokens} prefix "
                                 f"token(s), got shape {tuple(z.shape)}")
            return z[:, self.prefix_tokens:].transpose(1, 2)
        if z.dim() != 4:
            raise ValueError(f"a channels_last output needs (B, H, W, C), got shape {tuple(z.shape)}")
        return z.permute(0, 3, 1, 2)


CHANNELS_FIRST = Layout("channels_first")
CHANNELS_LAST = Layout("channels_last")


def tokens(prefix_tokens: int = 0) -> Layout:
    """The (B, N, C) layout whose first ``prefix_tokens`` tokens are not patches."""
    return Layout("tokens", prefix_tokens)
