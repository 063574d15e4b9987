"""Input-agnostic class maps (Akhtar & Jalwana 2023) as a saliency method, ``input_agnostic``
(IA): the map of a row is the input-agnostic map of the row's *target class* for the primary
(:mod:`saliency_fingerprints.agnostic`: Algorithm 1 + the Eq. 2 refinement, ``cycles`` times),
not an explanation of the row's image.

* **Rows are draws.** The store job selects images as for every method, so sample ids, the
  ``target`` of each row (predicted or true class) and the image-disjoint train/test split of
  the secondaries work unchanged. Row ``i`` gets the class map of ``target_i`` computed with the
  generator ``seed_generator(seed, sample_id_i)``: every row is another draw of its class's map
  (the draws differ in their minibatches), several maps per (primary, class). The image itself
  is not used; two rows of one class differ only by their draws.
* **The sample set** the minibatches come from is the dataset's *train split*
  (:attr:`needs_sample_set`: the store job passes it through :meth:`set_sample_set`), optionally
  a seeded subset of ``max_samples`` of it. It is a superset of each primary's own training
  images (a primary trains on a seeded ``train_fraction`` of the split, which the store job does
  not know), never test images: the paper draws from the training distribution.
* **Batched.** The maps of ``max(1, pass_size // batch_size)`` rows are computed together
  (:func:`~saliency_fingerprints.agnostic.input_agnostic_maps`): one pass holds every map's
  minibatch, each map with its own generator, so a map does not depend on its batch (up to
  float rounding; ``tests/test_input_agnostic_method.py``).
* **Cost** (:attr:`gradient_evaluations`, per map): ``cycles * batch_size * (iterations +
  refine_iterations)`` forward+backward rows, plus the search's sign tests, ``2 * batch_size``
  forward-only rows per iteration, counted as a third of a row each. With the paper's values
  (b 128, K 650, 150 refinement steps, 2 cycles) 316,600 rows per map: about 10^5 times Grad.
  The diagnostics add one forward pass of the sample set per map.
* **Diagnostics** (:attr:`map_variables`): ``ia_success``, ``ia_probability``, ``ia_norm``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..agnostic import AgnosticSettings, batch_diagnostics, input_agnostic_maps
from ..errors import ConfigError
from ..runtime import seed_generator
from .base import SaliencyMethod, register

KEY = "methods.input_agnostic"
#: 3 x 224 x 224, the paper's (ImageNet) input, the reference eta = 30 is given for.
PAPER_ELEMENTS = 3 * 224 * 224


@register("input_agnostic", short="IA")
class InputAgnostic(SaliencyMethod):
    """Akhtar & Jalwana (2023): per row, a draw of the input-agnostic map of its target class."""

    needs_sample_set = True
    map_variables = {
        "ia_success": "fraction of the sample set (train split) classified as the map's class "
        "after subtracting the map, Clip(I - nu): what Algorithm 1 maximises",
        "ia_probability": "mean softmax probability of the map's class over the sample set "
        "after subtracting the map",
        "ia_norm": "L2 norm of the map (at most the eta ball's radius)",
    }

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        batch_size: int = 128,
        iterations: int = 650,
        eta: float = 30.0,
        eta_reference_elements: int | None = PAPER_ELEMENTS,
        refine_iterations: int = 150,
        refine_lr: float = 0.001,
        lam: float = 50.0,
        cycles: int = 2,
        beta1: float = 0.9,
        beta2: float = 0.999,
        adam_eps: float = 1e-8,
        recompute_xi: bool = True,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        eval_batch_size: int = 512,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, pass_size)
        self.batch_size, self.iterations, self.eta = batch_size, iterations, eta
        self.eta_reference_elements = eta_reference_elements
        self.refine_iterations, self.refine_lr, self.lam = refine_iterations, refine_lr, lam
        self.cycles, self.beta1, self.beta2, self.adam_eps = cycles, beta1, beta2, adam_eps
        self.recompute_xi, self.clip_min, self.clip_max = recompute_xi, clip_min, clip_max
        self.eval_batch_size, self.max_samples, self.seed = eval_batch_size, max_samples, seed
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ConfigError(f"{KEY}.max_samples must be null or a positive integer")
        try:
            self.settings = AgnosticSettings(
                batch_size=batch_size,
                iterations=iterations,
                eta=eta,
                eta_reference=None
                if eta_reference_elements is None
                else (int(eta_reference_elements),),
                refine_iterations=refine_iterations,
                refine_lr=refine_lr,
                lam=lam,
                cycles=cycles,
                beta1=beta1,
                beta2=beta2,
                adam_eps=adam_eps,
                recompute_xi=recompute_xi,
                clip_min=clip_min,
                clip_max=clip_max,
                eval_batch_size=eval_batch_size,
            )
        except ConfigError as err:
            raise ConfigError(f"{KEY}: {err}") from None
        sign_tests = math.ceil(2 * batch_size / 3)  # forward-only rows, a third of a row each
        self.gradient_evaluations = cycles * (
            batch_size * (iterations + refine_iterations) + iterations * sign_tests
        )
        self.sample_set: torch.Tensor | None = None

    def set_sample_set(self, images: torch.Tensor) -> None:
        """The images minibatches are drawn from (the store job: the dataset's train split);
        a seeded subset of ``max_samples`` of them when that is set."""
        if images.dim() != 4 or len(images) == 0:
            raise ConfigError(f"{KEY}: the sample set is empty (the dataset has no train images)")
        if self.max_samples is not None and self.max_samples < len(images):
            keep = np.random.default_rng([self.seed, 0x1A5E]).choice(
                len(images), self.max_samples, replace=False
            )
            images = images[torch.from_numpy(np.sort(keep)).to(images.device)]
        self.sample_set = images

    def _samples(self) -> torch.Tensor:
        if self.sample_set is None:
            raise ConfigError(f"{KEY}: no sample set; call set_sample_set(train images) first")
        return self.sample_set

    @property
    def maps_per_pass(self) -> int:
        """Maps computed together: their minibatches fill a pass of ``pass_size`` rows (at
        least one map, ``batch_size`` rows)."""
        return max(1, self.pass_size // self.batch_size)

    def attribute(self, images, targets=None, sample_ids=None):
        samples = self._samples()
        if sample_ids is None:
            sample_ids = range(images.shape[0])
        sample_ids = [int(i) for i in sample_ids]
        if targets is None:
            targets = self.predict(images)
        maps = torch.empty_like(images)
        device = samples.device
        step = self.maps_per_pass
        for start in range(0, images.shape[0], step):
            stop = start + step
            generators = [
                seed_generator(self.seed, i, device=device) for i in sample_ids[start:stop]
            ]
            maps[start:stop] = input_agnostic_maps(
                self.model,
                samples,
                targets[start:stop],
                self.settings,
                generators=generators,
            ).to(maps.dtype)
        return maps

    def map_variable_values(self, images, targets, maps):
        values = batch_diagnostics(self.model, self._samples(), targets, maps, self.settings)
        return {
            "ia_success": values["success"],
            "ia_probability": values["probability"],
            "ia_norm": values["norm"],
        }
