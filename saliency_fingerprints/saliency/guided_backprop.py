"""Guided Backpropagation (Springenberg et al. 2015; Captum's ``GuidedBackprop``): the input
gradient of the target logit with every ReLU passing back only positive gradients (on top of
the ReLU's own mask). Hooks every ``nn.ReLU`` module. No parameters."""

from __future__ import annotations

from .base import register
from .captum_adapter import CaptumMethod


@register("guided_backprop", short="GBP")
class GuidedBackprop(CaptumMethod):
    """Input gradients with positive-only gradients through every ReLU."""

    captum_class = "GuidedBackprop"
