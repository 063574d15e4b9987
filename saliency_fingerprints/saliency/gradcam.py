"""Grad-CAM (Selvaraju et al. 2017; Captum's ``LayerGradCam``): the feature maps of the last
convolutional stage weighted by their spatially averaged gradients, summed over channels,
upsampled to the image with ``LayerAttribution.interpolate`` and repeated over the image's
channels (so the map has the image's shape, like every other method's).

The layer (:func:`gradcam_layer`): the last ``nn.ReLU``, in the order of the forward pass, whose
output is a ``(N, C, H, W)`` feature map - the rectified output of the last convolutional stage,
which is what Selvaraju et al. explain (the last conv layer's rectified feature maps), before
any pooling that follows it. For every architecture in :mod:`saliency_fingerprints.models`:

=============== ================= ============ ===========
architecture    layer             32-px input  8-px input
=============== ================= ============ ===========
cnn2            relu2             16 x 16      4 x 4
minicnn(_bn)    blocks[3].relu2   4 x 4        2 x 2
miniresnet      blocks[3].relu2   4 x 4        2 x 2
=============== ================= ============ ===========

(``cnn2``: before its second max-pooling; MiniResNet: after the last skip addition; both
MiniNets: before global average pooling.) A model without a ReLU module on feature maps falls
back to its last ``nn.Conv2d`` executed. The layer is found with forward hooks on one image, so
wrapped models (the sanity checks' shifted input) resolve to the same layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models import last_feature_layer
from .base import register
from .captum_adapter import CaptumMethod


def gradcam_layer(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """The layer Grad-CAM explains (see the module docstring):
    :func:`~saliency_fingerprints.models.last_feature_layer` of ``image`` (``(1, C, H, W)``)."""
    layer = last_feature_layer(model, image)
    if layer is None:
        raise ConfigError("methods.gradcam: the model has no convolutional feature map to explain")
    return layer


@register("gradcam", short="GC")
class GradCam(CaptumMethod):
    """Grad-CAM on the last rectified convolutional feature map, upsampled to the image."""

    captum_class = "LayerGradCam"

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        relu_attributions: bool = True,
        interpolate_mode: str = "bilinear",
    ) -> None:
        super().__init__(model, pass_size)
        self.relu_attributions, self.interpolate_mode = relu_attributions, interpolate_mode

    def captum_arguments(self, images):
        return {"layer": gradcam_layer(self.model, images[:1].detach())}

    def attribute_arguments(self, rows):
        return {"relu_attributions": self.relu_attributions}

    def to_maps(self, attributions, rows):
        from captum.attr import LayerAttribution

        up = LayerAttribution.interpolate(
            attributions, tuple(rows.shape[2:]), self.interpolate_mode
        )
        return up.expand(-1, rows.shape[1], *([-1] * (rows.dim() - 2)))
