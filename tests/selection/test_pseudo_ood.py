"""The pseudo-OOD kinds: what each keeps and destroys, checked on numbers; seeding; the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from featurenorm.selection import pseudo_ood
from featurenorm.selection.jigsaw import apply_permutation, sample_permutations
from featurenorm.selection.pseudo_ood import (PSEUDO_OOD, kind_generator, make_pseudo_ood, parse_pseudo_ood,
                                         pseudo_ood_names, register_pseudo_ood)

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def make(kind: str, x: torch.Tensor, seed: int = 0, **options) -> torch.Tensor:
    options = {"mean": MEAN, "std": STD, "grid": 3, **options}
    return make_pseudo_ood(kind, x, torch.Generator().manual_seed(seed), **options)


def test_builtin_kinds_in_order():
    assert pseudo_ood_names()[:5] == ["jigsaw", "pixel_shuffle", "noise", "mixup", "blur"]
    assert parse_pseudo_ood(" blur, jigsaw,blur ") == ["blur", "jigsaw"]
    with pytest.raises(ValueError, match="unknown pseudo-OOD kind 'swirl'"):
        parse_pseudo_ood("jigsaw,swirl")
    with pytest.raises(ValueError, match="no pseudo-OOD kind given"):
        parse_pseudo_ood(" , ")


@pytest.mark.parametrize("kind", ["jigsaw", "pixel_shuffle", "noise", "mixup", "blur"])
def test_same_seed_same_images_and_shape_kept(kind):
    x = images()
    first, again = make(kind, x, seed=3), make(kind, x, seed=3)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, x)


def test_jigsaw_kind_is_the_puzzle_of_the_drawn_permutation():
    x = images()
    expected = apply_permutation(x, sample_permutations(4, 16, 16, 3, torch.Generator().manual_seed(5)), 3)
    assert torch.equal(make("jigsaw", x, seed=5), expected)


def test_pixel_shuffle_keeps_each_images_rgb_triples_and_moves_them():
    x = images(batch=3, size=8)
    shuffled = make("pixel_shuffle", x, seed=1)
    for original, out in zip(x, shuffled):
        # the same multiset of RGB triples: sort the (H*W, 3) rows lexicographically
        before, after = original.flatten(1).T.numpy(), out.flatten(1).T.numpy()
        np.testing.assert_array_equal(before[np.lexsort(before.T[::-1])], after[np.lexsort(after.T[::-1])])
        assert (before != after).any(axis=1).mean() > 0.9  # almost every pixel moved


def test_noise_matches_each_images_channel_mean_and_std():
    # pixels in [0.3, 0.7] of a [0, 1] range that the normalization maps to [-0.5, 0.5]/0.25: no clipping
    x = 0.3 + 0.4 * torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = make("noise", x, mean=[0.0] * 3, std=[1.0] * 3)
    np.testing.assert_allclose(noise.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.01)
    np.testing.assert_allclose(noise.std(dim=(2, 3)), x.std(dim=(2, 3)), rtol=0.05)
    # not uniform like the input: about 5% of a Gaussian lies beyond 1.96 std of its mean, none of a uniform
    z = (noise - noise.mean(dim=(2, 3), keepdim=True)) / noise.std(dim=(2, 3), keepdim=True)
    assert 0.03 < float((z.abs() > 1.96).double().mean()) < 0.07


def test_noise_is_clipped_to_the_valid_pixel_range():
    x = images(batch=2, size=32)  # uniform in [-1, 1]: pixel 0..1 under mean 0.5, std 0.5
    noise = make("noise", x, mean=[0.5, 0.2, 0.5], std=[0.5, 0.25, 0.5])
    low = torch.tensor([-1.0, -0.8, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    high = torch.tensor([1.0, 3.2, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert bool(((noise >= low) & (noise <= high)).all())
    assert bool((noise[:, 0] == -1.0).any()) and bool((noise[:, 0] == 1.0).any())  # clipping happened


def test_mixup_blends_each_image_evenly_with_another_one():
    x = images(batch=5)
    mixed = make("mixup", x, seed=2)
    partners = []
    for i in range(5):
        other = 2 * mixed[i] - x[i]
        matches = [j for j in range(5) if torch.allclose(other, x[j], atol=1e-12)]
        assert len(matches) == 1 and matches[0] != i
        partners.append(matches[0])
    assert sorted(partners) == list(range(5))
    seen, j = {0}, partners[0]  # one cycle through the whole batch
    while j != 0:
        seen.add(j)
        j = partners[j]
    assert seen == set(range(5))


def test_blur_equals_scipys_gaussian_filter_with_nearest_edges():
    x = images(batch=2, size=32)
    blurred = make("blur", x)
    # sigma = 32 / 8 = 4 px, kernel +-3 sigma, edges replicated; not blurred across channels
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, 4, 4), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-12)


def test_kind_generators_are_seeded_per_kind():
    draw = lambda seed, kind: torch.rand(4, generator=kind_generator(seed, kind, "cpu"))  # noqa: E731
    assert torch.equal(draw(0, "noise"), draw(0, "noise"))
    assert not torch.equal(draw(0, "noise"), draw(0, "mixup"))
    assert not torch.equal(draw(0, "noise"), draw(1, "noise"))
    assert not torch.equal(torch.rand(4, generator=kind_generator(0, "noise", "cpu", stream=1)), draw(0, "noise"))


def test_a_user_can_register_a_kind(monkeypatch):
    monkeypatch.setattr(pseudo_ood, "PSEUDO_OOD", dict(PSEUDO_OOD))

    @register_pseudo_ood("negative")
    def negative(images, generator, **_):
        return -images

    x = images()
    assert "negative" in pseudo_ood_names() and parse_pseudo_ood("jigsaw,negative") == ["jigsaw", "negative"]
    assert torch.equal(make("negative", x), -x)

    @register_pseudo_ood("cropped")
    def cropped(images, generator, **_):
        return images[..., 1:]

    with pytest.raises(ValueError, match="'cropped' returned shape"):
        make("cropped", x)
    with pytest.raises(ValueError, match="a name of letters"):
        register_pseudo_ood("no spaces")


def test_a_taken_name_is_refused_and_the_same_function_again_is_no_change(monkeypatch):
    monkeypatch.setattr(pseudo_ood, "PSEUDO_OOD", dict(PSEUDO_OOD))
    with pytest.raises(ValueError, match="pseudo-OOD kind name 'jigsaw' is registered already"):
        register_pseudo_ood("jigsaw")(lambda images, generator, **_: images)
    before = dict(pseudo_ood.PSEUDO_OOD)
    register_pseudo_ood("jigsaw")(pseudo_ood.jigsaw_kind)
    assert pseudo_ood.PSEUDO_OOD == before


def test_the_jigsaw_goes_through_the_registry(monkeypatch):
    """A jigsaw registered in place of the paper's is the one block selection measures."""
    from featurenorm.selection.collect import collect_block_norms

    monkeypatch.setattr(pseudo_ood, "PSEUDO_OOD", {**PSEUDO_OOD, "jigsaw": lambda images, generator, **_: images})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    norms = collect_block_norms(model, [images().float()], ["0", "2"], generator=torch.Generator().manual_seed(0),
                                progress=False)
    assert all(torch.equal(norms.id[block], norms.jigsaw[block]) for block in ("0", "2"))
