"""Sanity checks of the saliency methods themselves, beyond the paper.

A fingerprint is only interesting if the maps depend on what the network learned. Three tests,
each comparing a primary's maps with maps of the same images made under a change:

* **Model parameter randomisation** (Adebayo et al., 2018): the weight layers are re-initialised
  from the top (logits) down, one more at each step (``cascading``), or one at a time with the
  others kept trained (``independent``). A method whose maps stay similar does not depend on
  the weights it claims to explain.
* **Data randomisation** (Adebayo et al., 2018): the maps of a copy of the primary trained on
  permuted labels until it has memorised them (:func:`train_random_label_primary`: it stops at
  the first epoch whose train accuracy reaches a target, or at an epoch cap). A copy that did
  not reach the target is no memorising network, and the summary says so beside its rows.
* **Input invariance** (Kindermans et al., 2017): every input shifted by a constant ``m`` and the
  model compensated so that it computes the same function (:class:`ShiftedInput`): the outputs
  and input gradients are unchanged, so a method *should* give the same maps. Grad and SmoothGrad
  pass; Integrated Gradients with a zero baseline does not.

Two repairs of parameter randomisation by Hedström et al. (2023, "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test"; Quantus' ``SmoothMPRT`` and
``EfficientMPRT``):

* **Smooth MPRT** (sMPRT): the same ladder, each map (of the trained and of every randomised
  model) the mean of the method's maps over ``n_samples`` copies of the image, ``n_samples - 1``
  with Gaussian noise (std ``noise_level`` x the image's range, seeded: every model sees the same
  copies) and the image itself (:func:`smoothed_maps`). Averaging removes the noise both models'
  maps share, which otherwise shows up as a similarity the weights do not explain.
* **Efficient MPRT** (eMPRT): no ladder, only the fully randomised model; per image, the
  complexity (Quantus' default: the discrete entropy of the map's histogram,
  :func:`discrete_entropy`) of its map over that of the trained model's map
  (:func:`complexity_scores`). Above 1: randomisation made the map less structured (a pass).

Similarity per image, as in the sanity-check literature: Spearman rank correlation of the
absolute maps (``spearman_abs``) and of the signed maps (``spearman``), both after summing the
channels, and SSIM of the absolute maps scaled to [0, 1] (``ssim``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.stats import entropy, rankdata
from torch import nn

from .configuration import primary_name
from .datasets import open_dataset
from .errors import ConfigError
from .primary import permuted_labels, train_primary
from .provenance import as_attr
from .saliency import build_method, resolve_pass_size
from .sanity_tables import COMPLEXITIES, EFFICIENT, SMOOTH_PREFIX
from .stage import Stage
from .store import write_dataset, write_json
from .tables import write_table
from .training import load_model, predict

log = logging.getLogger(__name__)

RANDOMISATIONS = ("cascading", "independent")
NO_LAYER = "-"  # the layer column of tests that change no single layer
EVERY_LAYER = "all"  # the layer column of eMPRT's rows: every weight layer re-initialised


# -- the changed models ------------------------------------------------------------------------


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, input side first (the order they are defined in)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def reinitialise_(module: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights and zero biases, as at initialisation, from ``generator``."""
    weight = torch.empty(module.weight.shape, dtype=module.weight.dtype)
    nn.init.xavier_uniform_(weight, generator=generator)
    with torch.no_grad():
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.zero_()


def randomised_models(
    model: nn.Module, mode: str, seed: int
) -> Iterator[tuple[str, int, nn.Module]]:
    """``(layer, step, model)`` for every step of parameter randomisation, top layer first.

    ``cascading``: step ``k`` has the top ``k`` weight layers re-initialised (one model, changed
    in place between steps). ``independent``: step ``k`` has only the ``k``-th layer from the top
    re-initialised. The re-initialisation is seeded: the same layer gets the same weights in
    both modes.
    """
    if mode not in RANDOMISATIONS:
        raise ConfigError(
            f"sanity_checks.parameter_randomisation: got {mode!r}; expected one of: "
            + ", ".join(RANDOMISATIONS)
        )
    layers = list(reversed(weight_layers(model)))
    current = copy.deepcopy(model)
    for step, name in enumerate(layers, start=1):
        if mode == "independent":
            current = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed * 1_000 + step)
        reinitialise_(current.get_submodule(name), generator)
        yield name, step, current


