"""Input-agnostic class maps (Akhtar & Jalwana 2023, "Rethinking interpretation: Input-agnostic
saliency mapping of deep visual classifiers", AAAI; Algorithm 1 and the refinement of Eq. 2).

For a primary model ``K`` and a class ``l`` the method searches one perturbation ``nu`` of the
image's shape such that the samples ``Clip(I - nu)`` of a sample set are classified as ``l``:

1. **Search (Algorithm 1).** ``mu = sigma = 0``; for ``k = 1 .. K``: draw a minibatch ``I`` of
   ``b`` samples, take the mean input gradient ``x_k = E_i[grad J_CE(K(Clip(I_i - nu_{k-1})), l)]``,
   update Adam's moments ``mu_k, sigma_k`` and form the Adam direction
   ``v = mu_hat / (sqrt(sigma_hat) + eps)``; test both signs with a unit step on the minibatch,
   ``I+ = Clip(I - (nu_{k-1} + v/||v||))`` and ``I- = Clip(I - (nu_{k-1} - v/||v||))``, keep
   ``nu_k = nu_{k-1} + v`` when ``I+`` has at least as many samples classified as ``l`` as
   ``I-``, else ``nu_k = nu_{k-1} - v``; project ``nu_k`` onto the L2 ball of radius ``eta``
   (:func:`project_l2`).
2. **Refinement (Eq. 2).** ``refine_iterations`` Adam steps on
   ``E[J_CE(K(Clip(I - nu)), l)] + lam * mean|nu * (1 - Xi)|``, with ``Xi`` the model's own
   activation map of ``nu`` (:func:`activation_weights`); then the map is clipped and projected
   onto the eta ball again.
3. **Cycles.** Search + refinement are run ``cycles`` times, the refined map seeding the next
   search (the first search starts from a black map, zeros). The result is the refined map of
   the last cycle.

Our reading of each step the paper leaves open (the numbers are Algorithm 1's lines):

* **Where the gradient is taken: at the nudged samples.** Line 3 replaces each drawn ``I_i`` by
  ``Clip(I_i - nu)`` before line 4 takes ``grad_{I_i} J``, so the gradient is the loss gradient
  at the *nudged, clipped* samples (with respect to the model's input). Line 3 writes ``nu_k``
  inside iteration ``k``, before ``nu_k`` exists: we read it as the current map ``nu_{k-1}``.
  This is also what makes the search integrate: at the raw samples ``x_k`` would not depend on
  the map at all.
* **Iterations.** Line 2 loops ``k = 0 .. K``, but the bias corrections ``1 - beta^k`` of line 7
  vanish at ``k = 0``; we run ``k = 1 .. K``: ``K`` iterations (``iterations``).
* **Adam's eps.** Line 7 is Adam's bias-corrected step without eps; we compute
  ``v = (mu_k / (1 - beta1^k)) / (sqrt(sigma_k / (1 - beta2^k)) + eps)``, equal to line 7 up to
  ``eps`` (``adam_eps``, 1e-8 as in Adam), which only guards against zero gradients.
* **Sign.** By Lemma 1 the class probability rises along ``-E[grad J]``; the model sees
  ``I - nu``, so ``nu`` moves along ``+grad``: ``nu + v`` is the original (descent) direction
  and ``nu - v`` the "flipped direction" the text says is taken "if the latter identifies a
  better local solution". Line 9's ``>=`` keeps ``+v`` on ties.
* **The sign test (lines 8-9).** Lines 8-9 write ``v_{k-1}``, which we read as ``nu_{k-1}`` (a
  typo: no ``v_{k-1}`` is defined). ``I+`` and ``I-`` are built from the *raw* minibatch samples
  (subtracting from the already nudged ones would subtract the map twice), with the unit step
  ``v/||v||`` as written, while the update adds the full ``v``, as written.
  ``E[K(I) -> l]`` is the fraction of the minibatch whose arg-max class is ``l``.
* **No step size.** The paper adds ``v`` itself. Early on every ``|v_j|`` is about 1, so
  ``||v|| ~ sqrt(D)`` (``D = C*H*W``) far exceeds ``eta`` and the projection sets the scale; the
  ratio ``sqrt(D) / eta`` is the same at 224x224x3 with eta 30 as at any size with
  :func:`scaled_eta` (about 12.9), so the search behaves alike at our image size.
* **Minibatches** are ``b`` i.i.d. draws *with replacement* from the sample set (Fig. 2: "an
  iteration draws i.i.d. samples from a distribution"), so a sample set smaller than ``b``
  works. Every draw comes from the caller's ``torch.Generator`` (on its own device; indices then
  move to the model's device), so a map is a function of the model, the samples, the label, the
  settings and the generator's state.
* **The norm in Eq. 2.** Eq. 2 writes ``lam * (nu * (1 - Xi))`` with no norm; we use the L1
  mean, ``mean_j |nu_j (1 - Xi_j)|`` over all ``C*H*W`` elements: the sparsity-promoting choice
  for "suppressing" the unwanted component, and (being a mean) independent of the image size. At
  the per-pixel budget of the eta ball (``mean|nu| ~ 0.06``) ``lam = 50`` makes it of the order
  of the cross-entropy term (about 1), so the paper's ``lam`` is a sensible weight in this form.
* **The refinement's expectation** is over minibatches of the same ``b`` (the paper: "we use 150
  iterations while keep the other related parameter values the same"), one fresh minibatch per
  Adam step; the inputs ``I - nu`` are clipped to the dynamic range as in Algorithm 1. The Adam
  learning rate is not given: ``refine_lr`` defaults to Adam's own 1e-3 (with 150 steps a pixel
  can move by up to 0.15, about twice the per-pixel budget of the ball), and Adam's betas are
  Algorithm 1's 0.9 / 0.999. Model gradients go through ``torch.autograd.grad`` with respect to
  the inputs or the map only, so no ``.grad`` of the model's parameters is touched.
* **Xi** (:func:`activation_weights`): ``nu`` itself (not an image minus ``nu``) is passed
  through the model, as the paper says; the "activations of the convolutional base" are the
  output of :func:`activation_layer` (the last ``nn.ReLU`` executed whose output is a 4-D feature
  map: ``relu2`` of ``cnn2``, ``blocks[3].relu2`` of the MiniNets, the same layer Grad-CAM uses);
  they are averaged over channels (the paper "resembles GradCAM" but has no gradient weights),
  bilinearly interpolated to ``H x W`` (``align_corners=False``), min-max normalised to
  ``[0, 1]`` (a constant map gives zeros: every pixel penalised) and repeated over the image's
  channels. ``Xi`` is a weighting, not part of the objective: it is detached, and recomputed
  from the current map before every refinement step (``recompute_xi=False``: once per
  refinement, from the map the refinement starts with).
* **"Clipped and projected"** after the refinement: the map is clipped to
  ``[-(clip_max - clip_min), clip_max - clip_min]`` (a larger component has no effect, since
  ``I - nu`` is clipped to the dynamic range; clipping the map itself to ``[0, 1]`` would drop
  its sign), then projected onto the eta ball.
* **Cycles.** Adam's moments start at zero in every search (line 1); the refined map is the
  seed of the next search; the output is the refined map of the last cycle.
* **eta's units and scaling.** Our images are ``[0, 1]`` floats and ``eta`` is measured in
  those units. The paper's ``eta = 30`` is for 224x224x3 ImageNet inputs (it does not say in
  which units; in ``[0, 1]`` units it is a root-mean-square of 0.077, about 20/255, per
  element). Keeping that per-element budget, ``eta`` scales with the square root of the number
  of elements (:func:`scaled_eta`): 4.29 (30/7) for 3x32x32, 2.47 for 1x32x32. ``eta_reference``
  selects the reference shape (``None``: use ``eta`` as given).

Diagnostics (:func:`map_diagnostics`): the fraction of *all* samples classified as the label
after subtracting the map (the method's success) and before (the baseline), the mean softmax
probability of the label after and before, and the map's L2 norm. :func:`class_maps` computes
them for every map it returns.

Many maps at once (:func:`input_agnostic_maps`, the ``input_agnostic`` saliency method's engine):
the search and refinement of ``n`` maps run together, every pass holding the ``n * b`` rows of
their minibatches, each map with its own generator, gradient, Adam moments, sign test, ``Xi``
and projection, so row ``i`` equals :func:`input_agnostic_map` with ``generators[i]`` up to float
rounding (``tests/test_input_agnostic_method.py``); :func:`batch_diagnostics` gives their success
and norms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import last_feature_layer
from .runtime import seed_generator

PAPER_REFERENCE_SHAPE: tuple[int, int, int] = (3, 224, 224)

StageCallback = Callable[[int, str, torch.Tensor], None]


def scaled_eta(
    eta: float,
    image_shape: Sequence[int],
    reference: Sequence[int] = PAPER_REFERENCE_SHAPE,
) -> float:
    """The L2-ball radius for images of ``image_shape`` (e.g. ``(C, H, W)``) that keeps the
    per-element budget of radius ``eta`` at ``reference``: ``eta * sqrt(D / D_ref)`` with ``D``
    the number of elements. ``scaled_eta(30, (3, 32, 32))`` is 30/7, about 4.29."""
    if not _positive_number(eta):
        raise ConfigError(f"agnostic settings: eta must be a positive number, got {eta!r}")
    pixels = _element_count(image_shape, "image_shape")
    reference_pixels = _element_count(reference, "eta_reference")
    return float(eta) * math.sqrt(pixels / reference_pixels)


@dataclass(frozen=True)
class AgnosticSettings:
    """Hyper-parameters of the input-agnostic map; defaults are the paper's (hyper-parameter
    section) where it gives them. Every value is checked in :meth:`validate` (run on creation),
    which raises :class:`~saliency_fingerprints.errors.ConfigError` naming the key."""

    batch_size: int = 128
    """``b``: samples per minibatch (drawn with replacement), in the search and the
    refinement."""
    iterations: int = 650
    """``K``: iterations of Algorithm 1 per cycle (at least 1)."""
    eta: float = 30.0
    """Radius of the L2 ball the map is projected onto, at the reference image shape
    ``eta_reference`` (see :func:`scaled_eta`)."""
    eta_reference: tuple[int, ...] | None = PAPER_REFERENCE_SHAPE
    """Shape ``eta`` is given for (the paper's 3x224x224): the radius used is
    ``scaled_eta(eta, image_shape, eta_reference)``; ``None`` uses ``eta`` unscaled."""
    refine_iterations: int = 150
    """Adam steps of the refinement (Eq. 2) per cycle; 0 skips the refinement (an ablation;
    the map is still clipped and projected)."""
    refine_lr: float = 1e-3
    """Adam learning rate of the refinement (not given by the paper; Adam's default)."""
    lam: float = 50.0
    """``lambda`` of Eq. 2: weight of the penalty ``mean|nu * (1 - Xi)|`` (0 turns it off)."""
    cycles: int = 2
    """Rounds of search + refinement, the refined map seeding the next search."""
    beta1: float = 0.9
    """Adam's first-moment decay (Algorithm 1's line 1; also the refinement's Adam)."""
    beta2: float = 0.999
    """Adam's second-moment decay (Algorithm 1's line 1; also the refinement's Adam)."""
    adam_eps: float = 1e-8
    """Added to ``sqrt(sigma_hat)`` in the search direction and the refinement's Adam."""
    recompute_xi: bool = True
    """Recompute ``Xi`` from the current map before every refinement step (False: once per
    refinement)."""
    clip_min: float = 0.0
    """Lower end of the images' dynamic range (``Clip``)."""
    clip_max: float = 1.0
    """Upper end of the images' dynamic range (``Clip``)."""
    eval_batch_size: int = 512
    """Samples per forward pass in :func:`map_diagnostics` (no effect on the map)."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> AgnosticSettings:
        """Settings from a config mapping; an unknown key raises ``ConfigError`` naming it."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"agnostic settings: unknown key {key!r}; expected one of: "
                    + ", ".join(sorted(known))
                )
        kwargs = dict(values)
        reference = kwargs.get("eta_reference")
        if isinstance(reference, list):
            kwargs["eta_reference"] = tuple(reference)
        return cls(**kwargs)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise ``ConfigError`` (naming the key) for the first invalid value."""

        def fail(key: str, expected: str) -> None:
            raise ConfigError(
                f"agnostic settings: {key} must be {expected}, got {getattr(self, key)!r}"
            )

        for key in ("batch_size", "iterations", "cycles", "eval_batch_size"):
            value = getattr(self, key)
            if not _integer(value) or value < 1:
                fail(key, "a positive integer")
        if not _integer(self.refine_iterations) or self.refine_iterations < 0:
            fail("refine_iterations", "a non-negative integer")
        for key in ("eta", "refine_lr", "adam_eps"):
            if not _positive_number(getattr(self, key)):
                fail(key, "a positive number")
        if not _number(self.lam) or not math.isfinite(self.lam) or self.lam < 0:
            fail("lam", "a non-negative number")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not _number(value) or not 0 <= value < 1:
                fail(key, "a number in [0, 1)")
        if not isinstance(self.recompute_xi, bool):
            fail("recompute_xi", "true or false")
        for key in ("clip_min", "clip_max"):
            value = getattr(self, key)
            if not _number(value) or not math.isfinite(value):
                fail(key, "a finite number")
        if self.clip_min >= self.clip_max:
            raise ConfigError(
                f"agnostic settings: clip_min ({self.clip_min!r}) must be below clip_max "
                f"({self.clip_max!r})"
            )
        if self.eta_reference is not None:
            reference = self.eta_reference
            if (
                not isinstance(reference, tuple)
                or not reference
                or not all(_integer(n) and n >= 1 for n in reference)
            ):
                fail("eta_reference", "null or a tuple of positive integers such as (3, 224, 224)")

    def radius(self, image_shape: Sequence[int]) -> float:
        """The L2-ball radius used for images of ``image_shape`` (``(C, H, W)``)."""
        if self.eta_reference is None:
            return float(self.eta)
        return scaled_eta(self.eta, image_shape, self.eta_reference)


@dataclass(frozen=True)
class MapDiagnostics:
    """How well a map does what Algorithm 1 optimises, on the whole sample set."""

    success: float
    """Fraction of samples classified as the label after subtracting the map (``Clip(I-nu)``)."""
    clean: float
    """The same fraction without the map (the baseline)."""
    probability: float
    """Mean softmax probability of the label after subtracting the map."""
    clean_probability: float
    """Mean softmax probability of the label without the map."""
    norm: float
    """The map's L2 norm (at most the ball's radius)."""


@dataclass
class ClassMaps:
    """Maps for several (label, draw) pairs, one row each, with their diagnostics."""

    maps: torch.Tensor
    """``(len(labels) * n_draws, C, H, W)``, on the CPU, row ``i`` for ``rows[i]``."""
    rows: list[tuple[int, int]]
    """``(label, draw)`` of each row: labels in the order given, draws ``0 .. n_draws-1``."""
    diagnostics: list[MapDiagnostics] = field(default_factory=list)
    """One :class:`MapDiagnostics` per row."""

    @property
    def success(self) -> torch.Tensor:
        """Per row: fraction of samples classified as the row's label after the map."""
        return torch.tensor([d.success for d in self.diagnostics], dtype=torch.float64)

    @property
    def norms(self) -> torch.Tensor:
        """Per row: the map's L2 norm."""
        return torch.tensor([d.norm for d in self.diagnostics], dtype=torch.float64)


