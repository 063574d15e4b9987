"""DeepLIFT (Shrikumar et al. 2017; Captum's ``DeepLift``, Rescale rule): the difference of the
target logit between the image and a baseline, distributed over the pixels by multipliers times
``(x - baseline)``; the maps sum to ``f(x) - f(baseline)``. Each image runs with its baseline in
the same pass (2 rows per map). Hooks every ``nn.ReLU`` and max-pooling module.

Determinism: Captum's max-pooling rule calls ``max_unpool2d``, which PyTorch implements
deterministically on CPUs only; on a GPU, maps of models with max-pooling (``cnn2``) may differ
between runs at float rounding (PyTorch warns under ``set_determinism``). Not measured here."""

from __future__ import annotations

from torch import nn

from .base import BASELINES, baseline_images, register
from .captum_adapter import CaptumMethod


@register("deeplift", short="DL")
class DeepLift(CaptumMethod):
    """DeepLIFT's Rescale rule against a ``zero`` or per-image ``min`` baseline."""

    captum_class = "DeepLift"
    gradient_evaluations = 2  # the image and its baseline

    def __init__(self, model: nn.Module, pass_size: int = 64, baseline: str = "zero") -> None:
        super().__init__(model, pass_size)
        self.check_choice("baseline", baseline, BASELINES)
        self.baseline = baseline

    def attribute_arguments(self, rows):
        return {"baselines": baseline_images(rows.detach(), self.baseline)}
