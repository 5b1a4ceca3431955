"""Pseudo-OOD images made from ID training images only, for block selection.

Yu et al. (CVPR 2023, arXiv 2212.02295) select the block by how its FeatureNorm separates ID
images from their own jigsaw puzzles. Whether a puzzle looks OOD to a block depends on the data:
puzzles of white strokes on black keep the digits' local statistics, so most blocks see them as
ID. The other kinds here break different things (spatial layout, texture, contrast, object
identity), so that a block's response can be checked against more than one kind of "not ID".

A kind is a function registered under a name::

    kind(images, generator, *, mean, std, grid) -> pseudo

- ``images``: (B, C, H, W) float, normalized ID images (the evaluation transform), on any device.
- ``generator``: a ``torch.Generator`` on the images' device; every random draw goes through it.
- ``mean``, ``std``: the per-channel normalization (one float per channel, or one for all), so that a kind can tell
  which values are valid pixels; ``grid``: the jigsaw grid. A kind ignores what it does not use.
- returns (B, C, H, W), same dtype and device, pseudo-image i made from ID image i (and, for
  ``mixup``, one other image of the batch).

Add one with :func:`register_pseudo_ood`; its name then works in ``--pseudo-ood`` and ``pseudo_ood``.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F

from ..core.block_rows import JIGSAW
from ..errors import check_new_name
from .jigsaw import apply_permutation, jigsaw

# Strong blur: the Gaussian's std as a fraction of the image side (4 px on 32 x 32).
BLUR_SIGMA_FRACTION = 1 / 8
# Mixup weight of the first image: an even blend, so that neither image dominates.
MIXUP_WEIGHT = 0.5


class PseudoOODKind(Protocol):
    def __call__(self, images: torch.Tensor, generator: torch.Generator, *, mean: Sequence[float],
                 std: Sequence[float], grid: int) -> torch.Tensor: ...


PSEUDO_OOD: dict[str, PseudoOODKind] = {}


def register_pseudo_ood(name: str) -> Callable[[PseudoOODKind], PseudoOODKind]:
    """Decorator: make ``fn`` available as pseudo-OOD kind ``name``.

    Raises:
        ValueError: a name that is not letters, digits and '_', or that another function holds
            (:func:`featurenorm.errors.check_new_name`: the rule of every registry).
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"a pseudo-OOD kind needs a name of letters, digits and '_', got {name!r}")

    def register(fn: PseudoOODKind) -> PseudoOODKind:
        check_new_name(PSEUDO_OOD, name, fn, "pseudo-OOD kind")
        PSEUDO_OOD[name] = fn
        return fn
    return register


def pseudo_ood_names() -> list[str]:
    """The registered kinds, in registration order (the built-in ones first)."""
    return list(PSEUDO_OOD)


def parse_pseudo_ood(kinds: str | Iterable[str]) -> list[str]:
    """``"jigsaw,blur"``, ``"all"`` or a list of names -> the list of kinds, duplicates dropped.

    Raises:
        ValueError: an unknown or empty list of kinds.
    """
    names = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else [str(k).strip() for k in kinds]
    names = [k for k in names if k]
    if names == ["all"]:
        return pseudo_ood_names()
    unknown = [k for k in names if k not in PSEUDO_OOD]
    if unknown:
        raise ValueError(f"unknown pseudo-OOD kind '{unknown[0]}'; use some of: {', '.join(PSEUDO_OOD)} (or all)")
    if not names:
        raise ValueError(f"no pseudo-OOD kind given; use some of: {', '.join(PSEUDO_OOD)} (or all)")
    return list(dict.fromkeys(names))


def kind_generator(seed: int, kind: str, device: torch.device | str, stream: int = 0) -> torch.Generator:
    """A generator on ``device`` for one kind: the same ``(seed, kind, stream)`` always gives the same draws,
    and adding or removing other kinds does not change them. ``stream`` separates torchrun ranks."""
    mixed = (seed * 1_000_003 + zlib.crc32(kind.encode()) * 7919 + stream) % (2 ** 63)
    return torch.Generator(device=device).manual_seed(mixed)


