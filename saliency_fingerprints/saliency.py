"""Batched saliency engines: where the maps are computed.

Each method is a small class in the spirit of Captum's attribution classes: build it around a
model, call :meth:`SaliencyMethod.attribute` on a batch of images. Unlike Captum's default call,
the gradient evaluations of all images, noise samples and path steps are folded into passes of
``pass_size`` rows, because the throughput of a forward+backward pass depends on its size (on
small CPUs 64 rows ran ~1.7x faster per image than 256). No per-image Python loop touches the
model.

Defaults follow Google PAIR's ``saliency`` library, which the paper used:

* Grad: the plain input gradient of the target logit (signed, all channels).
* SmoothGrad: ``n_samples=25`` noisy copies with noise std ``noise_level * (max(x) - min(x))``
  per image; ``magnitude=True`` averages *squared* gradients.
* Integrated Gradients: zero baseline, ``n_steps=25`` points ``linspace(0, 1, n_steps)`` with
  equal weights (``rule="pair"``), times ``(x - baseline)``. ``riemann_trapezoid`` matches
  Captum's default rule instead.

Completeness of IG: the maps explain the target class's *logit* ``f``, and an exact path
integral sums to ``f(x) - f(baseline)``; a finite rule only approximates it. With
``g(alpha) = grad f(baseline + alpha (x - baseline)) . (x - baseline)``, ``pair``'s equal
weights ``1/n`` on ``n`` points that include both ends give ``T + ((g(0) + g(1)) / 2 - T) / n``,
``T`` the trapezoid rule on the same points: the error shrinks like ``1/n`` and depends on how
the end-point gradients differ from the path's mean. Where ``g(0) = 0`` and ``g`` is constant
beyond it (a ReLU network with zero biases at the zero baseline) the maps sum to exactly
``(n - 1) / n`` of the change: 90% at 10 steps, 96% at 25, the figures the review measured on
2-layer CNNs. So each IG store records, per map,
``ig_delta(sample) = f(x) - f(baseline)`` and ``ig_sum(sample)``, the sum of the map over
channels and pixels; ``completeness = ig_sum / ig_delta`` (1 = complete) is the fraction of the
logit change the map accounts for (:mod:`saliency_fingerprints.diagnostics` summarises it per
store). The two raw numbers are stored, not the ratio, which is ill-conditioned where
``f(x) ~ f(baseline)``.

Noise is drawn from a generator keyed by ``(seed, sample_id)``, so a map does not depend on the
batch or pass it was computed in.

Speed (see ``benchmarks/`` and BENCHMARKS.md): the reference is the *limit*, the rows per second
of one forward+backward pass to the input at the best pass size on the device at hand; a method
that needs k gradient evaluations per map cannot beat ``limit / k`` maps per second.
``pass_size: auto`` measures that best size (:func:`tune_pass_size`) instead of assuming it.
SmoothGrad and IG build their noisy / path rows for a *block* of images at a time (whole passes
where that is cheap), so memory stays bounded by the block, not the number of images, and the
reduction over samples / steps is the same whatever the pass size. Grad takes its predicted
targets from the same forward pass as the gradient (no extra forward).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import ConfigError, DataError
from .runtime import seed_generator

log = logging.getLogger(__name__)


def input_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of each row's target logit w.r.t. that row, and the logits, in one pass.

    ``targets=None`` explains the predicted class (argmax of the same forward pass).
    """
    rows = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(rows)
        if targets is None:
            targets = logits.argmax(dim=1)
        selected = logits.gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(selected, rows)
    return grad, logits.detach()


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


