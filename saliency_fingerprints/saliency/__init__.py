"""Batched saliency engines: where the maps are computed.

Each method is a small class in the spirit of Captum's attribution classes: build it around a
model, call :meth:`SaliencyMethod.attribute` on a batch of images. Unlike Captum's default call,
the gradient evaluations of all images, noise samples and path steps are folded into passes of
``pass_size`` rows, because the throughput of a forward+backward pass depends on its size (on
small CPUs 64 rows ran ~1.7x faster per image than 256). No per-image Python loop touches the
model.

The package, one concern per module:

* :mod:`.base` - :class:`SaliencyMethod`, the method registry (:func:`register`,
  :data:`METHODS`, :data:`SHORT_NAMES`, :func:`build_method`) and the one-pass gradient
  :func:`input_gradients`;
* one module per method: :mod:`.gradient` (Grad), :mod:`.smoothgrad` (SG),
  :mod:`.integrated_gradients` (IG), :mod:`.perturbation` (Meaningful Perturbation, MP) - our
  own engines, with Google PAIR's defaults for Grad / SG / IG (the library the paper used) - and,
  through :mod:`.captum_adapter` (any Captum attribution class, batched the same way),
  :mod:`.input_x_gradient` (GxI), :mod:`.guided_backprop` (GBP), :mod:`.deeplift` (DL),
  :mod:`.gradcam` (GC); and :mod:`.input_agnostic` (IA), input-agnostic class maps (Akhtar &
  Jalwana 2023), one keyed draw of the target class's map per row, whose minibatches come from
  the train split the store job hands it (``needs_sample_set``);
* :mod:`.passes` - the pass planner: pass throughput, ``pass_size: auto``;
* :mod:`.rng` - noise keyed by ``(seed, sample_id)``, so a map does not depend on the batch or
  pass it was computed in;
* :mod:`.job` - the store job :func:`compute_saliency_maps` (its reader, :func:`open_maps`, is
  in :mod:`saliency_fingerprints.store`, so that table and figure jobs need no torch).

Adding a method is one class and one schema block: a :class:`SaliencyMethod` subclass in its own
module here, decorated with ``@register(name, short=...)`` (the package imports every method
module it holds), and a ``methods.<name>`` block in ``config/schema/config.schema.yaml`` that
documents, bounds and defaults each constructor keyword (see :mod:`.base`). Experiments may then
name it; a config needs no ``methods.<name>`` entry unless it changes a default.

Speed (see ``benchmarks/`` and BENCHMARKS.md): the reference is the *limit*, the rows per second
of one forward+backward pass to the input at the best pass size on the device at hand; a method
that needs k gradient evaluations per map cannot beat ``limit / k`` maps per second.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..store import open_maps  # re-exported: a map store's reader lives with the stores
from .base import (
    BASELINES,
    METHODS,
    SHORT_NAMES,
    SaliencyMethod,
    baseline_images,
    build_method,
    input_gradients,
    method_defaults,
    method_parameters,
    register,
    unregister,
)
from .captum_adapter import CaptumMethod
from .deeplift import DeepLift
from .gradcam import GradCam, gradcam_layer
from .gradient import Gradient
from .guided_backprop import GuidedBackprop
from .input_x_gradient import InputXGradient
from .integrated_gradients import IG_RULES, IntegratedGradients, path_points
from .job import compute_saliency_maps, select_images
from .passes import (
    _TUNED_PASS_SIZES,
    candidate_pass_sizes,
    pass_throughput,
    resolve_pass_size,
    synchronize,
    tune_pass_size,
)
from .perturbation import MeaningfulPerturbation, gaussian_blur, total_variation
from .rng import keyed_normal
from .smoothgrad import SmoothGrad

# Every module of this package other than the machinery is a method module: importing it
# registers its class, so a new method is one new module (plus its schema block), found here.
_MACHINERY = {"base", "captum_adapter", "job", "passes", "rng"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "BASELINES",
    "IG_RULES",
    "METHODS",
    "SHORT_NAMES",
    "_TUNED_PASS_SIZES",
    "CaptumMethod",
    "DeepLift",
    "GradCam",
    "Gradient",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "MeaningfulPerturbation",
    "SaliencyMethod",
    "SmoothGrad",
    "baseline_images",
    "build_method",
    "candidate_pass_sizes",
    "compute_saliency_maps",
    "gaussian_blur",
    "gradcam_layer",
    "input_gradients",
    "keyed_normal",
    "method_defaults",
    "method_parameters",
    "open_maps",
    "pass_throughput",
    "path_points",
    "register",
    "resolve_pass_size",
    "select_images",
    "synchronize",
    "total_variation",
    "tune_pass_size",
    "unregister",
]
