"""Jigsaw puzzles: pseudo-OOD images for NormRatio block selection.

Yu et al. (CVPR 2023, arXiv 2212.02295) cut each in-distribution image into a grid x grid
puzzle and shuffle the tiles; the puzzle keeps the image's low-level statistics but destroys
its semantics, so a block whose FeatureNorm drops on puzzles responds to ID content.

Unlike the official code, which cropped the image to a multiple of the grid and left a zero
border, every pixel is kept here: when a side is not divisible by the grid, tile sizes differ
by at most one pixel (32 -> 11, 11, 10). A tile only moves to a slot of its own shape, and the
order of the row heights and of the column widths may itself be shuffled, so the output is a
full image made of exactly the input's tiles.

Permutation convention: ``permutation[b, s]`` is the row-major index ``r * grid + c`` of the
source tile placed in output slot ``s`` (also row-major).
"""
from __future__ import annotations

import torch



def tile_sizes(size: int, grid: int) -> list[int]:
    """Split ``size`` pixels into ``grid`` tiles as evenly as possible, larger tiles first.

    Example: ``tile_sizes(32, 3) == [11, 11, 10]``.
    """
    base, extra = divmod(size, grid)
    return [base + 1] * extra + [base] * (grid - extra)


def _check(images: torch.Tensor, grid: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"jigsaw needs a (B, C, H, W) batch of images, got shape {tuple(images.shape)}")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"jigsaw grid must be a positive integer, got {grid!r}")
    height, width = images.shape[-2:]
    if height < grid or width < grid:
        raise ValueError(f"a {grid}x{grid} jigsaw needs images of at least {grid}x{grid} pixels, got {height}x{width}")


def _draw_permutations(count: int, height: int, width: int, grid: int,
                       generator: torch.Generator | None) -> torch.Tensor:
    """Uniformly random shape-preserving tile arrangements (the identity included).

    Three independent draws: an order of the row heights, an order of the column widths
    (together they fix the shape of every output slot), then a uniformly random bijection
    between slots and source tiles within each shape class. Every layout has the same number
    of bijections, so the arrangement is uniform over all valid ones; with equal tiles it is
    a uniform permutation of all grid^2 tiles.

    Returns:
        (count, grid*grid) long, on the generator's device (CPU without a generator).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    # Shape class of a tile row / column: 0 for the long size (listed first), 1 for the short one.
    heights = torch.tensor(tile_sizes(height, grid), device=device)
    widths = torch.tensor(tile_sizes(width, grid), device=device)
    row_class, col_class = (heights != heights[0]).long(), (widths != widths[0]).long()

    def rand_order(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device).argsort(dim=-1)

    row_layout = rand_order(count, grid)  # output row i has the height of source row row_layout[i]
    col_layout = rand_order(count, grid)
    slot_class = (row_class[row_layout][:, :, None] * 2 + col_class[col_layout][:, None, :]).flatten(1)
    tile_class = (row_class[:, None] * 2 + col_class[None, :]).flatten().expand(count, -1)

    # Sources: random order, then stably grouped by class -> a random order within each class.
    shuffled = rand_order(count, grid * grid)
    regroup = tile_class.gather(1, shuffled).argsort(dim=1, stable=True)
    sources = shuffled.gather(1, regroup)
    # Slots grouped by class in position order; class counts agree, so the t-th slot
    # receives the t-th source and shapes match.
    slots = slot_class.argsort(dim=1, stable=True)
    return torch.empty_like(sources).scatter_(1, slots, sources)


def sample_permutations(count: int, height: int, width: int, grid: int = 3,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Random non-identity, shape-preserving tile permutations for ``count`` images.

    Images whose draw came out as the identity are redrawn (only those). For grid 1 the only
    permutation is the identity, which is returned.

    Returns:
        (count, grid*grid) long on the generator's device (CPU without a generator).
    """
    if grid == 1:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.zeros(count, 1, dtype=torch.long, device=device)
    permutations = _draw_permutations(count, height, width, grid, generator)
    identity = torch.arange(grid * grid, device=permutations.device)
    redraw = (permutations == identity).all(dim=1).nonzero().flatten()
    while redraw.numel():
        permutations[redraw] = _draw_permutations(redraw.numel(), height, width, grid, generator)
        redraw = redraw[(permutations[redraw] == identity).all(dim=1)]
    return permutations


