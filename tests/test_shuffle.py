"""Pixel-shuffled controls: values kept per map, positions scrambled, modes as documented."""

import numpy as np
import pytest

from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.shuffle import apply_variant, permutations, shuffle_pixels


def maps(n=6, c=3, h=5, w=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("mode", ["per_map", "fixed"])
def test_each_map_keeps_its_multiset_of_values(mode):
    x = maps()
    out = shuffle_pixels(x, mode, seed=1, keys=[(0, i) for i in range(len(x))])
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):
        assert np.array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
        assert not np.array_equal(a, b)


def test_channels_of_a_pixel_move_together():
    x = maps()
    out = shuffle_pixels(x, "per_map", seed=1, keys=[(0, i) for i in range(len(x))])
    for a, b in zip(x, out, strict=True):
        pixels_before = {tuple(v) for v in a.reshape(3, -1).T}
        pixels_after = {tuple(v) for v in b.reshape(3, -1).T}
        assert pixels_before == pixels_after


def test_fixed_uses_one_permutation_per_map_mode_many():
    keys = [(0, i) for i in range(8)]
    fixed = permutations("fixed", 25, seed=4, keys=keys)
    assert all(np.array_equal(fixed[0], p) for p in fixed)
    per_map = permutations("per_map", 25, seed=4, keys=keys)
    assert len({tuple(p) for p in per_map}) == len(keys)
    for p in np.concatenate([fixed, per_map]):
        assert np.array_equal(np.sort(p), np.arange(25))


def test_shuffles_are_deterministic_and_keyed():
    x = maps()
    keys = [(7, i) for i in range(len(x))]
    a = shuffle_pixels(x, "per_map", 3, keys)
    assert np.array_equal(a, shuffle_pixels(x, "per_map", 3, keys))
    assert not np.array_equal(a, shuffle_pixels(x, "per_map", 4, keys))
    # a map's permutation depends on its key, not its position in the batch
    b = shuffle_pixels(x[::-1].copy(), "per_map", 3, keys[::-1])
    assert np.array_equal(a, b[::-1])


def test_variants():
    x = maps()
    ids = np.arange(len(x))
    assert apply_variant(x, "original", 0, "cnn2-seed0", ids) is x
    a = apply_variant(x, "shuffled_per_map", 0, "cnn2-seed0", ids)
    b = apply_variant(x, "shuffled_per_map", 0, "cnn2-seed1", ids)
    assert not np.array_equal(a, b)  # every map of every primary gets its own permutation
    with pytest.raises(ConfigError, match="variant 'rotated' is unknown"):
        apply_variant(x, "rotated", 0, "p", ids)
    # original maps need no shuffle seed (it is left out of their params); shuffled ones do
    assert apply_variant(x, "original", None, "cnn2-seed0", ids) is x
    with pytest.raises(ConfigError, match="needs secondary.shuffle_seed"):
        apply_variant(x, "shuffled_fixed", None, "cnn2-seed0", ids)
    with pytest.raises(ConfigError, match="shuffle mode"):
        permutations("columns", 4, 0, [(0, 1)])
