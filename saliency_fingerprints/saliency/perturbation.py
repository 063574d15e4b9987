"""Meaningful Perturbation (Fong & Vedaldi, 2017), batched: many images' masks optimised at once.

Our own implementation of the method the paper (Widdicombe et al., 2022) used as its fourth,
perturbation-based saliency method. For each image ``x`` and target class ``c`` a low-resolution
mask ``m`` in [0, 1] (1 = keep the pixel, 0 = replace it by the blurred image) is optimised to
*delete* the evidence for ``c``::

    x_m  = x * up(m) + blur(x) * (1 - up(m))            (+ Gaussian noise, see ``noise_on``)
    loss = l1_coeff * mean|1 - m| + tv_coeff * TV_beta(m) + score_c(x_m)

where ``up`` upsamples the ``mask_size x mask_size`` mask bilinearly to the image size,
``TV_beta(m) = mean |m[i+1, j] - m[i, j]|^beta + mean |m[i, j+1] - m[i, j]|^beta`` and
``score_c`` is the softmax probability (or the logit) of the target class. The mask starts at
``mask_init`` (1: nothing deleted), Adam updates it, and it is clipped to [0, 1] after every
step. This follows the public PyTorch port the paper converted (jacobgil/pytorch-explainability):
Adam, lr 0.1, 500 iterations, l1 0.01, TV 0.2 with beta 3, softmax score, noise on the perturbed
input, and a 28 x 28 mask on 224-px images, 1/8 of the image side (``explain.py`` of
jacobgil/pytorch-explain-black-box). Here the mask side is ``mask_size`` cells whatever the image
size, not a fixed fraction of it: the presets' 8 on 32-px images is 1/4 of the side (each cell
spans 4 x 4 pixels), and the default 8 on the 8-px digits is one cell per pixel. Differences,
all configurable: a Gaussian blur whose std is a fraction of the image side (``blur_sigma``; the
port mixes a median blur and a Gaussian one at 224 px), noise in the model's input units
(``noise_std``; the port's 0.2 is in ImageNet-normalised units, about 0.045 in [0, 1] pixel
units), and optionally noise on the mask instead (``noise_on: mask``, a jitter some ports use).

Batching: the loss is a sum of per-image terms and Adam's update is element-wise, so each mask's
trajectory depends only on its own image. ``pass_size`` images are optimised together (one
forward+backward of ``pass_size`` rows per iteration); grouping does not change any mask. Noise
comes from a generator keyed by ``(seed, sample_id)``, so a map does not depend on its batch.

What a map stores: ``1 - up(m)`` - the deleted region, large where the evidence was - repeated
over the image's channels, so the map has the image's shape ``(N, C, H, W)`` like every other
method's. The secondary's ``abs_sum`` preprocessing then sees ``C * (1 - up(m))``, which its
per-map scaling turns back into ``1 - up(m)`` (up to the percentile clip) - and stretches to
[0, 1] however little was deleted, so a map whose mask barely moved from ``mask_init`` looks as
strong as one that deleted a region.

What a map store records beside the maps, per map (``sample``), so that a reader can tell
structure from extent:

* ``mp_score``: the quantity the optimisation minimises, the target class's score
  (``score``: softmax probability or logit) on the image perturbed by the final mask, without
  noise. Still high: the mask did not delete the evidence (e.g. a confident model).
* ``mask_area``: the fraction of the image deleted, the mean over pixels of ``1 - up(m)`` in
  [0, 1]. Near 0: the map is nearly empty before the per-map scaling.

:mod:`saliency_fingerprints.diagnostics` summarises both per store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runtime import seed_generator
from .base import SaliencyMethod, register
from .rng import keyed_normal

KEY = "methods.meaningful_perturbation"
SCORES = ("softmax", "logit")
NOISE_TARGETS = ("input", "mask")
NOISE_BLOCK = (
    25  # iterations of noise drawn per generator call (part of the noise stream's definition)
)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius ``ceil(3 sigma)`` (at least 1)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, reflect padding, per channel."""
    if sigma <= 0:
        return images.clone()
    kernel = gaussian_kernel1d(sigma, images.dtype).to(images.device)
    channels = images.shape[1]
    radius = kernel.numel() // 2
    out = images
    for dim in (2, 3):  # y then x
        size = out.shape[dim]
        pad_r = min(radius, size - 1)  # reflect padding needs pad < size
        weight = kernel if pad_r == radius else kernel[radius - pad_r : radius + pad_r + 1]
        weight = weight / weight.sum()
        k = weight.numel()
        shape = (1, 1, k, 1) if dim == 2 else (1, 1, 1, k)
        weight = weight.reshape(shape).expand(channels, 1, *shape[2:])
        pads = (0, 0, pad_r, pad_r) if dim == 2 else (pad_r, pad_r, 0, 0)
        padded = F.pad(out, pads, mode="reflect") if pad_r > 0 else out
        out = F.conv2d(padded, weight, groups=channels)
    return out