class SaliencyMethod:
    """Base class: ``attribute(images, targets, sample_ids) -> maps`` (same shape as images).

    ``gradient_evaluations`` is the number of forward+backward rows one map costs (k), so a
    method cannot beat ``limit / k`` maps per second.
    """

    name = "base"
    gradient_evaluations = 1
    #: Per-map diagnostics stored beside the maps as ``<name>(sample)`` data variables:
    #: name -> description (the variable's ``description`` attribute). None by default.
    map_variables: dict[str, str] = {}

    def __init__(self, model: nn.Module, pass_size: int = 64) -> None:
        if pass_size < 1:
            raise ConfigError(f"saliency.pass_size must be a positive integer, got {pass_size}")
        self.model = model
        self.pass_size = pass_size

    def params(self) -> dict:
        """The method's parameters, recorded in the store's attributes."""
        return {}

    def map_variable_values(
        self, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-map values ``(N,)`` of :attr:`map_variables` for ``maps`` this engine computed
        from ``images`` and ``targets``; derived from the maps, so resume and batching cannot
        change them. Empty for methods without diagnostics."""
        return {}

    def _target_outputs(
        self, inputs: torch.Tensor, targets: torch.Tensor, softmax: bool = False
    ) -> torch.Tensor:
        """The target class's logit (or softmax probability) per row, ``pass_size`` rows per
        forward pass, without gradients."""
        with torch.no_grad():
            parts = []
            for s in range(0, inputs.shape[0], self.pass_size):
                out = self.model(inputs[s : s + self.pass_size])
                if softmax:
                    out = torch.softmax(out, dim=1)
                parts.append(out.gather(1, targets[s : s + self.pass_size].view(-1, 1)))
            return torch.cat(parts).squeeze(1)

    def attribute(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def attribute_with_predictions(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(maps, targets, predictions)``: the maps, the classes they explain (``targets``, or
        the predictions when ``targets`` is None) and the model's predicted classes."""
        predictions = self.predict(images)
        targets = predictions if targets is None else targets
        return self.attribute(images, targets, sample_ids), targets, predictions

    # -- helpers shared by the methods -------------------------------------------------------
    def _row_gradients(self, rows: torch.Tensor, row_targets: torch.Tensor) -> torch.Tensor:
        """Input gradients of many rows, ``pass_size`` rows per forward+backward pass."""
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], self.pass_size):
            stop = start + self.pass_size
            out[start:stop], _ = input_gradients(
                self.model, rows[start:stop], row_targets[start:stop]
            )
        return out

    def _block_images(self, images: torch.Tensor, k: int) -> int:
        """Images whose ``k`` rows each are built and reduced together (a *block*).

        Where the rows of a few images fill whole passes (``lcm(pass_size, k)`` rows, at most
        ``k`` passes) that many; else about eight passes' worth. Either way at most ~256 MB of
        rows, so memory does not grow with the number of images in a call.
        """
        row_bytes = images[:1].numel() * images.element_size()
        cap = max(1, (256 << 20) // max(1, row_bytes * k))
        whole = self.pass_size // math.gcd(self.pass_size, k)  # images filling whole passes
        block = whole if whole <= cap else max(1, (8 * self.pass_size) // k)
        return max(1, min(block, cap, images.shape[0]))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    self.model(images[s : s + self.pass_size]).argmax(1)
                    for s in range(0, images.shape[0], self.pass_size)
                ]
            )


class Gradient(SaliencyMethod):
    """Simonyan et al. (2013): the gradient of the target logit w.r.t. the input."""

    name = "grad"

    def attribute(self, images, targets=None, sample_ids=None):
        return self.attribute_with_predictions(images, targets, sample_ids)[0]

    def attribute_with_predictions(self, images, targets=None, sample_ids=None):
        """One forward+backward per pass gives the gradient *and* the prediction."""
        maps = torch.empty_like(images)
        predictions = torch.empty(images.shape[0], dtype=torch.long, device=images.device)
        for start in range(0, images.shape[0], self.pass_size):
            stop = start + self.pass_size
            batch_targets = None if targets is None else targets[start:stop]
            maps[start:stop], logits = input_gradients(
                self.model, images[start:stop], batch_targets
            )
            predictions[start:stop] = logits.argmax(1)
        return maps, (predictions if targets is None else targets), predictions


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


