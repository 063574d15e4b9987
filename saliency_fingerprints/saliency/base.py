"""The base class of every saliency method, and the registry that finds methods by name.

A method is one class: a subclass of :class:`SaliencyMethod` decorated with
:func:`register`, whose constructor takes ``(model, pass_size, **params)``. Its keyword
parameters are its config keys (``methods.<name>.<key>``): each is stored as an attribute of
the same name (:meth:`SaliencyMethod.params` reads them back for the store's attributes) and
each has a block entry in ``config/schema/config.schema.yaml`` under ``methods.<name>``, which
documents it, bounds it and gives its default. The schema is the single source of those
defaults and bounds: constructors do not repeat them (only checks that span several values, or
that name a branch of the code, stay); a default a constructor declares for direct callers must
equal the schema's (``tests/test_method_registry.py`` checks both directions).

::

    @register("smoothgrad", short="SG")
    class SmoothGrad(SaliencyMethod):
        def __init__(self, model, pass_size=64, n_samples=25, noise_level=0.15, ...): ...
        def attribute(self, images, targets=None, sample_ids=None): ...
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from ..errors import ConfigError


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


BASELINES = ("zero", "min")


def baseline_images(images: torch.Tensor, baseline: str) -> torch.Tensor:
    """The reference images of path and difference methods (IG, DeepLift): ``zero`` (a zero
    image) or ``min`` (a constant image at each image's minimum: a black image for [0, 1] inputs
    whatever preprocessing shifts them; Kindermans et al. 2017)."""
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline != "min":
        raise ConfigError(f"baseline {baseline!r} is unknown; expected one of {BASELINES}")
    low = images.flatten(1).min(1).values.view(-1, *([1] * (images.dim() - 1)))
    return low.expand_as(images).clone()


class SaliencyMethod:
    """Base class: ``attribute(images, targets, sample_ids) -> maps`` (same shape as images).

    ``gradient_evaluations`` is the number of forward+backward rows one map costs (k), so a
    method cannot beat ``limit / k`` maps per second. ``name`` and ``short_name`` are set by
    :func:`register`.
    """

    name = "base"
    short_name = "base"
    gradient_evaluations = 1
    #: Per-map diagnostics stored beside the maps as ``<name>(sample)`` data variables:
    #: name -> description (the variable's ``description`` attribute). None by default.
    map_variables: dict[str, str] = {}
    #: True for methods that need the dataset's training images besides the images they explain
    #: (input-agnostic class maps draw their minibatches from them): the store job then calls
    #: :meth:`set_sample_set` before the first :meth:`attribute`.
    needs_sample_set = False

    def __init__(self, model: nn.Module, pass_size: int = 64) -> None:
        # pass_size: rows per pass, >= 1 (the schema's saliency.pass_size, resolved)
        self.model = model
        self.pass_size = pass_size

    def params(self) -> dict:
        """The method's parameters, recorded in the store's attributes: every constructor
        keyword (:func:`method_parameters`) with the value held in the attribute of its name."""
        return {key: getattr(self, key) for key in method_parameters(type(self))}

    def check_choice(self, key: str, value: object, choices: Sequence[object]) -> None:
        """Stop on an option the code has no branch for (``methods.<name>.<key>``)."""
        if value not in choices:
            raise ConfigError(
                f"methods.{self.name}.{key} {value!r} is unknown; expected one of {tuple(choices)}"
            )

    def set_sample_set(self, images: torch.Tensor) -> None:
        """Receive the sample set (``(N, C, H, W)`` training images, on the model's device) of a
        method with :attr:`needs_sample_set`; the store job calls it once, before any map."""
        raise NotImplementedError(f"{self.name} does not use a sample set")

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


# -- the registry ------------------------------------------------------------------------------

#: name -> class of every registered method (in registration order).
METHODS: dict[str, type[SaliencyMethod]] = {}
#: name -> the short name tables and figures show (Grad, SG, IG, MP, ...).
SHORT_NAMES: dict[str, str] = {}

M = TypeVar("M", bound=type[SaliencyMethod])


def register(name: str, short: str) -> Callable[[M], M]:
    """Class decorator adding a saliency method to the registry under ``name`` (its config key
    ``methods.<name>`` and the ``method`` of its map stores) with the ``short`` name of tables
    and figures. Its defaults are its constructor's keyword defaults (:func:`method_defaults`)."""

    def wrap(cls: M) -> M:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"saliency method {name!r} is registered twice")
        cls.name, cls.short_name = name, short
        METHODS[name] = cls
        SHORT_NAMES[name] = short
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove a method from the registry (for tests that register a throw-away method)."""
    METHODS.pop(name, None)
    SHORT_NAMES.pop(name, None)


def _keywords(cls: type[SaliencyMethod]) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # less self
    return [
        p
        for p in parameters
        if p.name not in ("model", "pass_size")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def method_parameters(cls: type[SaliencyMethod]) -> list[str]:
    """A method's config keys: its constructor's keywords after ``model`` and ``pass_size``."""
    return [p.name for p in _keywords(cls)]


def method_defaults(cls: type[SaliencyMethod] | str) -> dict:
    """The defaults a method's class declares (constructor keyword defaults), by key."""
    cls = METHODS[cls] if isinstance(cls, str) else cls
    return {p.name: p.default for p in _keywords(cls) if p.default is not p.empty}


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
