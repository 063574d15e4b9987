"""Gradient x Input (Shrikumar et al. 2016; Captum's ``InputXGradient``): the input gradient of
the target logit times the input, element-wise. No parameters."""

from __future__ import annotations

from .base import register
from .captum_adapter import CaptumMethod


@register("input_x_gradient", short="GxI")
class InputXGradient(CaptumMethod):
    """The input gradient times the input."""

    captum_class = "InputXGradient"