class SmoothGrad(SaliencyMethod):
    """Smilkov et al. (2017): gradients averaged over noisy copies of the input."""

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        n_samples: int = 25,
        noise_level: float = 0.15,
        magnitude: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(model, pass_size)
        if n_samples < 1:
            raise ConfigError(f"methods.smoothgrad.n_samples must be >= 1, got {n_samples}")
        if noise_level < 0:
            raise ConfigError(f"methods.smoothgrad.noise_level must be >= 0, got {noise_level}")
        self.n_samples, self.noise_level, self.magnitude, self.seed = (
            n_samples,
            noise_level,
            magnitude,
            seed,
        )
        self.gradient_evaluations = n_samples

    def params(self):
        return {
            "n_samples": self.n_samples,
            "noise_level": self.noise_level,
            "magnitude": self.magnitude,
            "seed": self.seed,
        }

    def noise(self, images: torch.Tensor, sample_ids: Sequence[int]) -> torch.Tensor:
        """Standard-normal noise, ``(batch, n_samples, *image)``, keyed by sample id.

        On a CPU: one torch generator per image, seeded by ``(seed, sample id)``. On a GPU:
        :func:`keyed_normal`, computed on the device for the whole block at once (one CPU
        generator per image capped SmoothGrad at a fraction of the GPU's limit). Both are keyed
        by ``(seed, sample id)`` only, but they are different streams: a GPU's maps equal a CPU's
        in distribution, not draw for draw (Grad and IG maps agree to float rounding).
        """
        shape = (self.n_samples, *images.shape[1:])
        if images.device.type != "cpu":
            count = math.prod(shape)
            return keyed_normal(self.seed, list(sample_ids), count, images.device).view(
                len(sample_ids), *shape
            )
        return torch.stack(
            [torch.randn(shape, generator=seed_generator(self.seed, int(i))) for i in sample_ids]
        )

    def attribute(self, images, targets=None, sample_ids=None):
        batch = images.shape[0]
        sample_ids = list(range(batch) if sample_ids is None else sample_ids)
        if targets is None:
            targets = self.predict(images)
        k, tail = self.n_samples, images.shape[1:]
        flat = images.flatten(1)
        spread = (flat.max(1).values - flat.min(1).values) * self.noise_level
        stdev = spread.view(batch, 1, *([1] * len(tail)))
        maps = torch.empty_like(images)
        block = self._block_images(images, k)
        for a in range(0, batch, block):
            b = min(a + block, batch)
            rows = images[a:b].unsqueeze(1) + self.noise(images[a:b], sample_ids[a:b]) * stdev[a:b]
            rows = rows.reshape((b - a) * k, *tail)
            grads = self._row_gradients(rows, targets[a:b].repeat_interleave(k))
            grads = grads.view(b - a, k, *tail)
            if self.magnitude:
                grads = grads.mul_(grads)
            maps[a:b] = grads.mean(dim=1)
        return maps


