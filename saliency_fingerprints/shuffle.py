"""Pixel-shuffled controls: do fingerprints survive when spatial structure is destroyed?

Two modes, both permuting pixel *positions* (all channels of a pixel move together):

* ``per_map`` - an independent seeded permutation for every map (the paper's wording): only the
  map's value histogram survives.
* ``fixed`` - one seeded permutation shared by all maps: spatial structure is scrambled but still
  consistent across maps, so a convolutional secondary can still learn position-wise statistics.

A map's permutation depends only on ``(seed, primary key, sample id)``, so the transform is
deterministic and gives the same shuffled test maps to every job that needs them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

VARIANTS = {"original": None, "shuffled_per_map": "per_map", "shuffled_fixed": "fixed"}


def primary_key(primary: str) -> int:
    """A stable integer for a primary's name (used to key its maps' permutations)."""
    return zlib.crc32(primary.encode())


def permutations(mode: str, n_pixels: int, seed: int, keys: Sequence[Sequence[int]]) -> np.ndarray:
    """``(len(keys), n_pixels)`` permutations: one per key (``per_map``) or one for all."""
    if mode == "fixed":
        perm = np.random.default_rng([seed, 0xF1C5]).permutation(n_pixels)
        return np.broadcast_to(perm, (len(keys), n_pixels))
    if mode == "per_map":
        return (
            np.stack(
                [
                    np.random.default_rng([seed, *map(int, key)]).permutation(n_pixels)
                    for key in keys
                ]
            )
            if len(keys)
            else np.empty((0, n_pixels), dtype=np.int64)
        )
    raise ConfigError(f"shuffle mode {mode!r} is unknown; expected 'per_map' or 'fixed'")


def shuffle_pixels(
    maps: np.ndarray, mode: str, seed: int, keys: Sequence[Sequence[int]]
) -> np.ndarray:
    """Permute the pixel positions of ``maps`` ``(N, C, H, W)``; ``keys[i]`` identifies map i."""
    n, c, h, w = maps.shape
    perms = permutations(mode, h * w, seed, keys)
    flat = maps.reshape(n, c, h * w)
    return np.take_along_axis(flat, perms[:, None, :], axis=2).reshape(n, c, h, w)


def apply_variant(
    maps: np.ndarray, variant: str, seed: int | None, primary: str, sample_ids: np.ndarray
) -> np.ndarray:
    """The maps a secondary of ``variant`` sees (``seed``: ``secondary.shuffle_seed``, needed by
    the shuffled variants only)."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r} is unknown; expected one of {sorted(VARIANTS)}")
    mode = VARIANTS[variant]
    if mode is None:
        return maps
    if seed is None:
        raise ConfigError(f"variant {variant!r} needs secondary.shuffle_seed; got none")
    key = primary_key(primary)
    return shuffle_pixels(maps, mode, int(seed), [(key, int(s)) for s in sample_ids])
