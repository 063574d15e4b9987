"""Counter-based noise keyed by ``(seed, sample_id)``: a map does not depend on the batch, the
pass or the device it was computed on.

On a CPU the methods draw from one torch generator per image
(:func:`saliency_fingerprints.runtime.seed_generator`); on a GPU, where one CPU generator per
image cannot keep up with the passes, SmoothGrad draws :func:`keyed_normal` on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 32-bit values held in int64, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a well-mixing bijection of 32-bit integers, on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_normal(
    seed: int,
    sample_ids: Sequence[int] | torch.Tensor,
    count: int,
    device: torch.device | str = "cpu",
    max_elements: int = 1 << 23,
) -> torch.Tensor:
    """Standard-normal float32 draws ``(len(sample_ids), count)``, computed on ``device``.

    Counter-based: draw ``j`` of a row is a fixed function of ``(seed, sample id, j)`` (two
    32-bit hashes give two uniforms, Box-Muller turns them into normals), so a row does not depend
    on the other ids, the batch or the device; integer hashing is exact everywhere, the float
    transform agrees across devices to rounding. Used for SmoothGrad's noise on GPUs, where
    drawing with one CPU generator per image cannot keep up with the passes. Uniforms have 24
    bits: draws are capped at about 5.8 standard deviations.
    """
    ids = torch.as_tensor(sample_ids, dtype=torch.int64).to(device)
    key = _hash32(torch.full_like(ids, (seed & _M32) ^ 0x5EED5EED))
    key = _hash32(key ^ ((seed >> 32) & _M32))
    key = _hash32(key ^ (ids & _M32))
    key = _hash32(key ^ ((ids >> 32) & _M32)).unsqueeze(1)
    half = (count + 1) // 2
    counters = _hash32(torch.arange(2 * half, dtype=torch.int64, device=device))
    out = torch.empty((len(ids), 2 * half), dtype=torch.float32, device=device)
    rows = max(1, max_elements // max(1, 2 * half))  # bound the int64 temporaries
    for a in range(0, len(ids), rows):
        bits = _hash32(counters.unsqueeze(0) ^ key[a : a + rows]) >> 8  # 24 random bits
        uniform = (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
        radius = torch.sqrt(-2.0 * torch.log(uniform[:, :half]))
        angle = (2.0 * math.pi) * uniform[:, half:]
        out[a : a + rows, :half] = radius * torch.cos(angle)
        out[a : a + rows, half:] = radius * torch.sin(angle)
    return out[:, :count]
