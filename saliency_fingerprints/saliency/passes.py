"""The pass planner: how many rows go through the model per forward+backward pass.

The throughput of a pass depends on its size (on small CPUs 64 rows ran ~1.7x faster per image
than 256), so every engine folds its gradient evaluations into passes of ``pass_size`` rows.
The reference is the *limit*, the rows per second of one forward+backward pass to the input at
the best pass size on the device at hand (:func:`pass_throughput`); a method that needs k
gradient evaluations per map cannot beat ``limit / k`` maps per second. ``pass_size: auto``
measures that best size (:func:`tune_pass_size`) instead of assuming it; an integer is taken as
it is (:func:`resolve_pass_size`). See ``benchmarks/`` and BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import input_gradients

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU), so timers measure the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pass_throughput(
    model: nn.Module, rows: torch.Tensor, min_time: float = 0.2, min_passes: int = 2
) -> float:
    """Rows per second of :func:`input_gradients` on passes of ``len(rows)`` rows.

    One untimed pass warms up; then passes run until ``min_time`` seconds and ``min_passes``
    passes have elapsed. On a GPU the clock is the wall clock (synchronised); on a CPU it is this
    process's CPU time, which other jobs on a shared machine do not inflate (a busy neighbour
    otherwise makes a random pass size look best).
    """
    clock = time.perf_counter if rows.device.type == "cuda" else time.process_time
    targets = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    input_gradients(model, rows, targets)
    synchronize(rows.device)
    passes, start = 0, clock()
    while True:
        input_gradients(model, rows, targets)
        passes += 1
        synchronize(rows.device)
        elapsed = clock() - start
        if elapsed >= min_time and passes >= min_passes:
            return passes * rows.shape[0] / max(elapsed, 1e-9)


def candidate_pass_sizes(device: torch.device, row_bytes: int | None = None) -> list[int]:
    """Pass sizes ``pass_size: auto`` tries: powers of two from 16 (on the CPU a row's gradient
    was bitwise the same for every multiple of 16 we tried) while a pass's input stays within 8
    MiB on a CPU (512 rows of 3x32x32 float32, 8,192 of 1x8x8) or 512 MiB on a GPU (at most
    65,536 rows)."""
    budget = (512 << 20) if device.type == "cuda" else (8 << 20)
    top = 65536 if device.type == "cuda" else 8192
    sizes = [2**i for i in range(4, top.bit_length())]
    if row_bytes:
        sizes = [s for s in sizes if s == 16 or s * row_bytes <= budget]
    return sizes


_TUNED_PASS_SIZES: dict[tuple, int] = {}


def tune_pass_size(
    model: nn.Module,
    image_shape: Sequence[int],
    device: torch.device | None = None,
    max_rows: int | None = None,
    candidates: Sequence[int] | None = None,
    min_time: float | None = None,
    rounds: int = 3,
) -> int:
    """The pass size with the most forward+backward rows per second for this model and device.

    Each candidate is timed ``rounds`` times (interleaved, best of them, which is robust to a busy
    machine); the smallest size within 3% of the best wins (less memory for the same speed).
    Results are cached per architecture, image shape, dtype and device for the process.
    ``max_rows`` (the job's total rows) drops sizes that would not give the job 8 passes, and for
    small jobs large sizes and extra rounds, so that measuring costs about a tenth of the job.
    """
    param = next(model.parameters())
    device = device or param.device
    key = (
        type(model).__qualname__,
        tuple(tuple(p.shape) for p in model.parameters()),
        tuple(image_shape),
        param.dtype,
        str(device),
    )
    if key in _TUNED_PASS_SIZES:
        return _TUNED_PASS_SIZES[key]
    row_bytes = math.prod(image_shape) * param.element_size()
    sizes = sorted(candidates or candidate_pass_sizes(device, row_bytes))
    if max_rows is not None:  # keep the measuring to ~10% of a small job's work
        sizes = [s for s in sizes if s <= max(max_rows // 8, sizes[0])]
        while len(sizes) > 3 and 2 * sum(sizes) > 0.1 * max_rows:
            sizes.pop()
        while rounds > 1 and 2 * rounds * sum(sizes) > 0.1 * max_rows:
            rounds -= 1
    if min_time is None:
        min_time = 0.05 if device.type == "cuda" else 0.1
    generator = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    for _ in range(rounds):
        for size in sizes:
            rows = torch.rand((size, *image_shape), generator=generator, dtype=param.dtype)
            try:
                rate = pass_throughput(model, rows.to(device), min_time=min_time, min_passes=1)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                sizes = [s for s in sizes if s < size]
                break
            rates[size] = max(rates.get(size, 0.0), rate)
    best = max(rates.values())
    choice = min(size for size, rate in rates.items() if rate >= 0.97 * best)
    log.info(
        "pass_size auto: %d rows (%s rows/s by pass size)",
        choice,
        ", ".join(f"{s}: {r:.0f}" for s, r in sorted(rates.items())),
    )
    _TUNED_PASS_SIZES[key] = choice
    return choice


def resolve_pass_size(
    setting: int | str, model: nn.Module, image_shape: Sequence[int], max_rows: int | None = None
) -> int:
    """``saliency.pass_size`` as a number of rows: ``auto`` is measured, an integer is taken."""
    if setting == "auto":
        return tune_pass_size(model, image_shape, max_rows=max_rows)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(
            f"saliency.pass_size must be a positive integer or 'auto', got {setting!r}"
        )
    return setting