def fully_randomised_model(model: nn.Module, seed: int) -> nn.Module:
    """eMPRT's model: every weight layer re-initialised, with the weights of the last step of
    the cascade (:func:`randomised_models`) of the same ``seed``."""
    *_, (_, _, net) = randomised_models(model, "cascading", seed)
    return net


class ShiftedInput(nn.Module):
    """Kindermans et al.'s compensated network: ``ShiftedInput(f, m)(x + m) == f(x)``.

    The paper folds ``-W m`` into the first layer's bias, which is exact only without zero
    padding at the borders; subtracting ``m`` before ``f`` is the same function everywhere, and
    the methods here see a network only through its outputs and input gradients.
    """

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model = model
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x - self.shift)


# -- similarity of maps ------------------------------------------------------------------------


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def spearman(a: np.ndarray, b: np.ndarray, absolute: bool) -> np.ndarray:
    """Per-image Spearman rank correlation of ``(N, C, H, W)`` maps after summing channels
    (of absolute values if ``absolute``); NaN where a map is constant."""
    reduce = (lambda m: np.abs(m).sum(axis=1)) if absolute else (lambda m: m.sum(axis=1))
    ra = rankdata(reduce(a).reshape(len(a), -1), axis=1)
    rb = rankdata(reduce(b).reshape(len(b), -1), axis=1)
    return _rowwise_pearson(ra, rb)


