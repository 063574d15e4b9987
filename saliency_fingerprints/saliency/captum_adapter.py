"""Any Captum attribution class as a saliency method, run batched like our own engines.

Captum's ``attribute`` explains whatever inputs it is handed at once; here a
:class:`CaptumMethod` hands it ``pass_size // gradient_evaluations`` images per call, so a pass
holds about ``pass_size`` rows (DeepLift runs each image with its baseline: 2 rows per map), and
the target of every row is the class the store explains for that image (its ``target``: the
prediction or the label). Captum's object is built on first use, around the engine's model, and
``captum`` itself is imported only then.

A Captum method is a few lines::

    @register("input_x_gradient", short="GxI")
    class InputXGradient(CaptumMethod):
        captum_class = "InputXGradient"      # a class in captum.attr

and, where it needs them, :meth:`CaptumMethod.captum_arguments` (constructor arguments besides
the model: a layer), :meth:`CaptumMethod.attribute_arguments` (``attribute`` keywords besides
the target: baselines) and :meth:`CaptumMethod.to_maps` (Captum's output to maps of the images'
shape: upsampling a layer attribution).

Hook-based classes (GuidedBackprop, DeepLift) hook every ``nn.ReLU``: they need a distinct,
non-inplace ReLU module per use site, which every architecture in
:mod:`saliency_fingerprints.models` has.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn

from .base import SaliencyMethod


class CaptumMethod(SaliencyMethod):
    """Base class of the methods that wrap a Captum attribution class (``captum_class``)."""

    #: Name of the attribution class in ``captum.attr`` (e.g. ``"DeepLift"``).
    captum_class = ""

    def __init__(self, model: nn.Module, pass_size: int = 64) -> None:
        super().__init__(model, pass_size)
        self._captum = None

    # -- what a subclass may override -----------------------------------------------------------
    def captum_arguments(self, images: torch.Tensor) -> dict:
        """Arguments of the Captum class's constructor besides the model (e.g. ``layer``);
        ``images``: the first images the engine explains, to probe the model with."""
        return {}

    def attribute_arguments(self, rows: torch.Tensor) -> dict:
        """Keywords of Captum's ``attribute`` for ``rows`` besides ``target`` (e.g.
        ``baselines``)."""
        return {}

    def to_maps(self, attributions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Captum's attributions of ``rows`` as maps of the rows' shape (as they are, here)."""
        return attributions

    # -- the adapter -------------------------------------------------------------------------
    def captum(self, images: torch.Tensor):
        """The Captum attribution object around the model (built once, on first use)."""
        if self._captum is None:
            attribution = getattr(importlib.import_module("captum.attr"), self.captum_class)
            self._captum = attribution(self.model, **self.captum_arguments(images))
        return self._captum

    def attribute(self, images, targets=None, sample_ids=None):
        if targets is None:
            targets = self.predict(images)
        explainer = self.captum(images)
        step = max(1, self.pass_size // self.gradient_evaluations)
        maps = torch.empty_like(images)
        with torch.enable_grad(), warnings.catch_warnings():
            # GuidedBackprop and DeepLift announce on every call that they hook the ReLUs
            warnings.filterwarnings("ignore", message=r"Setting (forward, )?backward hooks")
            for start in range(0, images.shape[0], step):
                rows = images[start : start + step].detach().requires_grad_(True)
                out = explainer.attribute(
                    rows, target=targets[start : start + step], **self.attribute_arguments(rows)
                )
                maps[start : start + step] = self.to_maps(out.detach(), rows.detach())
        return maps
