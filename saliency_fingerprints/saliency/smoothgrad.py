"""SmoothGrad (Smilkov et al. 2017), with Google PAIR's ``saliency`` defaults (the library the
paper used): ``n_samples=25`` noisy copies with noise std ``noise_level * (max(x) - min(x))``
per image; ``magnitude=True`` averages *squared* gradients.

The noisy rows are built for a *block* of images at a time (whole passes where that is cheap),
so memory stays bounded by the block, not the number of images, and the reduction over samples
is the same whatever the pass size. Noise is keyed by ``(seed, sample_id)``
(:mod:`.rng`), so a map does not depend on the batch or pass it was computed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..runtime import seed_generator
from .base import SaliencyMethod, register
from .rng import keyed_normal


@register("smoothgrad", short="SG")
class SmoothGrad(SaliencyMethod):
    """Smilkov et al. (2017): gradients averaged over noisy copies of the input."""

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
        self.n_samples, self.noise_level, self.magnitude, self.seed = (
            n_samples,
            noise_level,
            magnitude,
            seed,
        )
        self.gradient_evaluations = n_samples

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