def project_l2(nu: torch.Tensor, eta: float) -> torch.Tensor:
    """``Psi`` of Algorithm 1's line 15: ``nu * min(1, eta / ||nu||_2)`` (the whole tensor's
    norm); a zero map stays zero."""
    norm = float(torch.linalg.vector_norm(nu))
    if norm <= eta:
        return nu
    return nu * (eta / norm)


def activation_layer(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """The "convolutional base" whose activations make ``Xi``: the model's last convolutional
    feature map (:func:`~saliency_fingerprints.models.last_feature_layer`, the layer Grad-CAM
    explains) for ``image`` (``(1, C, H, W)``)."""
    layer = last_feature_layer(model, image)
    if layer is None:
        raise ConfigError("agnostic maps: the model has no convolutional feature map for Xi")
    return layer


def activation_weights(model: nn.Module, layer: nn.Module, nu: torch.Tensor) -> torch.Tensor:
    """``Xi`` of Eq. 2 for the map ``nu`` (``(C, H, W)``): ``layer``'s output for ``nu``
    averaged over channels, bilinearly interpolated to ``H x W``, min-max normalised to
    ``[0, 1]`` (zeros if constant), repeated over the ``C`` channels; detached."""
    return _activation_weights_many(model, layer, nu.unsqueeze(0))[0]


def input_agnostic_map(
    model: nn.Module,
    samples: torch.Tensor,
    label: int,
    settings: AgnosticSettings | None = None,
    *,
    generator: torch.Generator,
    on_stage: StageCallback | None = None,
) -> torch.Tensor:
    """The input-agnostic map ``nu`` (``(C, H, W)``, on the model's device) of class ``label``
    for ``model``, from the sample set ``samples`` (``(N, C, H, W)`` images in the settings'
    dynamic range, e.g. training images). Deterministic for a given ``generator`` state: every
    minibatch is drawn from it. ``on_stage(cycle, stage, nu)`` is called with a copy of the map
    after each search (``stage == "search"``) and refinement (``"refine"``), cycles from 0.

    The model is put in eval mode for the duration (and restored); its parameters' gradients are
    not touched. See the module docstring for the algorithm and our reading of the paper."""
    settings = settings if settings is not None else AgnosticSettings()
    device = _model_device(model)
    samples = _check_samples(samples).to(device=device, dtype=_model_dtype(model))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    was_training = model.training
    model.eval()
    try:
        _check_label(model, samples, label)
        eta = settings.radius(samples.shape[1:])
        layer = activation_layer(model, samples[:1])
        target = torch.tensor([label], dtype=torch.long, device=device)
        nu = torch.zeros_like(samples[:1])  # one row of the batched search and refinement
        for cycle in range(settings.cycles):
            nu = _search_many(model, samples, target, settings, eta, nu, [generator])
            if on_stage is not None:
                on_stage(cycle, "search", nu[0].detach().clone())
            nu = _refine_many(model, layer, samples, target, settings, eta, nu, [generator])
            if on_stage is not None:
                on_stage(cycle, "refine", nu[0].detach().clone())
    finally:
        model.train(was_training)
    return nu[0].detach()


def map_diagnostics(
    model: nn.Module,
    samples: torch.Tensor,
    label: int,
    nu: torch.Tensor,
    settings: AgnosticSettings | None = None,
) -> MapDiagnostics:
    """Success of the map ``nu`` for ``label`` on all ``samples`` (see
    :class:`MapDiagnostics`); deterministic (no draws)."""
    settings = settings if settings is not None else AgnosticSettings()
    device = _model_device(model)
    samples = _check_samples(samples)
    nu = nu.detach().to(device=device, dtype=_model_dtype(model))
    if nu.shape != samples.shape[1:]:
        raise ValueError(f"map shape {tuple(nu.shape)} differs from {tuple(samples.shape[1:])}")
    was_training = model.training
    model.eval()
    hits = clean_hits = 0
    probability = clean_probability = 0.0
    try:
        _check_label(model, samples[:1].to(device=device, dtype=nu.dtype), label)
        with torch.no_grad():
            for start in range(0, len(samples), settings.eval_batch_size):
                batch = samples[start : start + settings.eval_batch_size]
                batch = batch.to(device=device, dtype=nu.dtype)
                for perturbed, is_clean in ((_clip(batch - nu, settings), False), (batch, True)):
                    probs = F.softmax(model(perturbed).float(), dim=1)
                    n_hits = int((probs.argmax(dim=1) == label).sum())
                    p_sum = float(probs[:, label].sum())
                    if is_clean:
                        clean_hits += n_hits
                        clean_probability += p_sum
                    else:
                        hits += n_hits
                        probability += p_sum
    finally:
        model.train(was_training)
    n = len(samples)
    return MapDiagnostics(
        success=hits / n,
        clean=clean_hits / n,
        probability=probability / n,
        clean_probability=clean_probability / n,
        norm=float(torch.linalg.vector_norm(nu.float())),
    )


def class_maps(
    model: nn.Module,
    samples: torch.Tensor,
    labels: Sequence[int],
    n_draws: int,
    settings: AgnosticSettings | None = None,
    seed: int = 0,
) -> ClassMaps:
    """``n_draws`` maps for each of ``labels``: row ``(label, draw)`` is
    :func:`input_agnostic_map` with the generator ``seed_generator(seed, label, draw)`` on the
    model's device, so each map is reproducible on its own and the draws differ only in their
    minibatches. Maps and diagnostics come back on the CPU."""
    settings = settings if settings is not None else AgnosticSettings()
    if not _integer(n_draws) or n_draws < 1:
        raise ConfigError(f"agnostic maps: n_draws must be a positive integer, got {n_draws!r}")
    if not _integer(seed) or seed < 0:
        raise ConfigError(f"agnostic maps: seed must be a non-negative integer, got {seed!r}")
    labels = list(labels)
    if not labels or not all(_integer(label) for label in labels):
        raise ConfigError(f"agnostic maps: labels must be a non-empty list of ints, got {labels!r}")
    device = _model_device(model)
    samples = _check_samples(samples).to(device=device, dtype=_model_dtype(model))
    maps: list[torch.Tensor] = []
    rows: list[tuple[int, int]] = []
    diagnostics: list[MapDiagnostics] = []
    for label in labels:
        for draw in range(n_draws):
            generator = seed_generator(seed, label, draw, device=device)
            nu = input_agnostic_map(model, samples, label, settings, generator=generator)
            diagnostics.append(map_diagnostics(model, samples, label, nu, settings))
            maps.append(nu.cpu())
            rows.append((int(label), draw))
    return ClassMaps(maps=torch.stack(maps), rows=rows, diagnostics=diagnostics)


# --- the two stages -----------------------------------------------------------------------


# --- helpers ------------------------------------------------------------------------------


def _draw(samples: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    """``b`` samples drawn with replacement, the indices from ``generator`` (on its device)."""
    index = torch.randint(len(samples), (b,), generator=generator, device=generator.device)
    return samples[index.to(samples.device)]


def _clip(images: torch.Tensor, settings: AgnosticSettings) -> torch.Tensor:
    return images.clamp(settings.clip_min, settings.clip_max)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or len(samples) == 0:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples)
        raise ValueError(f"samples must be a non-empty (N, C, H, W) tensor, got {shape}")
    if not samples.is_floating_point():
        raise ValueError(f"samples must be floating-point images, got {samples.dtype}")
    return samples


def _check_label(model: nn.Module, samples: torch.Tensor, label: int) -> None:
    with torch.no_grad():
        n_classes = model(samples[:1]).shape[1]
    if not _integer(label) or not 0 <= label < n_classes:
        raise ConfigError(
            f"agnostic maps: label must be a class of the model, 0..{n_classes - 1}, got {label!r}"
        )


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_number(value: object) -> bool:
    return _number(value) and math.isfinite(value) and value > 0  # type: ignore[arg-type]


def _element_count(shape: Sequence[int], key: str) -> int:
    if not shape or not all(_integer(n) and n >= 1 for n in shape):
        raise ConfigError(
            f"agnostic settings: {key} must be a shape of positive integers, got {shape!r}"
        )
    return math.prod(shape)


# --- many maps at once ----------------------------------------------------------------------


def input_agnostic_maps(
    model: nn.Module,
    samples: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    settings: AgnosticSettings | None = None,
    *,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Many input-agnostic maps at once: row ``i`` is :func:`input_agnostic_map` of class
    ``labels[i]`` with the generator ``generators[i]``, computed jointly (``(n, C, H, W)`` on the
    model's device).

    Every iteration of the search and of the refinement runs the ``n * b`` rows of all maps'
    minibatches in one forward+backward pass (and the ``2 n b`` rows of the sign tests in one
    forward pass); each map draws its minibatches from its own generator, and its gradient,
    Adam moments, sign test, projection and ``Xi`` are its own (the refinement's Adam is
    element-wise, so one optimiser over the ``(n, C, H, W)`` tensor is ``n`` independent ones).
    A map is therefore the same whatever else is in the batch, up to float rounding of the
    larger passes (a rounding difference can flip a tied sign test, after which the maps of
    the two computations differ; on the CPU that did not happen in the tests). ``n`` times the
    memory of one map's passes: callers bound ``n`` (the ``input_agnostic`` method: rows per
    pass)."""
    settings = settings if settings is not None else AgnosticSettings()
    device = _model_device(model)
    samples = _check_samples(samples).to(device=device, dtype=_model_dtype(model))
    labels = [int(label) for label in (labels.tolist() if torch.is_tensor(labels) else labels)]
    generators = list(generators)
    if not labels:
        return torch.zeros((0, *samples.shape[1:]), dtype=samples.dtype, device=device)
    if len(generators) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(generators)} generators")
    for generator in generators:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generators must be torch.Generators, got {type(generator).__name__}")
    was_training = model.training
    model.eval()
    try:
        for label in sorted(set(labels)):
            _check_label(model, samples, label)
        eta = settings.radius(samples.shape[1:])
        layer = activation_layer(model, samples[:1])
        target = torch.tensor(labels, dtype=torch.long, device=device)
        nu = torch.zeros((len(labels), *samples.shape[1:]), dtype=samples.dtype, device=device)
        for _cycle in range(settings.cycles):
            nu = _search_many(model, samples, target, settings, eta, nu, generators)
            nu = _refine_many(model, layer, samples, target, settings, eta, nu, generators)
    finally:
        model.train(was_training)
    return nu.detach()


def batch_diagnostics(
    model: nn.Module,
    samples: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    maps: torch.Tensor,
    settings: AgnosticSettings | None = None,
) -> dict[str, torch.Tensor]:
    """Per map (``(n,)`` float64 on the CPU): ``success`` (fraction of *all* samples classified
    as the map's label after subtracting it), ``probability`` (their mean softmax probability of
    the label) and ``norm`` (the map's L2 norm); the first two as in :func:`map_diagnostics`,
    without its clean baseline. Deterministic (no draws); ``eval_batch_size`` rows per pass."""
    settings = settings if settings is not None else AgnosticSettings()
    device = _model_device(model)
    samples = _check_samples(samples)
    labels = [int(label) for label in (labels.tolist() if torch.is_tensor(labels) else labels)]
    maps = maps.detach().to(device=device, dtype=_model_dtype(model))
    if maps.shape[1:] != samples.shape[1:] or len(maps) != len(labels):
        raise ValueError(f"maps {tuple(maps.shape)} do not fit {len(labels)} labels / samples")
    hits = torch.zeros(len(labels), dtype=torch.float64)
    probability = torch.zeros(len(labels), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(samples), settings.eval_batch_size):
                batch = samples[start : start + settings.eval_batch_size]
                batch = batch.to(device=device, dtype=maps.dtype)
                for i, label in enumerate(labels):
                    probs = F.softmax(model(_clip(batch - maps[i], settings)).float(), dim=1)
                    hits[i] += int((probs.argmax(dim=1) == label).sum())
                    probability[i] += float(probs[:, label].sum())
    finally:
        model.train(was_training)
    n = len(samples)
    norms = torch.linalg.vector_norm(maps.float().flatten(1), dim=1).double().cpu()
    return {"success": hits / n, "probability": probability / n, "norm": norms}


def _project_many(nu: torch.Tensor, eta: float) -> torch.Tensor:
    """:func:`project_l2` per map (row) of ``nu``."""
    norm = torch.linalg.vector_norm(nu.flatten(1), dim=1)
    factor = torch.where(norm <= eta, torch.ones_like(norm), eta / norm.clamp_min(1e-30))
    return nu * factor.view(-1, *([1] * (nu.dim() - 1)))


def _draw_many(
    samples: torch.Tensor, b: int, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """``(n, b, C, H, W)``: each map's minibatch from its own generator (as :func:`_draw`)."""
    return torch.stack([_draw(samples, b, generator) for generator in generators])


def _search_many(
    model: nn.Module,
    samples: torch.Tensor,
    target: torch.Tensor,
    settings: AgnosticSettings,
    eta: float,
    seed_maps: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Algorithm 1 from each row of ``seed_maps`` (moments start at zero), all rows at once: the
    mean per-sample gradient of each map's minibatch (line 4), Adam-like moments, the sign test
    between +v and -v (lines 8-9) and the projection onto the eta ball, per map."""
    n, b = len(target), settings.batch_size
    beta1, beta2 = settings.beta1, settings.beta2
    shape = samples.shape[1:]
    row_target = target.repeat_interleave(b)
    expand = (n, *([1] * len(shape)))
    nu = seed_maps.detach().clone()
    mu = torch.zeros_like(nu)
    sigma = torch.zeros_like(nu)
    for k in range(1, settings.iterations + 1):
        batch = _draw_many(samples, b, generators)
        nudged = _clip(batch - nu.unsqueeze(1), settings).reshape(n * b, *shape)
        nudged.requires_grad_(True)
        loss = F.cross_entropy(model(nudged), row_target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, nudged)
        x = grad.view(n, b, *shape).sum(dim=1) / b
        mu = beta1 * mu + (1 - beta1) * x
        sigma = beta2 * sigma + (1 - beta2) * x * x
        v = (mu / (1 - beta1**k)) / (torch.sqrt(sigma / (1 - beta2**k)) + settings.adam_eps)
        v_norm = torch.linalg.vector_norm(v.flatten(1), dim=1)
        active = v_norm > 0  # a map without gradient signal keeps its map this iteration
        unit = v / v_norm.clamp_min(1e-30).view(expand)
        with torch.no_grad():
            plus_set = _clip(batch - (nu + unit).unsqueeze(1), settings).reshape(n * b, *shape)
            minus_set = _clip(batch - (nu - unit).unsqueeze(1), settings).reshape(n * b, *shape)
            predicted = model(torch.cat([plus_set, minus_set])).argmax(dim=1)
            hits = (predicted == row_target.repeat(2)).view(2, n, b).sum(dim=2)
        sign = torch.where(hits[0] >= hits[1], 1.0, -1.0).to(nu.dtype).view(expand)
        stepped = _project_many(nu + sign * v, eta)
        nu = torch.where(active.view(expand), stepped, nu)
    return nu


def _activation_weights_many(model: nn.Module, layer: nn.Module, nu: torch.Tensor) -> torch.Tensor:
    """:func:`activation_weights` for every row of ``nu`` (one forward pass)."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        with torch.no_grad():
            model(nu.detach())
    finally:
        hook.remove()
    if not captured:
        raise ConfigError("agnostic maps: the activation layer did not run in the forward pass")
    activation = captured[-1].mean(dim=1, keepdim=True)
    activation = F.interpolate(
        activation, size=nu.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    flat = activation.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).view(-1, 1, 1)
    xi = torch.where(
        span > 0,
        (activation - low.view(-1, 1, 1)) / span.clamp_min(1e-30),
        torch.zeros_like(activation),
    )
    return xi.unsqueeze(1).expand_as(nu).detach()


def _refine_many(
    model: nn.Module,
    layer: nn.Module,
    samples: torch.Tensor,
    target: torch.Tensor,
    settings: AgnosticSettings,
    eta: float,
    seed_maps: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Eq. 2 with Adam for every row of ``seed_maps`` at once (the sum of the maps' own losses,
    so each map's gradient is its own loss's), then clip each map and project it onto the eta
    ball."""
    n, b = len(target), settings.batch_size
    shape = samples.shape[1:]
    nu = seed_maps.detach().clone().requires_grad_(True)
    if settings.refine_iterations > 0:
        optimiser = torch.optim.Adam(
            [nu],
            lr=settings.refine_lr,
            betas=(settings.beta1, settings.beta2),
            eps=settings.adam_eps,
        )
        row_target = target.repeat_interleave(b)
        xi = None if settings.recompute_xi else _activation_weights_many(model, layer, nu)
        for _ in range(settings.refine_iterations):
            if settings.recompute_xi or xi is None:
                xi = _activation_weights_many(model, layer, nu)
            batch = _draw_many(samples, b, generators)
            inputs = _clip(batch - nu.unsqueeze(1), settings).reshape(n * b, *shape)
            ce = F.cross_entropy(model(inputs), row_target, reduction="none").view(n, b).mean(1)
            penalty = settings.lam * (nu * (1 - xi)).abs().flatten(1).mean(1)
            (grad,) = torch.autograd.grad((ce + penalty).sum(), nu)
            nu.grad = grad
            optimiser.step()
            nu.grad = None
    span = settings.clip_max - settings.clip_min
    with torch.no_grad():
        refined = nu.detach().clamp(-span, span)
    return _project_many(refined, eta)