def _source_index(permutation: torch.Tensor, height: int, width: int, grid: int) -> torch.Tensor:
    """Flat source pixel index ``y * W + x`` for every output pixel.

    Args:
        permutation: (B, grid*grid) long.

    Returns:
        (B, H, W) long, on the permutation's device.
    """
    batch, device = permutation.shape[0], permutation.device
    heights = torch.tensor(tile_sizes(height, grid), device=device)
    widths = torch.tensor(tile_sizes(width, grid), device=device)
    row_starts = heights.cumsum(0) - heights  # source tile offsets
    col_starts = widths.cumsum(0) - widths
    grid_perm = permutation.view(batch, grid, grid)
    source_row, source_col = grid_perm // grid, grid_perm % grid  # (B, grid, grid)

    # Output layout: slot row i is as high as the tile in its first column, slot column j as
    # wide as the tile in its first row.
    out_heights, out_widths = heights[source_row[:, :, 0]], widths[source_col[:, 0, :]]
    out_row_starts = (out_heights.cumsum(1) - out_heights).contiguous()
    out_col_starts = (out_widths.cumsum(1) - out_widths).contiguous()
    ys = torch.arange(height, device=device).expand(batch, height).contiguous()
    xs = torch.arange(width, device=device).expand(batch, width).contiguous()
    slot_row = torch.searchsorted(out_row_starts, ys, right=True) - 1  # (B, H)
    slot_col = torch.searchsorted(out_col_starts, xs, right=True) - 1  # (B, W)
    dy = ys - out_row_starts.gather(1, slot_row)
    dx = xs - out_col_starts.gather(1, slot_col)

    tile_origin = row_starts[source_row] * width + col_starts[source_col]  # (B, grid, grid)
    origin_rows = tile_origin.gather(1, slot_row[:, :, None].expand(batch, height, grid))  # (B, H, grid)
    origin = origin_rows.gather(2, slot_col[:, None, :].expand(batch, height, width))  # (B, H, W)
    return origin + dy[:, :, None] * width + dx[:, None, :]


def _check_permutation(permutation: torch.Tensor, batch: int, height: int, width: int, grid: int) -> None:
    if permutation.shape != (batch, grid * grid) or permutation.dtype != torch.long:
        raise ValueError(f"a jigsaw permutation for {batch} images on a {grid}x{grid} grid must be a "
                        f"({batch}, {grid * grid}) long tensor, got {tuple(permutation.shape)} {permutation.dtype}")
    ordered = permutation.sort(dim=1).values
    if not (ordered == torch.arange(grid * grid, device=permutation.device)).all():
        raise ValueError("each row of a jigsaw permutation must hold every tile index 0..grid*grid-1 once")
    heights = torch.tensor(tile_sizes(height, grid), device=permutation.device)
    widths = torch.tensor(tile_sizes(width, grid), device=permutation.device)
    grid_perm = permutation.view(batch, grid, grid)
    tile_heights, tile_widths = heights[grid_perm // grid], widths[grid_perm % grid]
    if not ((tile_heights == tile_heights[:, :, :1]).all() and (tile_widths == tile_widths[:, :1, :]).all()):
        raise ValueError(f"the jigsaw permutation puts tiles of different sizes in one row or column of a "
                        f"{height}x{width} image; only tiles of the same shape may be swapped")


def apply_permutation(images: torch.Tensor, permutation: torch.Tensor, grid: int) -> torch.Tensor:
    """Rearrange the tiles of each image by its permutation (one gather over the whole batch).

    Args:
        images: (B, C, H, W), any dtype.
        permutation: (B, grid*grid) long; ``permutation[b, s]`` is the source tile of output slot ``s``.
        grid: tiles per side.

    Returns:
        (B, C, H, W) like ``images``.
    """
    _check(images, grid)
    batch, _, height, width = images.shape
    # checked where it lives (the CPU, usually) before it moves: a check on the GPU would stall it
    _check_permutation(permutation, batch, height, width, grid)
    return _rearrange(images, permutation.to(images.device, non_blocking=True), grid)


def _rearrange(images: torch.Tensor, permutation: torch.Tensor, grid: int) -> torch.Tensor:
    """:func:`apply_permutation` without the checks, for permutations drawn here."""
    batch, channels, height, width = images.shape
    index = _source_index(permutation, height, width, grid).view(batch, 1, height * width)
    flat = images.reshape(batch, channels, height * width)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def jigsaw(images: torch.Tensor, grid: int = 3, generator: torch.Generator | None = None,
           return_permutation: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Jigsaw puzzles of a batch: each image's grid x grid tiles shuffled, never left in place.

    Every pixel is kept (uneven tiles differ by at most one pixel), tiles only move to slots
    of their own shape, and the permutation is uniformly random over the valid non-identity
    arrangements (for grid >= 2). Grid 1 returns a copy of the input.

    Args:
        images: (B, C, H, W), any dtype, on any device.
        grid: tiles per side.
        generator: seeds the puzzles; on CPU or on the images' device. None uses the global CPU RNG.
        return_permutation: also return the (B, grid*grid) long permutation (see module docstring).

    Returns:
        (B, C, H, W) puzzles, and the permutation on the images' device if requested.
    """
    _check(images, grid)
    batch, _, height, width = images.shape
    permutation = sample_permutations(batch, height, width, grid, generator).to(images.device)
    puzzles = images.clone() if grid == 1 else _rearrange(images, permutation, grid)
    return (puzzles, permutation) if return_permutation else puzzles