def _unit_abs(maps: np.ndarray) -> np.ndarray:
    flat = np.abs(maps).sum(axis=1)
    peak = flat.reshape(len(flat), -1).max(axis=1)[:, None, None]
    return flat / np.where(peak > 0, peak, 1.0)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """Per-image structural similarity (Wang et al., 2004) of the absolute, channel-summed maps
    scaled to [0, 1]: a uniform ``window`` (at most the image size), data range 1."""
    x = torch.from_numpy(_unit_abs(a)).double()[:, None]
    y = torch.from_numpy(_unit_abs(b)).double()[:, None]
    size = min(window, x.shape[-1], x.shape[-2])

    def mean(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, size, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy = mean(x * x) - mx * mx, mean(y * y) - my * my
    cov = mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.mean(dim=(1, 2, 3)).numpy()


def similarities(reference: np.ndarray, maps: np.ndarray) -> dict[str, np.ndarray]:
    """Every similarity of ``maps`` to ``reference``, per image."""
    return {
        "spearman_abs": spearman(reference, maps, absolute=True),
        "spearman": spearman(reference, maps, absolute=False),
        "ssim": ssim(reference, maps),
    }


# -- Hedström et al. (2023): smooth and efficient parameter randomisation ---------------------

Explain = Callable[[nn.Module, torch.Tensor], np.ndarray]  # (model, images) -> maps


def smoothing_noise(images: np.ndarray, draw: int, noise_level: float, seed: int) -> np.ndarray:
    """sMPRT's noise for its noisy copy ``draw`` (1, 2, ...) of ``images`` ``(N, ...)``: Gaussian,
    std ``noise_level`` x (max - min) of each image, keyed by ``(seed, draw)`` only, so that
    every model (and every method) sees the same noisy copies."""
    axes = tuple(range(1, images.ndim))
    spread = images.max(axis=axes, keepdims=True) - images.min(axis=axes, keepdims=True)
    rng = np.random.default_rng([seed, 0x5E07, draw])
    return (rng.standard_normal(images.shape) * noise_level * spread).astype(images.dtype)


def smoothed_maps(
    explain: Explain,
    model: nn.Module,
    images: torch.Tensor,
    n_samples: int,
    noise_level: float,
    seed: int,
) -> np.ndarray:
    """sMPRT's map of each image: the mean of ``explain``'s maps over ``n_samples`` copies, the
    image itself and ``n_samples - 1`` noisy ones (:func:`smoothing_noise`). As in Quantus, the
    image itself is one of the copies: one sample is the plain map, whatever the noise."""
    total = explain(model, images).astype(np.float64)
    pixels = images.cpu().numpy()
    for draw in range(1, n_samples):
        noise = torch.from_numpy(smoothing_noise(pixels, draw, noise_level, seed))
        total += explain(model, images + noise.to(images.device))
    return (total / n_samples).astype(np.float32)


def smooth_randomisation(
    explain: Explain,
    model: nn.Module,
    images: torch.Tensor,
    *,
    mode: str,
    seed: int,
    n_samples: int,
    noise_level: float,
) -> Iterator[tuple[str, int, dict[str, np.ndarray]]]:
    """sMPRT: ``(layer, step, similarities)`` for every step of :func:`randomised_models`, the
    similarities (:func:`similarities`) of the smoothed maps (:func:`smoothed_maps`) of the
    randomised model to those of ``model``."""

    def smoothed(net: nn.Module) -> np.ndarray:
        return smoothed_maps(explain, net, images, n_samples, noise_level, seed)

    reference = smoothed(model)
    for layer, step, net in randomised_models(model, mode, seed):
        yield layer, step, similarities(reference, smoothed(net))


def discrete_entropy(maps: np.ndarray, bins: int) -> np.ndarray:
    """Per-image complexity of ``(N, C, H, W)`` maps, as Quantus' default for eMPRT
    (``quantus.functions.complexity_func.discrete_entropy``): the Shannon entropy (nats) of the
    histogram of the channel-summed |map| in ``bins`` equal-width bins over its own range. 0 for
    a constant map; at most log(min(bins, pixels))."""
    flat = np.abs(maps).sum(axis=1).reshape(len(maps), -1)
    return np.array([entropy(np.histogram(row, bins=bins)[0]) for row in flat])


def complexity_scores(
    trained: np.ndarray, randomised: np.ndarray, bins: int
) -> dict[str, np.ndarray]:
    """eMPRT per image: the complexity (:func:`discrete_entropy`) of the trained model's map, of
    the fully randomised model's map and their ratio (randomised / trained; NaN where the trained
    map is constant). Quantus' ``EfficientMPRT`` score is the relative rise, ratio - 1."""
    before, after = discrete_entropy(trained, bins), discrete_entropy(randomised, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(before > 0, after / before, np.nan)
    return dict(zip(COMPLEXITIES, (before, after, ratio), strict=True))


def table_rows(
    keys: dict, samples: np.ndarray, scores: dict[str, np.ndarray]
) -> list[dict[str, object]]:
    """One row per sample of the long table: ``keys`` (primary, method, test, layer, step), the
    sample id and each of ``scores`` (name -> per-sample values) at that sample."""
    return [
        {**keys, "sample": int(sample), **{name: float(v[i]) for name, v in scores.items()}}
        for i, sample in enumerate(samples)
    ]


# -- the random-label copy: trained until it memorises its permuted labels ------------------------

RANDOM_LABELS_SUFFIX = "-random_labels"


def train_random_label_primary(
    *,
    dataset_path: str | Path,
    architecture: str,
    seed: int,
    cfg: dict,
    label_seed: int,
    target_train_accuracy: float | None,
    weights_out: str | Path,
    metrics_out: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> dict:
    """The data randomisation test's copy of primary ``architecture``-seed``seed``: the same
    architecture, initialisation and training subset, with the subset's labels permuted (seeded
    by ``label_seed``), trained with ``cfg`` (``primary_training`` with the copy's own keys
    merged in) until the first epoch whose train accuracy on the permuted labels reaches
    ``target_train_accuracy``, or for ``cfg["epochs"]`` epochs (the cap). None: every epoch.

    Adebayo et al. (2018) compare with a network that has *memorised* random labels; the
    metrics say how many epochs ran, the train accuracy reached and whether that was the target.
    """

    def permute(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        permuted = permuted_labels(labels.cpu().numpy(), label_seed)
        return images, torch.from_numpy(permuted).to(labels.device)

    metrics = train_primary(
        dataset_path=dataset_path,
        architecture=architecture,
        seed=seed,
        cfg=cfg,
        weights_out=weights_out,
        metrics_out=metrics_out,
        device=device,
        threads=threads,
        stop_at_train_accuracy=target_train_accuracy,
        name=f"{primary_name(architecture, seed)}-random_labels",
        training_transform=permute,
    )
    metrics["labels"] = f"permuted (seed {label_seed})"
    metrics["provenance"]["config"]["label_permutation_seed"] = label_seed
    if target_train_accuracy is None:  # every epoch ran: record it the same way
        metrics.update(
            target_train_accuracy=None,
            max_epochs=int(cfg["epochs"]),
            epochs_run=len(metrics["history"]),
            target_reached=True,
        )
    write_json(metrics_out, metrics)
    return metrics


# -- the sanity-check job: one method on one primary ---------------------------------------------


def select_test_images(split: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    """A seeded random subset of the test split (sorted sample ids)."""
    ids = np.flatnonzero(split == "test")
    if len(ids) == 0:
        raise ConfigError("sanity_checks: the dataset has no test images")
    if n_images < len(ids):
        ids = np.sort(np.random.default_rng([seed, 0x5A71]).choice(ids, n_images, replace=False))
    return ids


def run_sanity_checks(
    *,
    dataset_path: str | Path,
    weights_path: str | Path,
    random_label_weights_path: str | Path | None,
    table_out: str | Path,
    maps_out: str | Path,
    method: str,
    method_params: dict,
    cfg: dict,
    saliency_cfg: dict,
    primary: str,
    device: torch.device,
    threads: int | None = None,
) -> pd.DataFrame:
    """Maps of ``n_images`` test images by ``primary`` and by each changed model; a long table
    of per-image similarities to the primary's maps (``table_out``, CSV; with sMPRT's rows, and
    eMPRT's complexities in their own columns) and, for the first ``figure_images`` images, every
    plain map set (``maps_out``, Zarr, dims stage/sample/channel/y/x).
    """
    seed = int(cfg["seed"])
    stage = Stage(
        "sanity_checks",
        {"method": method, "method_params": method_params, "primary": primary, **cfg},
        device,
        seed=seed,
        threads=threads,
    )
    ds, info = open_dataset(dataset_path)
    ids = select_test_images(ds["split"].values, int(cfg["n_images"]), seed)
    images = torch.from_numpy(ds["image"].values[ids]).to(device)
    labels = torch.from_numpy(ds["label"].values[ids].astype(np.int64)).to(device)
    model = load_model(weights_path, device)
    # the job's rows bound the measuring of pass_size: auto (a tenth of the work, not seconds)
    map_sets = len(weight_layers(model)) + 4  # trained, each layer step, labels, shift, eMPRT
    rows = len(ids) * map_sets * build_method(method, model, method_params, 1).gradient_evaluations
    pass_size = resolve_pass_size(saliency_cfg["pass_size"], model, images.shape[1:], max_rows=rows)

    def maps_of(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        engine = build_method(method, net.eval(), method_params, pass_size)
        return engine.attribute(inputs, targets, ids.tolist()).detach().cpu().numpy()

    predicted = predict(model, images, batch_size=pass_size)
    targets = labels if saliency_cfg["target"] == "true" else predicted
    reference = maps_of(model, images, targets)
    stages: list[tuple[str, str, int, np.ndarray]] = [("trained", NO_LAYER, 0, reference)]

    mode = cfg["parameter_randomisation"]
    for layer, step, net in randomised_models(model, mode, seed):
        stages.append((f"randomised_{mode}", layer, step, maps_of(net, images, targets)))
        log.info("%s %s: %s randomisation, step %d (%s)", primary, method, mode, step, layer)
    if random_label_weights_path is not None:
        permuted = load_model(random_label_weights_path, device)
        stages.append(("random_labels", NO_LAYER, 0, maps_of(permuted, images, targets)))
        log.info("%s %s: random-label primary", primary, method)
    shift = cfg["input_shift"]
    if shift is not None:
        shifted = ShiftedInput(model, float(shift))
        stages.append(
            ("input_shift", NO_LAYER, 0, maps_of(shifted, images + float(shift), targets))
        )
        log.info("%s %s: input shifted by %g", primary, method, shift)

    def keys(test: str, layer: str, step: int) -> dict:
        return {"primary": primary, "method": method, "test": test, "layer": layer, "step": step}

    def explain(net: nn.Module, inputs: torch.Tensor) -> np.ndarray:
        return maps_of(net, inputs, targets)

    rows = []
    for test, layer, step, maps in stages[1:]:
        rows += table_rows(keys(test, layer, step), ids, similarities(reference, maps))
    smooth = cfg["smooth_randomisation"]
    if smooth["enabled"]:
        ladder = smooth_randomisation(
            explain,
            model,
            images,
            mode=mode,
            seed=seed,
            n_samples=int(smooth["n_samples"]),
            noise_level=float(smooth["noise_level"]),
        )
        for layer, step, scores in ladder:
            rows += table_rows(keys(f"{SMOOTH_PREFIX}randomised_{mode}", layer, step), ids, scores)
            log.info(
                "%s %s: smooth %s randomisation, step %d (%s)", primary, method, mode, step, layer
            )
    efficient = cfg["efficient_randomisation"]
    if efficient["enabled"]:
        randomised = explain(fully_randomised_model(model, seed), images)
        scores = complexity_scores(reference, randomised, int(efficient["bins"]))
        rows += table_rows(keys(EFFICIENT, EVERY_LAYER, len(weight_layers(model))), ids, scores)
        log.info("%s %s: efficient randomisation (every layer)", primary, method)
    table = pd.DataFrame(rows)
    record = stage.finish(n_images=len(ids), stages=len(stages))

    # images kept for figures: spread over the selection (ImageFolder ids are ordered by class)
    keep = np.linspace(0, len(ids) - 1, min(int(cfg["figure_images"]), len(ids)))
    keep = np.unique(keep.round().astype(int))
    names = ["trained"] + [
        f"{test}:{layer}" if layer != NO_LAYER else test for test, layer, _, _ in stages[1:]
    ]
    store = xr.Dataset(
        {
            "maps": (
                ("stage", "sample", "channel", "y", "x"),
                np.stack([maps[keep] for *_, maps in stages]).astype(np.float32),
            ),
            "image": (("sample", "channel", "y", "x"), images[torch.as_tensor(keep)].cpu().numpy()),
        },
        coords={
            "stage": names,
            "test": ("stage", [s[0] for s in stages]),
            "layer": ("stage", [s[1] for s in stages]),
            "sample": ids[keep],
            "channel": np.arange(info.channels),
            "y": np.arange(info.image_size),
            "x": np.arange(info.image_size),
        },
        attrs={
            "primary": primary,
            "method": method,
            # the pass size ``auto`` measured goes with the maps, not into the table's sidecar
            # (it may differ between runs of the same config; the results do not)
            "provenance": as_attr({**record, "pass_size": pass_size}),
        },
    )
    write_dataset(store, maps_out)  # the maps first: the table is the rule's marker of success
    write_table(table, table_out, record)
    return table
