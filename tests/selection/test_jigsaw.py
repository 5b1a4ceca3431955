from collections import Counter

import numpy as np
import pytest
import torch

from featurenorm.selection.jigsaw import apply_permutation, jigsaw, sample_permutations, tile_sizes


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def positive_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Strictly positive, (almost surely) distinct pixel values: a zero in a puzzle means a hole."""
    return torch.rand(batch, channels, size, size, generator=seeded(seed)) + 0.5


def assemble_by_slicing(image: torch.Tensor, permutation: list[int], grid: int) -> torch.Tensor:
    """Reference puzzle for one (C, H, W) image, built tile by tile with numpy's even split."""
    rows = np.array_split(np.arange(image.shape[1]), grid)
    cols = np.array_split(np.arange(image.shape[2]), grid)
    tiles = [image[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1] for r in rows for c in cols]
    out_rows = [torch.cat([tiles[permutation[i * grid + j]] for j in range(grid)], dim=2) for i in range(grid)]
    return torch.cat(out_rows, dim=1)


def test_tile_sizes_split_evenly_larger_first():
    assert tile_sizes(32, 3) == [11, 11, 10]
    assert tile_sizes(28, 3) == [10, 9, 9]
    assert tile_sizes(224, 3) == [75, 75, 74]
    assert tile_sizes(32, 2) == [16, 16]


@pytest.mark.parametrize("size,batch", [(32, 8), (28, 8), (224, 2)])
def test_puzzle_covers_whole_image_with_same_pixels(size, batch):
    images = positive_images(batch, size)
    puzzles = jigsaw(images, 3, seeded(1))
    assert puzzles.shape == images.shape
    assert (puzzles != 0).all()  # no zero border or hole
    assert torch.equal(puzzles.flatten(1).sort(dim=1).values, images.flatten(1).sort(dim=1).values)
    assert not torch.equal(puzzles, images)


@pytest.mark.parametrize("size,grid", [(32, 3), (28, 3), (7, 3), (5, 2), (12, 4), (32, 2)])
def test_puzzle_is_exactly_the_tiles_of_its_permutation(size, grid):
    images = positive_images(6, size)
    puzzles, permutation = jigsaw(images, grid, seeded(2), return_permutation=True)
    assert permutation.shape == (6, grid * grid) and permutation.dtype == torch.long
    # every tile used once -> the multiset of tiles is preserved
    assert torch.equal(permutation.sort(dim=1).values, torch.arange(grid * grid).expand(6, -1))
    for b in range(6):
        assert torch.equal(puzzles[b], assemble_by_slicing(images[b], permutation[b].tolist(), grid))


def test_batched_call_equals_per_image_calls_with_same_permutation():
    images = positive_images(5, 32)
    puzzles, permutation = jigsaw(images, 3, seeded(3), return_permutation=True)
    for b in range(5):
        single = apply_permutation(images[b:b + 1], permutation[b:b + 1], 3)
        assert torch.equal(single, puzzles[b:b + 1])


def test_grid_one_returns_input():
    images = positive_images(3, 8)
    puzzles, permutation = jigsaw(images, 1, seeded(0), return_permutation=True)
    assert torch.equal(puzzles, images)
    assert torch.equal(permutation, torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("size,grid", [(8, 2), (32, 3), (5, 2)])
def test_never_the_identity(size, grid):
    images = positive_images(500, size, channels=1)
    puzzles, permutation = jigsaw(images, grid, seeded(4), return_permutation=True)
    assert not (permutation == torch.arange(grid * grid)).all(dim=1).any()
    assert not (puzzles == images).flatten(1).all(dim=1).any()


def test_equal_tiles_give_uniform_non_identity_permutations():
    draws = sample_permutations(4600, 8, 8, 2, seeded(5))
    counts = Counter(tuple(p) for p in draws.tolist())
    assert len(counts) == 23  # 4! - identity
    assert (0, 1, 2, 3) not in counts
    assert min(counts.values()) > 140 and max(counts.values()) < 260  # expected 200 each


def test_uneven_tiles_also_shuffle_row_and_column_order():
    # 5x5 on a 2x2 grid: rows 3,2 and cols 3,2 -> 4 shape-preserving arrangements, 3 non-identity:
    # swap the rows, swap the columns, or both.
    draws = sample_permutations(3000, 5, 5, 2, seeded(6))
    counts = Counter(tuple(p) for p in draws.tolist())
    assert set(counts) == {(2, 3, 0, 1), (1, 0, 3, 2), (3, 2, 1, 0)}
    assert min(counts.values()) > 850  # expected 1000 each
    # 32x32 on 3x3: the short (10-pixel) row moves to the top in about a third of the puzzles
    draws = sample_permutations(900, 32, 32, 3, seeded(7))
    short_row_on_top = (draws[:, 0] // 3 == 2).float().mean().item()
    assert 0.25 < short_row_on_top < 0.42


def test_same_seed_same_puzzles_other_seed_different():
    images = positive_images(16, 32)
    first, perm_first = jigsaw(images, 3, seeded(8), return_permutation=True)
    again, perm_again = jigsaw(images, 3, seeded(8), return_permutation=True)
    other, perm_other = jigsaw(images, 3, seeded(9), return_permutation=True)
    assert torch.equal(first, again) and torch.equal(perm_first, perm_again)
    assert not torch.equal(perm_first, perm_other)


def test_any_dtype_is_rearranged_exactly():
    images = (torch.arange(2 * 3 * 10 * 10) % 251 + 1).to(torch.uint8).view(2, 3, 10, 10)
    puzzles, permutation = jigsaw(images, 3, seeded(10), return_permutation=True)
    assert puzzles.dtype == torch.uint8
    for b in range(2):
        assert torch.equal(puzzles[b], assemble_by_slicing(images[b], permutation[b].tolist(), 3))


def test_invalid_arguments_raise_user_error():
    images = positive_images(1, 32)
    with pytest.raises(ValueError, match="grid must be a positive integer"):
        jigsaw(images, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        jigsaw(images[0], 3)
    with pytest.raises(ValueError, match="at least 3x3 pixels"):
        jigsaw(torch.ones(1, 1, 2, 8), 3)
    # swapping an 11-wide tile with a 10-wide one breaks the columns of a 32x32 image
    with pytest.raises(ValueError, match="tiles of different sizes"):
        apply_permutation(images, torch.tensor([[2, 1, 0, 3, 4, 5, 6, 7, 8]]), 3)
    with pytest.raises(ValueError, match="every tile index"):
        apply_permutation(images, torch.tensor([[0, 0, 2, 3, 4, 5, 6, 7, 8]]), 3)