def make_pseudo_ood(kind: str, images: torch.Tensor, generator: torch.Generator, *, mean: Sequence[float],
                    std: Sequence[float], grid: int = 3, permutations: torch.Tensor | None = None) -> torch.Tensor:
    """Pseudo-OOD images of one kind for a batch. images (B, 3, H, W) -> (B, 3, H, W).

    ``permutations`` (B, grid*grid), the puzzle of each image drawn for the whole data set, goes to the
    jigsaw kind only (other kinds do not take it), so that each puzzle stays tied to its image.

    Raises:
        ValueError: an unknown kind, or a kind that returned the wrong shape.
    """
    if kind not in PSEUDO_OOD:
        raise ValueError(f"unknown pseudo-OOD kind '{kind}'; use one of: {', '.join(PSEUDO_OOD)}")
    if images.dim() != 4:
        raise ValueError(f"pseudo-OOD images are made from a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    tied = {"permutations": permutations} if kind == JIGSAW and permutations is not None else {}
    pseudo = PSEUDO_OOD[kind](images, generator, mean=mean, std=std, grid=grid, **tied)
    if pseudo.shape != images.shape:
        raise ValueError(f"pseudo-OOD kind '{kind}' returned shape {tuple(pseudo.shape)} for images of shape "
                         f"{tuple(images.shape)}; a kind must keep the shape")
    return pseudo


def _channel_view(values: Sequence[float], images: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` as (1, C, 1, 1) for images (B, C, H, W); one value stands for every channel."""
    values = list(values)
    if len(values) not in (1, images.shape[1]):
        raise ValueError(f"{len(values)} normalization values for {images.shape[1]}-channel images; give one per "
                         "channel")
    return torch.as_tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------ the kinds
@register_pseudo_ood(JIGSAW)
def jigsaw_kind(images: torch.Tensor, generator: torch.Generator, *, grid: int,
                permutations: torch.Tensor | None = None, **_) -> torch.Tensor:
    """The paper's kind: each image cut into grid x grid tiles, shuffled (never left in place).

    Keeps: every pixel, and the content of each tile (strokes, edges, local texture and colour).
    Destroys: the arrangement of the tiles, hence the object's global shape.
    ``permutations`` (B, grid*grid): each image's puzzle, drawn beforehand; else drawn from ``generator``.
    See :func:`featurenorm.selection.jigsaw.jigsaw`.
    """
    if permutations is not None:
        return images.clone() if grid == 1 else apply_permutation(images, permutations, grid)
    return jigsaw(images, grid, generator)


@register_pseudo_ood("pixel_shuffle")
def pixel_shuffle(images: torch.Tensor, generator: torch.Generator, **_) -> torch.Tensor:
    """Each image's pixels moved to random positions (one permutation per image, shared by its channels).

    Keeps: the exact colour histogram of the image (every RGB triple, once each).
    Destroys: all spatial structure: edges, strokes, texture, shape.
    """
    batch, channels, height, width = images.shape
    order = torch.rand(batch, height * width, generator=generator, device=images.device).argsort(dim=1)
    flat = images.reshape(batch, channels, height * width)
    return flat.gather(2, order[:, None, :].expand(batch, channels, -1)).view_as(images)


@register_pseudo_ood("noise")
def noise(images: torch.Tensor, generator: torch.Generator, *, mean: Sequence[float], std: Sequence[float],
          **_) -> torch.Tensor:
    """Gaussian noise with each image's own per-channel mean and std, clipped to the valid pixel range.

    Keeps: the first two moments of each channel of the image (up to the clipping), i.e. its
    brightness, colour cast and contrast.
    Destroys: everything else: the histogram's shape, all spatial correlation, edges, texture.
    ``mean``/``std`` (the normalization) give the valid range, pixel 0..1 -> ((0 - m) / s, (1 - m) / s).
    """
    channel_mean = images.mean(dim=(2, 3), keepdim=True)
    channel_std = images.std(dim=(2, 3), keepdim=True) if images[0, 0].numel() > 1 else torch.zeros_like(channel_mean)
    draws = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    mean_t, std_t = _channel_view(mean, images), _channel_view(std, images)
    return torch.maximum(torch.minimum(channel_mean + channel_std * draws, (1 - mean_t) / std_t), -mean_t / std_t)


@register_pseudo_ood("mixup")
def mixup(images: torch.Tensor, generator: torch.Generator, **_) -> torch.Tensor:
    """An even blend ``0.5 x_i + 0.5 x_j`` of each image with another image of the batch.

    The partners follow one random cycle through the batch, so no image is blended with itself
    (in a batch of one, the only image is returned unchanged). Keeps: the pixel statistics,
    strokes and textures of two ID images (at half contrast). Destroys: a single identifiable
    object: two objects of (usually) different classes lie on top of each other.
    """
    batch = images.shape[0]
    cycle = torch.rand(batch, generator=generator, device=images.device).argsort()
    partner = torch.empty_like(cycle)
    partner[cycle] = cycle.roll(-1)
    return MIXUP_WEIGHT * images + (1 - MIXUP_WEIGHT) * images[partner]


def gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A normalized 1-D Gaussian of std ``sigma`` over +-3 sigma: (2r + 1,), r = ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


@register_pseudo_ood("blur")
def blur(images: torch.Tensor, generator: torch.Generator, **_) -> torch.Tensor:
    """A strong Gaussian blur, std = side / 8 (4 px on 32 x 32), edges replicated (deterministic).

    Keeps: the coarse layout of brightness and colour (the low spatial frequencies), the mean.
    Destroys: edges, strokes and texture (the high frequencies), and most of the contrast.
    """
    batch, channels, height, width = images.shape
    kernel = gaussian_kernel(BLUR_SIGMA_FRACTION * min(height, width), images.device, images.dtype)
    radius = kernel.numel() // 2
    flat = images.reshape(batch * channels, 1, height, width)
    # separable: rows then columns; replicated edges work for any kernel size, unlike reflection
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.view_as(images)