def total_variation(masks: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-mask TV: mean |vertical diff|^beta + mean |horizontal diff|^beta, shape ``(N,)``."""
    dy = (masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dx = (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dy + dx


@register("meaningful_perturbation", short="MP")
class MeaningfulPerturbation(SaliencyMethod):
    """Fong & Vedaldi (2017): the smallest smooth blur-deletion that destroys the target score."""

    map_variables = {
        "mp_score": "target score (methods.meaningful_perturbation.score: softmax probability or "
        "logit) on the image perturbed by the final mask, without noise: what the optimisation "
        "minimised",
        "mask_area": "fraction of the image deleted: mean over pixels of 1 - up(mask), in [0, 1]",
    }

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        iterations: int = 500,
        learning_rate: float = 0.1,
        l1_coeff: float = 0.01,
        tv_coeff: float = 0.2,
        tv_beta: float = 3.0,
        mask_size: int = 8,
        mask_init: float = 1.0,
        blur_sigma: float = 0.045,
        noise_std: float = 0.045,
        noise_on: str = "input",
        score: str = "softmax",
        seed: int = 0,
    ) -> None:
        super().__init__(model, pass_size)
        self.check_choice("noise_on", noise_on, NOISE_TARGETS)
        self.check_choice("score", score, SCORES)
        self.iterations, self.learning_rate = int(iterations), float(learning_rate)
        self.l1_coeff, self.tv_coeff, self.tv_beta = (
            float(l1_coeff),
            float(tv_coeff),
            float(tv_beta),
        )
        self.mask_size, self.mask_init = int(mask_size), float(mask_init)
        self.blur_sigma, self.noise_std, self.noise_on = (
            float(blur_sigma),
            float(noise_std),
            noise_on,
        )
        self.score, self.seed = score, int(seed)
        self.gradient_evaluations = self.iterations

    # -- the pieces ------------------------------------------------------------------------
    def blurred(self, images: torch.Tensor) -> torch.Tensor:
        """The perturbation baseline: each image blurred with std ``blur_sigma * side``."""
        return gaussian_blur(images, self.blur_sigma * images.shape[-1])

    def upsample(self, masks: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)

    def perturb(
        self, images: torch.Tensor, masks: torch.Tensor, blurred: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``images`` with the regions where the low-res ``masks`` are 0 replaced by blur."""
        if blurred is None:
            blurred = self.blurred(images)
        up = self.upsample(masks, images.shape[-1])
        return images * up + blurred * (1 - up)

    def target_scores(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row score of the target class (softmax probability or logit)."""
        logits = self.model(inputs)
        if self.score == "softmax":
            logits = torch.softmax(logits, dim=1)
        return logits.gather(1, targets.view(-1, 1)).squeeze(1)

    def _check_size(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise ConfigError(f"{KEY}: expected square (N, C, H, W) images, got {images.shape}")
        if self.mask_size > images.shape[-1]:
            raise ConfigError(
                f"{KEY}.mask_size must be at most the image side ({images.shape[-1]}), "
                f"got {self.mask_size}"
            )

    def noise_stream(
        self,
        sample_ids: Sequence[int],
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        keyed: bool | None = None,
    ) -> Iterator[torch.Tensor] | None:
        """Per-iteration noise ``(n, *shape)`` (None when ``noise_std`` is 0), drawn
        :data:`NOISE_BLOCK` iterations at a time (a fixed constant, so the stream does not depend
        on the batch).

        On a CPU (``keyed`` False, the default there) image i's noise comes from its own torch
        generator keyed by ``(seed, sample_id)``. On a GPU (``keyed`` True) one CPU-side loop
        over the images per block would cap the method far below the device's rate, so the
        block is drawn at once on the device with :func:`~.rng.keyed_normal`, keyed by
        ``(seed, block, sample_id)``: a different stream from the CPU's (MP maps agree across
        devices in distribution, not value by value), still independent of the batch."""
        if self.noise_std == 0:
            return None
        keyed = device.type != "cpu" if keyed is None else keyed
        per_iteration = math.prod(shape)
        generators = (
            []
            if keyed
            else [seed_generator(self.seed, int(i), 0x3F, device=device) for i in sample_ids]
        )

        def draw(start: int) -> torch.Tensor:
            if keyed:
                key = seed_generator(self.seed, 0x3F, start).initial_seed()
                noise = keyed_normal(key, list(sample_ids), NOISE_BLOCK * per_iteration, device)
                return noise.view(len(sample_ids), NOISE_BLOCK, *shape).transpose(0, 1).to(dtype)
            return torch.stack(
                [
                    torch.randn((NOISE_BLOCK, *shape), generator=g, dtype=dtype, device=device)
                    for g in generators
                ],
                dim=1,
            )

        def stream() -> Iterator[torch.Tensor]:
            for start in range(0, self.iterations, NOISE_BLOCK):
                block = draw(start).mul_(self.noise_std)
                yield from block[: min(NOISE_BLOCK, self.iterations - start)]

        return stream()

    def optimise_masks(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        sample_ids: Sequence[int],
    ) -> torch.Tensor:
        """Low-resolution masks ``(N, 1, mask_size, mask_size)`` of one group, optimised jointly."""
        n, size = images.shape[0], images.shape[-1]
        images = images.detach()
        blurred = self.blurred(images)
        masks = torch.full(
            (n, 1, self.mask_size, self.mask_size),
            self.mask_init,
            dtype=images.dtype,
            device=images.device,
        ).requires_grad_(True)
        optimiser = torch.optim.Adam([masks], lr=self.learning_rate)
        noise_shape = images.shape[1:] if self.noise_on == "input" else masks.shape[1:]
        noises = self.noise_stream(sample_ids, noise_shape, images.dtype, images.device)
        with torch.enable_grad():
            for _ in range(self.iterations):
                current = masks
                noise = next(noises) if noises is not None else None
                if noise is not None and self.noise_on == "mask":
                    current = (masks + noise).clamp(0, 1)
                up = self.upsample(current, size)
                inputs = images * up + blurred * (1 - up)
                if noise is not None and self.noise_on == "input":
                    inputs = inputs + noise
                per_image = (
                    self.l1_coeff * (1 - masks).abs().flatten(1).mean(1)
                    + self.tv_coeff * total_variation(masks, self.tv_beta)
                    + self.target_scores(inputs, targets)
                )
                # autograd.grad: gradients of the masks only, none accumulate in the model
                (masks.grad,) = torch.autograd.grad(per_image.sum(), masks)
                optimiser.step()
                with torch.no_grad():
                    masks.clamp_(0, 1)
        return masks.detach()

    def attribute(self, images, targets=None, sample_ids=None):
        self._check_size(images)
        if sample_ids is None:
            sample_ids = range(images.shape[0])
        sample_ids = list(sample_ids)
        if targets is None:
            targets = self.predict(images)
        maps = torch.empty_like(images)
        for start in range(0, images.shape[0], self.pass_size):
            stop = start + self.pass_size
            masks = self.optimise_masks(
                images[start:stop], targets[start:stop], sample_ids[start:stop]
            )
            deleted = 1 - self.upsample(masks, images.shape[-1])
            maps[start:stop] = deleted.expand(-1, images.shape[1], -1, -1)
        return maps

    def map_variable_values(self, images, targets, maps):
        """``mp_score`` and ``mask_area`` of maps from :meth:`attribute`.

        A map is ``1 - up(m)``, so the perturbed image ``x * up(m) + blur(x) * (1 - up(m))`` is
        rebuilt from it (equal to the optimiser's last noise-free input up to float rounding);
        one forward pass per map, no gradients."""
        deleted = maps[:, :1]
        perturbed = images * (1 - deleted) + self.blurred(images) * deleted
        scores = self._target_outputs(perturbed, targets, softmax=self.score == "softmax")
        return {"mp_score": scores, "mask_area": deleted.flatten(1).mean(1)}
