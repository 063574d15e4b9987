"""How a saliency map becomes a secondary's input (config ``secondary.preprocess``), per map:

* ``reduce``: ``abs_sum`` (sum of |value| over channels; PAIR's grayscale visualisation),
  ``sum``, ``abs_max`` or ``none`` (keep channels);
* ``clip_percentile``: clip at this percentile of the reduced map (99, as PAIR) or ``null``;
* then scale by the map's largest magnitude, to [0, 1] (or [-1, 1] for signed maps).

NumPy only: the secondaries (:mod:`.secondary`) and the map figures (:mod:`.plots`) share it.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

REDUCTIONS = ("abs_sum", "sum", "abs_max", "none")


def preprocess_maps(
    maps: np.ndarray, reduce: str = "abs_sum", clip_percentile: float | None = 99.0
) -> np.ndarray:
    """``(N, C, H, W)`` raw maps -> ``(N, C', H, W)`` float32 secondary inputs."""
    maps = maps.astype(np.float32, copy=False)
    if reduce == "abs_sum":
        out = np.abs(maps).sum(axis=1, keepdims=True)
    elif reduce == "sum":
        out = maps.sum(axis=1, keepdims=True)
    elif reduce == "abs_max":
        out = np.abs(maps).max(axis=1, keepdims=True)
    elif reduce == "none":
        out = maps.copy()
    else:
        raise ConfigError(
            f"secondary.preprocess.reduce {reduce!r} is unknown; expected {REDUCTIONS}"
        )
    flat = out.reshape(len(out), -1)
    magnitude = np.abs(flat)
    if clip_percentile is not None:
        limit = np.percentile(magnitude, clip_percentile, axis=1, keepdims=True)
        flat = np.clip(flat, -limit, limit)
        magnitude = np.abs(flat)
    scale = magnitude.max(axis=1, keepdims=True)
    flat = flat / np.where(scale > 0, scale, 1.0)
    return flat.reshape(out.shape).astype(np.float32)