IG_RULES = ("pair", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


def path_points(n_steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alpha`` on [0, 1] and weights (summing to 1) of an integration rule."""
    if rule == "pair":  # PAIR: linspace(0, 1, n) with equal weights
        return torch.linspace(0, 1, n_steps), torch.full((n_steps,), 1.0 / n_steps)
    if rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ConfigError("methods.integrated_gradients.n_steps must be >= 2 for trapezoid")
        weights = torch.full((n_steps,), 1.0 / (n_steps - 1))
        weights[0] = weights[-1] = 0.5 / (n_steps - 1)
        return torch.linspace(0, 1, n_steps), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}.get(rule)
    if offset is None:
        raise ConfigError(
            f"methods.integrated_gradients.rule {rule!r} is unknown; expected one of {IG_RULES}"
        )
    return (torch.arange(n_steps) + offset) / n_steps, torch.full((n_steps,), 1.0 / n_steps)


class IntegratedGradients(SaliencyMethod):
    """Sundararajan et al. (2017): path-integrated gradients from a baseline to the input."""

    name = "integrated_gradients"
    BASELINES = ("zero", "min")
    map_variables = {
        "ig_delta": "f(x) - f(baseline): the target class's logit at the image minus at the "
        "baseline, what completeness says the map sums to",
        "ig_sum": "sum of the map over channel, y and x; completeness = ig_sum / ig_delta "
        "(1 = the map accounts for the whole logit change; the gap is the integration error)",
    }

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        n_steps: int = 25,
        baseline: str = "zero",
        rule: str = "pair",
    ) -> None:
        super().__init__(model, pass_size)
        if n_steps < 1:
            raise ConfigError(f"methods.integrated_gradients.n_steps must be >= 1, got {n_steps}")
        if baseline not in self.BASELINES:
            raise ConfigError(
                f"methods.integrated_gradients.baseline {baseline!r} is unknown; "
                f"expected one of {self.BASELINES}"
            )
        self.alphas, self.weights = path_points(n_steps, rule)
        self.n_steps, self.baseline, self.rule = n_steps, baseline, rule
        self.gradient_evaluations = n_steps

    def params(self):
        return {"n_steps": self.n_steps, "baseline": self.baseline, "rule": self.rule}

    def baseline_of(self, images: torch.Tensor) -> torch.Tensor:
        if self.baseline == "zero":
            return torch.zeros_like(images)
        # "min": a constant image at each image's minimum (a black image for [0, 1] inputs
        # whatever preprocessing shifts them; Kindermans et al. 2017).
        low = images.flatten(1).min(1).values.view(-1, *([1] * (images.dim() - 1)))
        return low.expand_as(images).clone()

    def attribute(self, images, targets=None, sample_ids=None):
        batch = images.shape[0]
        if targets is None:
            targets = self.predict(images)
        base = self.baseline_of(images)
        diff = images - base
        k, tail = self.n_steps, images.shape[1:]
        alphas = self.alphas.to(images.device, images.dtype)
        weights = self.weights.to(images.device, images.dtype)
        shape = (1, k, *([1] * len(tail)))
        maps = torch.empty_like(images)
        block = self._block_images(images, k)
        for a in range(0, batch, block):
            b = min(a + block, batch)
            rows = base[a:b].unsqueeze(1) + alphas.view(shape) * diff[a:b].unsqueeze(1)
            rows = rows.reshape((b - a) * k, *tail)
            grads = self._row_gradients(rows, targets[a:b].repeat_interleave(k))
            grads = grads.view(b - a, k, *tail)
            maps[a:b] = (grads * weights.view(shape)).sum(dim=1) * diff[a:b]
        return maps

    def map_variable_values(self, images, targets, maps):
        """``ig_delta`` (two forward passes per map, no gradients) and ``ig_sum``."""
        at_image = self._target_outputs(images, targets)
        at_baseline = self._target_outputs(self.baseline_of(images), targets)
        return {"ig_delta": at_image - at_baseline, "ig_sum": maps.flatten(1).sum(1)}


METHODS: dict[str, type[SaliencyMethod]] = {
    "grad": Gradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
}
from . import perturbation  # noqa: E402,F401,I001  (registers meaningful_perturbation; no cycle)

SHORT_NAMES = {
    "grad": "Grad",
    "smoothgrad": "SG",
    "integrated_gradients": "IG",
    "meaningful_perturbation": "MP",
}


def build_method(name: str, model: nn.Module, params: dict, pass_size: int) -> SaliencyMethod:
    """Instantiate a registered method with its config parameters."""
    if name not in METHODS:
        raise ConfigError(
            f"saliency method {name!r} is unknown; expected one of: {', '.join(sorted(METHODS))}"
        )
    try:
        return METHODS[name](model, pass_size=pass_size, **params)
    except TypeError as err:
        raise ConfigError(f"methods.{name}: {err}") from None


# -- the saliency job: a dataset and a primary in, a chunked map store out ---------------------


def select_images(split: np.ndarray, which: str, max_images: int | None, seed: int) -> np.ndarray:
    """Sample ids that get maps: a split (or all), optionally a seeded random subset of it."""
    if which not in ("all", "train", "test"):
        raise ConfigError(f"saliency.images must be 'all', 'train' or 'test', got {which!r}")
    ids = np.arange(len(split)) if which == "all" else np.flatnonzero(split == which)
    if max_images is not None:
        if max_images < 1:
            raise ConfigError(f"saliency.max_images must be a positive integer, got {max_images}")
        if max_images < len(ids):
            ids = np.sort(np.random.default_rng([seed, 0x1A6E]).choice(ids, max_images, False))
    return ids


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_saliency_maps(
    dataset_path: str | Path,
    weights_path: str | Path,
    out: str | Path,
    method: str,
    method_params: dict,
    cfg: dict,
    primary: str,
    device: torch.device,
    threads: int | None = None,
) -> None:
    """Compute one method's maps for one primary and stream them into a Zarr store.

    Images are read chunk by chunk from the dataset store (the next group of chunks is read
    by a background thread while the current one computes) and maps are written chunk by chunk
    (by the writer's background thread), so peak memory depends on ``chunk_size`` and
    ``pass_size``, not on the number of images. ``saliency.pass_size: auto`` is measured on the
    device at hand; when a pass holds more rows than a chunk has (Grad on a GPU), several chunks
    go through the engine together.
    """
    from .datasets import open_dataset
    from .provenance import Provenance, as_attr
    from .runtime import describe_device, set_determinism
    from .store import ChunkedMapWriter, chunk_ranges
    from .training import load_model, numeric_precision

    config = {"method": method, "method_params": method_params, **cfg}
    prov = Provenance("compute_saliency", {**config, "primary": primary}, describe_device(device))
    set_determinism(int(cfg.get("seed", 0)), threads)
    ds, info = open_dataset(dataset_path)
    model = load_model(weights_path, device)
    for p in model.parameters():
        p.requires_grad_(False)
    setting = cfg["pass_size"]
    image_shape = (info.channels, info.image_size, info.image_size)
    fixed = 1 if setting == "auto" else resolve_pass_size(setting, model, image_shape)
    engine = build_method(method, model, method_params, fixed)
    ids = select_images(
        ds["split"].values, cfg["images"], cfg.get("max_images"), int(cfg.get("seed", 0))
    )
    tf32 = bool(cfg.get("tf32", False))
    with numeric_precision(tf32=tf32):
        engine.pass_size = resolve_pass_size(
            setting, model, image_shape, max_rows=len(ids) * engine.gradient_evaluations
        )
    target_mode = cfg["target"]
    if target_mode not in ("true", "predicted"):
        raise ConfigError(f"saliency.target must be 'true' or 'predicted', got {target_mode!r}")
    chunk_size = int(cfg["chunk_size"])
    if chunk_size < 1:
        raise ConfigError(f"saliency.chunk_size must be a positive integer, got {chunk_size}")
    labels = ds["label"].values[ids].astype(np.int64)
    n = len(ids)
    shape = (n, info.channels, info.image_size, info.image_size)
    coords = {
        "sample": ("sample", ids.astype(np.int64)),
        "label": ("sample", labels),
        "split": ("sample", ds["split"].values[ids].astype("<U5")),
        "target": ("sample", np.full(n, -1, dtype=np.int64)),
        "prediction": ("sample", np.full(n, -1, dtype=np.int64)),
        "primary": primary,
        "method": method,
    }
    attrs = {
        "method_params": json.dumps(engine.params(), sort_keys=True),
        "target_mode": target_mode,
        "dataset": str(dataset_path),
    }
    # the method's per-map diagnostics (MP: final score, mask area; IG: completeness terms)
    data_vars = {
        name: ("sample", np.full(n, np.nan, dtype=np.float32), {"description": description})
        for name, description in engine.map_variables.items()
    }
    if data_vars:
        attrs["map_variables"] = json.dumps(engine.map_variables, sort_keys=True)
    fingerprint = hashlib.sha256(
        json.dumps(
            [config, primary, _file_digest(Path(weights_path)), ds.attrs.get("provenance", "")],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    images_var = ds["image"]

    def read(chunks: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids and float32 images of consecutive chunks (one read when contiguous)."""
        positions = np.concatenate([np.arange(start, stop) for _, start, stop in chunks])
        chunk_ids = ids[positions]
        contiguous = chunk_ids[-1] - chunk_ids[0] + 1 == len(chunk_ids)
        where = slice(int(chunk_ids[0]), int(chunk_ids[-1]) + 1) if contiguous else chunk_ids
        return chunk_ids, np.asarray(images_var.isel(sample=where).values, dtype=np.float32)

    # Chunks per engine call: enough rows to fill a pass (only matters for Grad on a GPU), but
    # at most ~64 MB of images, so host memory stays bounded whatever the pass size.
    per_call = -(-engine.pass_size // (engine.gradient_evaluations * chunk_size))
    chunk_bytes = chunk_size * math.prod(image_shape) * 4
    per_call = max(1, min(per_call, (64 << 20) // chunk_bytes))
    log.info(
        "%s/%s: %d maps, pass size %d rows%s, %d gradient evaluations per map, device %s",
        primary,
        method,
        n,
        engine.pass_size,
        " (auto)" if setting == "auto" else "",
        engine.gradient_evaluations,
        describe_device(device),
    )
    start_time = time.perf_counter()
    with (
        ChunkedMapWriter(
            out,
            shape,
            chunk_size,
            coords,
            attrs,
            fingerprint,
            dtype=cfg.get("dtype", "float32"),
            data_vars=data_vars,
        ) as writer,
        ThreadPoolExecutor(max_workers=1) as reader,
        numeric_precision(tf32=tf32),
    ):
        done = writer.done_chunks
        if done:
            log.info(
                "%s/%s: resuming, %d of %d chunks already written",
                primary,
                method,
                len(done),
                writer.n_chunks,
            )
        bar = tqdm(
            total=n,
            desc=f"{method} {primary}",
            unit="map",
            mininterval=5,
            file=sys.stderr,
            disable=None,
        )
        todo = [c for c in chunk_ranges(n, chunk_size) if c[0] not in done]
        bar.update(n - sum(stop - start for _, start, stop in todo))
        groups = [todo[i : i + per_call] for i in range(0, len(todo), per_call)]
        pending = reader.submit(read, groups[0]) if groups else None
        for number, group in enumerate(groups):
            chunk_ids, values = pending.result()
            if number + 1 < len(groups):
                pending = reader.submit(read, groups[number + 1])
            images = torch.from_numpy(values).to(device)
            positions = np.concatenate([np.arange(start, stop) for _, start, stop in group])
            targets = (
                None
                if target_mode == "predicted"
                else torch.from_numpy(labels[positions]).to(device)
            )
            maps, targets, preds = engine.attribute_with_predictions(
                images, targets, sample_ids=chunk_ids.tolist()
            )
            if not torch.isfinite(maps).all():
                raise DataError(f"{out}: {method} produced NaN/inf maps for {primary}")
            per_map = {
                name: values.detach().to(torch.float32).cpu().numpy()
                for name, values in engine.map_variable_values(images, targets, maps).items()
            }
            maps, targets, preds = maps.cpu().numpy(), targets.cpu().numpy(), preds.cpu().numpy()
            offset = 0
            for index, start, stop in group:
                part = slice(offset, offset + stop - start)
                extras = {"target": targets[part], "prediction": preds[part]}
                extras.update({name: values[part] for name, values in per_map.items()})
                writer.write_chunk(index, maps[part], extras)
                offset += stop - start
            bar.update(offset)
        bar.close()
        elapsed = time.perf_counter() - start_time
        writer.final_attrs["provenance"] = as_attr(
            prov.finish(
                n_maps=n,
                maps_per_second=round(n / max(elapsed, 1e-9), 2),
                gradient_evaluations_per_map=engine.gradient_evaluations,
                pass_size_used=engine.pass_size,
            )
        )
    log.info("%s/%s: %d maps in %.1fs", primary, method, n, time.perf_counter() - start_time)


def open_maps(path: str | Path):
    """Open a map store as an xarray dataset (lazy) and check its layout."""
    from .store import MAP_DIMS, open_store

    ds = open_store(path)
    if "maps" not in ds or tuple(ds["maps"].dims) != MAP_DIMS:
        raise DataError(f"{path}: expected a 'maps' variable with dims {MAP_DIMS}")
    return ds
