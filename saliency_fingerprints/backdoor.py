"""Backdoor triggers in input-agnostic class maps (Akhtar & Jalwana 2023, "Backdoor detection").

The paper trains classifiers with a planted trigger ("Trojan") and finds that the input-agnostic
map (:mod:`~saliency_fingerprints.agnostic`) of the attack's target class shows the trigger. This
module repeats that on our primaries, with a measure instead of a look:

* **The trigger** (:class:`Trigger`): a ``size`` x ``size`` square patch in one corner of the
  image (``position``), its pattern a ``checkerboard`` of the dataset's lowest and highest pixel
  values (the highest at the patch's top-left corner) or ``solid`` (the highest value), the same
  in every channel. :func:`stamp` pastes it over images: the patch's pixels are replaced, every
  other pixel is left as it is.
* **Poisoning** (BadNets, Gu et al. 2017; all-to-one): :func:`poison_positions` picks
  ``round(poison_fraction x n)`` of a primary's ``n`` training images, at random (seeded) among
  those whose label is not the target class, so that every poisoned image is relabelled;
  :func:`poison` stamps them and sets their label to the target class.
* **The backdoored primary** (:func:`train_backdoor_primary`): the ordinary primary's copy - the
  same architecture, initial weights, training subset, batch order and training settings
  (:func:`~saliency_fingerprints.primary.train_primary`) - trained on the poisoned subset, so it
  differs from the clean primary only by the poisoned images. Its metrics hold the clean test
  accuracy and the **attack success rate**: the fraction of the test images of the other classes
  that it classifies as the target class once stamped (:func:`attack_success_rate`); the same
  for the clean primary beside them, the rate a model without a backdoor reaches.
* **Maps** (:func:`backdoor_class_maps`): ``n_maps`` input-agnostic maps per class of a primary,
  clean or backdoored, with the ``methods.input_agnostic`` settings; the map ``(class, draw)``
  uses the generator ``seed_generator(seed, class, draw)`` (as
  :func:`~saliency_fingerprints.agnostic.class_maps`), so the clean and the backdoored primary
  get the same minibatches for the same map. Minibatches come from the dataset's clean train
  split: whoever inspects a model does not know its trigger.
* **Localisation** (:func:`localisation_scores`): per map, the share of its absolute mass (summed
  over channels) inside the trigger patch divided by the patch's share of the pixels. 1: no more
  mass in the patch than anywhere else; ``H x W / size^2``: all of it there.
* **The table** (:func:`backdoor_table`): per primary, kind (clean / backdoored) and class, the
  score's mean and sd across draws; per architecture, kind and class, the mean across seeds of
  those means and their sd; on the backdoored target class's rows, its rank among the backdoored
  primary's classes and one-sided Mann-Whitney U tests of its draws against the clean primary's
  draws of the class and against the backdoored primary's draws of the other classes. Those tests
  are about the maps' draws for one pair of trained models (how reliably the method shows what
  that model learned), not about models in general: the seeds are the replication over models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.stats import mannwhitneyu
from torch import nn

from .agnostic import batch_diagnostics, input_agnostic_maps
from .configuration import primary_name
from .datasets import open_dataset
from .errors import ConfigError, DataError
from .primary import train_primary
from .provenance import Provenance, as_attr
from .runtime import seed_generator
from .saliency.job import build_engine, frozen_primary, train_images
from .stage import Stage
from .store import atomic_output, open_store, write_dataset, write_json
from .tables import write_table
from .training import load_model, numeric_precision, predict

log = logging.getLogger(__name__)

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATTERNS = ("checkerboard", "solid")
KINDS = ("clean", "backdoored")
KEY = "backdoor"


# -- the trigger -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A square patch of ``size`` pixels in the corner ``position``, its pattern drawn with the
    pixel values ``low`` and ``high`` (:attr:`pattern_array`)."""

    size: int
    position: str
    pattern: str
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"{KEY}.trigger.size: got {self.size!r}; expected an integer >= 1")
        if self.position not in POSITIONS:
            raise ConfigError(
                f"{KEY}.trigger.position: got {self.position!r}; expected one of: "
                + ", ".join(POSITIONS)
            )
        if self.pattern not in PATTERNS:
            raise ConfigError(
                f"{KEY}.trigger.pattern: got {self.pattern!r}; expected one of: "
                + ", ".join(PATTERNS)
            )
        if not self.low < self.high:
            raise DataError(
                f"{KEY}.trigger: the images' lowest value {self.low} is not below their highest "
                f"{self.high}: a constant dataset has no trigger pattern"
            )

    @classmethod
    def from_config(cls, cfg: Mapping, low: float = 0.0, high: float = 1.0) -> Trigger:
        """The ``backdoor.trigger`` block (size, position, pattern) with the pixel range."""
        return cls(int(cfg["size"]), str(cfg["position"]), str(cfg["pattern"]), low, high)

    def check(self, height: int, width: int) -> None:
        """The patch must leave some of an ``height`` x ``width`` image outside it."""
        if self.size >= min(height, width):
            raise ConfigError(
                f"{KEY}.trigger.size: got {self.size}; expected less than the image side "
                f"({height}x{width} images)"
            )

    def box(self, height: int, width: int) -> tuple[slice, slice]:
        """The patch's rows and columns in an ``height`` x ``width`` image."""
        self.check(height, width)
        top = self.position.startswith("top")
        left = self.position.endswith("left")
        rows = slice(0, self.size) if top else slice(height - self.size, height)
        cols = slice(0, self.size) if left else slice(width - self.size, width)
        return rows, cols

    def mask(self, height: int, width: int) -> np.ndarray:
        """``(height, width)`` booleans, True inside the patch."""
        mask = np.zeros((height, width), dtype=bool)
        mask[self.box(height, width)] = True
        return mask

    @property
    def pattern_array(self) -> np.ndarray:
        """``(size, size)`` float32: ``high`` where ``(row + column)`` is even and ``low``
        elsewhere (checkerboard), or ``high`` everywhere (solid)."""
        if self.pattern == "solid":
            return np.full((self.size, self.size), self.high, dtype=np.float32)
        rows, cols = np.indices((self.size, self.size))
        return np.where((rows + cols) % 2 == 0, self.high, self.low).astype(np.float32)

    def area_fraction(self, height: int, width: int) -> float:
        """The patch's share of the image's pixels."""
        self.check(height, width)
        return self.size * self.size / (height * width)

    def describe(self) -> str:
        return f"{self.size}x{self.size} {self.pattern} at the {self.position.replace('_', ' ')}"


def pixel_range(ds: xr.Dataset) -> tuple[float, float]:
    """The lowest and highest pixel value of a dataset store's train split (the checkerboard's
    two values)."""
    ids = np.flatnonzero(ds["split"].values == "train")
    if len(ids) == 0:
        raise DataError(f"{KEY}: the dataset has no train images to poison")
    images = ds["image"].isel(sample=ids)
    return float(images.min().values), float(images.max().values)


def stamp(images: torch.Tensor | np.ndarray, trigger: Trigger) -> torch.Tensor | np.ndarray:
    """A copy of ``images`` (``(N, C, H, W)`` or ``(C, H, W)``) with the trigger pasted over the
    patch of every image and channel; every other pixel unchanged."""
    if isinstance(images, np.ndarray):
        return stamp(torch.from_numpy(np.array(images)), trigger).numpy()
    if images.dim() not in (3, 4):
        raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got {tuple(images.shape)}")
    rows, cols = trigger.box(images.shape[-2], images.shape[-1])
    out = images.clone()
    out[..., rows, cols] = torch.from_numpy(trigger.pattern_array).to(out.device, out.dtype)
    return out


# -- poisoning -------------------------------------------------------------------------------------


def poison_count(n: int, fraction: float) -> int:
    """How many of ``n`` training images are poisoned: ``round(fraction x n)``."""
    return int(round(fraction * n))


def poison_positions(labels: np.ndarray, fraction: float, target: int, seed: int) -> np.ndarray:
    """Sorted positions in ``labels`` of the images to poison: ``round(fraction x len(labels))``
    of those whose label is not ``target``, drawn without replacement from a generator seeded by
    ``seed`` (the same labels and seed always give the same positions)."""
    labels = np.asarray(labels)
    k = poison_count(len(labels), fraction)
    candidates = np.flatnonzero(labels != target)
    if k < 1:
        raise ConfigError(
            f"{KEY}.poison_fraction: {fraction} of {len(labels)} training images rounds to no "
            "image; expected a fraction that poisons at least one"
        )
    if k > len(candidates):
        raise ConfigError(
            f"{KEY}.poison_fraction: {fraction} of {len(labels)} training images is {k} images, "
            f"but only {len(candidates)} are of a class other than the target {target}"
        )
    rng = np.random.default_rng([seed, 0xBAD])
    return np.sort(rng.choice(candidates, size=k, replace=False))


def poison(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    fraction: float,
    target: int,
    trigger: Trigger,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """BadNets poisoning: copies of ``images`` and ``labels`` with the images at
    :func:`poison_positions` stamped with ``trigger`` and relabelled ``target``; and those
    positions."""
    positions = poison_positions(labels.cpu().numpy(), fraction, target, seed)
    index = torch.from_numpy(positions).to(images.device)
    images, labels = images.clone(), labels.clone()
    images[index] = stamp(images[index], trigger)
    labels[index.to(labels.device)] = int(target)
    return images, labels, positions


def attack_success_rate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    trigger: Trigger,
    batch_size: int = 512,
) -> tuple[float, int]:
    """The fraction of ``images`` whose label is not ``target`` that ``model`` classifies as
    ``target`` once stamped with ``trigger``; and how many such images there are."""
    others = labels != target
    n = int(others.sum())
    if n == 0:
        raise DataError(f"{KEY}: no test image of a class other than the target {target}")
    predicted = predict(model, stamp(images[others], trigger), batch_size)
    return float((predicted == target).float().mean()), n


def check_target(target: int, classes: Sequence[str]) -> None:
    if not 0 <= int(target) < len(classes):
        raise ConfigError(
            f"{KEY}.target_class: got {target}; the dataset has {len(classes)} classes "
            f"(0..{len(classes) - 1})"
        )


# -- the backdoored primary -----------------------------------------------------------------------


def train_backdoor_primary(
    *,
    dataset_path: str | Path,
    clean_weights: str | Path,
    architecture: str,
    seed: int,
    cfg: dict,
    backdoor: Mapping,
    weights_out: str | Path,
    metrics_out: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> dict:
    """The backdoored copy of primary ``architecture``-seed``seed`` (``cfg``: the primaries'
    ``primary_training``): trained like it, on its training subset with ``backdoor``'s
    (``target_class``, ``poison_fraction``, ``trigger``, ``seed``) poisoning. Its metrics add
    the clean test accuracy, the attack success rate, and the same two numbers of the clean
    primary (``clean_weights``)."""
    ds, info = open_dataset(dataset_path)
    target = int(backdoor["target_class"])
    check_target(target, info.classes)
    trigger = Trigger.from_config(backdoor["trigger"], *pixel_range(ds))
    trigger.check(info.image_size, info.image_size)
    fraction, poison_seed = float(backdoor["poison_fraction"]), int(backdoor["seed"])
    poisoned: dict[str, np.ndarray] = {}

    def poison_subset(images: torch.Tensor, labels: torch.Tensor):
        images, labels, poisoned["positions"] = poison(
            images, labels, fraction=fraction, target=target, trigger=trigger, seed=poison_seed
        )
        return images, labels

    name = f"{primary_name(architecture, seed)}-backdoor"
    metrics = train_primary(
        dataset_path=dataset_path,
        architecture=architecture,
        seed=seed,
        cfg=cfg,
        weights_out=weights_out,
        metrics_out=metrics_out,
        device=device,
        threads=threads,
        name=name,
        training_transform=poison_subset,
    )
    test = np.flatnonzero(ds["split"].values == "test")
    images = torch.from_numpy(ds["image"].values[test]).to(device)
    labels = torch.from_numpy(ds["label"].values[test].astype(np.int64)).to(device)
    models = {
        "backdoored": load_model(weights_out, device),
        "clean": load_model(clean_weights, device),
    }
    results = {}
    for kind, model in models.items():
        rate, n_attack = attack_success_rate(model, images, labels, target, trigger)
        accuracy = float((predict(model, images) == labels).float().mean())
        results[kind] = {"test_accuracy": accuracy, "attack_success_rate": rate}
    settings = {
        "target_class": target,
        "target_class_name": info.classes[target] if info.classes else str(target),
        "poison_fraction": fraction,
        "seed": poison_seed,
        "trigger": {
            "size": trigger.size,
            "position": trigger.position,
            "pattern": trigger.pattern,
            "low": trigger.low,
            "high": trigger.high,
        },
    }
    metrics.update(
        labels=f"poisoned: {len(poisoned['positions'])} of {metrics['n_train']} training images "
        f"stamped and relabelled {target} (seed {poison_seed})",
        backdoor={**settings, "n_poisoned": int(len(poisoned["positions"]))},
        clean_test_accuracy=results["backdoored"]["test_accuracy"],
        attack_success_rate=results["backdoored"]["attack_success_rate"],
        n_attack_images=n_attack,
        clean_primary={"primary": primary_name(architecture, seed), **results["clean"]},
    )
    metrics["provenance"]["config"]["backdoor"] = {
        k: v for k, v in backdoor.items() if k not in ("primaries", "n_maps", "enabled")
    }
    write_json(metrics_out, metrics)
    log.info(
        "%s: clean test accuracy %.4f (clean primary %.4f), attack success rate %.4f on %d "
        "stamped test images (clean primary %.4f)",
        name,
        results["backdoored"]["test_accuracy"],
        results["clean"]["test_accuracy"],
        results["backdoored"]["attack_success_rate"],
        n_attack,
        results["clean"]["attack_success_rate"],
    )
    return metrics


# -- input-agnostic maps of every class -----------------------------------------------------------


def backdoor_class_maps(
    *,
    dataset_path: str | Path,
    weights_path: str | Path,
    maps_out: str | Path,
    method_params: dict,
    saliency_cfg: Mapping,
    n_maps: int,
    architecture: str,
    seed: int,
    kind: str,
    device: torch.device,
    threads: int | None = None,
) -> xr.Dataset:
    """``n_maps`` input-agnostic maps of every class of primary ``architecture``-seed``seed``
    (``kind``: its clean or its backdoored version, ``weights_path``), with the
    ``methods.input_agnostic`` settings ``method_params`` and the ``saliency`` block's
    ``pass_size`` and ``tf32``; written to ``maps_out`` as a Zarr store:
    ``maps(class, draw, channel, y, x)`` and the per-map diagnostics ``ia_success``,
    ``ia_probability``, ``ia_norm`` (:func:`~saliency_fingerprints.agnostic.batch_diagnostics`)
    on ``(class, draw)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    primary = primary_name(architecture, seed)
    draw_seed = int(method_params["seed"])
    stage = Stage(
        "backdoor_maps",
        {"primary": primary, "kind": kind, "n_maps": n_maps, "method_params": method_params},
        device,
        seed=draw_seed,
        threads=threads,
    )
    ds, info = open_dataset(dataset_path)
    model = frozen_primary(weights_path, device)
    classes = list(range(len(info.classes)))
    labels = [c for c in classes for _ in range(n_maps)]
    keys = [(c, d) for c in classes for d in range(n_maps)]
    shape = (info.channels, info.image_size, info.image_size)
    tf32 = bool(saliency_cfg["tf32"])
    engine = build_engine(
        model, "input_agnostic", method_params, saliency_cfg["pass_size"], shape, len(keys), tf32
    )
    engine.set_sample_set(train_images(ds, device))
    samples = engine.sample_set
    generators = [seed_generator(draw_seed, c, d, device=device) for c, d in keys]
    parts = []
    step = engine.maps_per_pass
    with numeric_precision(tf32=tf32):
        for start in range(0, len(keys), step):
            parts.append(
                input_agnostic_maps(
                    model,
                    samples,
                    labels[start : start + step],
                    engine.settings,
                    generators=generators[start : start + step],
                ).cpu()
            )
        maps = torch.cat(parts)
        values = batch_diagnostics(model, samples, labels, maps, engine.settings)
    log.info(
        "%s (%s): %d maps (%d classes x %d draws), mean success %.3f",
        primary,
        kind,
        len(keys),
        len(classes),
        n_maps,
        float(values["success"].mean()),
    )
    grid = (len(classes), n_maps)
    diagnostics = {
        "ia_success": "fraction of the sample set (train split) classified as the class after "
        "subtracting the map",
        "ia_probability": "mean softmax probability of the class over the sample set after "
        "subtracting the map",
        "ia_norm": "L2 norm of the map",
    }
    short = {"ia_success": "success", "ia_probability": "probability", "ia_norm": "norm"}
    store = xr.Dataset(
        {
            "maps": (
                ("class", "draw", "channel", "y", "x"),
                maps.numpy().astype(np.float32).reshape(*grid, *shape),
            ),
            **{
                name: (
                    ("class", "draw"),
                    values[short[name]].numpy().astype(np.float32).reshape(grid),
                    {"description": text},
                )
                for name, text in diagnostics.items()
            },
        },
        coords={
            "class": np.array(classes, dtype=np.int64),
            "class_name": ("class", np.array([str(c) for c in info.classes], dtype=str)),
            "draw": np.arange(n_maps, dtype=np.int64),
            "channel": np.arange(info.channels),
            "y": np.arange(info.image_size),
            "x": np.arange(info.image_size),
        },
        attrs={
            "primary": primary,
            "architecture": architecture,
            "seed": int(seed),
            "kind": kind,
            "method": "input_agnostic",
            "method_params": json.dumps(method_params, sort_keys=True),
            "provenance": as_attr(stage.finish(pass_size_used=engine.pass_size)),
        },
    )
    write_dataset(store, maps_out)
    return store


# -- localisation and the table -------------------------------------------------------------------


def localisation_scores(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per map of ``maps`` (``(..., C, H, W)``): the share of its absolute mass (summed over
    channels) inside ``mask`` (``(H, W)`` booleans) over the mask's share of the pixels. 1 for a
    map spread evenly, ``1 / mask.mean()`` for one entirely inside the mask; NaN for an all-zero
    map."""
    mask = np.asarray(mask, dtype=bool)
    mass = np.abs(np.asarray(maps, dtype=np.float64)).sum(axis=-3)
    if mass.shape[-2:] != mask.shape:
        raise ValueError(f"maps of {mass.shape[-2:]} pixels, a mask of {mask.shape}")
    if not mask.any() or mask.all():
        raise ValueError("the mask must hold some pixels and leave some out")
    inside = mass[..., mask].sum(axis=-1)
    total = mass.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return share / mask.mean()


def map_scores(store: xr.Dataset, trigger: Trigger) -> pd.DataFrame:
    """One row per map of a :func:`backdoor_class_maps` store: class, draw, localisation score
    and ``ia_success``."""
    maps = store["maps"].values
    scores = localisation_scores(maps, trigger.mask(*maps.shape[-2:]))
    classes = store["class"].values
    draws = store["draw"].values
    return pd.DataFrame(
        {
            "class": np.repeat(classes, len(draws)),
            "class_name": np.repeat([str(n) for n in store["class_name"].values], len(draws)),
            "draw": np.tile(draws, len(classes)),
            "localisation": scores.reshape(-1),
            "ia_success": store["ia_success"].values.reshape(-1).astype(np.float64),
        }
    )


def _one_sided_p(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value of ``a`` > ``b`` (NaN with fewer than 2 of either)."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


SEED_COLUMNS = [
    "level",
    "architecture",
    "seed",
    "primary",
    "kind",
    "class",
    "class_name",
    "is_target",
    "n_seeds",
    "n_maps",
    "localisation_mean",
    "localisation_sd",
    "localisation_min",
    "localisation_max",
    "ia_success_mean",
    "test_accuracy",
    "attack_success_rate",
    "target_rank",
    "p_vs_clean",
    "p_vs_other_classes",
]


def summarise_scores(
    scores: pd.DataFrame, target: int, metrics: Mapping[str, dict]
) -> pd.DataFrame:
    """The table of :func:`backdoor_table` from per-map ``scores`` (columns architecture, seed,
    primary, kind, class, class_name, draw, localisation, ia_success) and each primary's backdoor
    ``metrics`` (by clean primary name).

    Rows of level ``seed``: per (primary, kind, class), the score's mean, sd (across draws), min
    and max; the success; the kind's clean test accuracy and attack success rate. On the
    backdoored target class's row also ``target_rank`` (1: the highest mean score among the
    backdoored primary's classes) and the one-sided Mann-Whitney p-values of its draws against
    the clean primary's draws of the class (``p_vs_clean``) and against the backdoored primary's
    draws of every other class (``p_vs_other_classes``). Rows of level ``across_seeds``: per
    (architecture, kind, class), the mean over seeds of the seed rows' means, their sd across
    seeds (NaN with one seed), and the mean accuracy, attack success rate and rank."""
    keys = ["architecture", "seed", "primary", "kind", "class", "class_name"]
    grouped = scores.groupby(keys, sort=True)
    rows = grouped["localisation"].agg(
        localisation_mean="mean",
        localisation_sd=lambda s: s.std(ddof=1) if len(s) > 1 else np.nan,
        localisation_min="min",
        localisation_max="max",
        n_maps="size",
    )
    rows["ia_success_mean"] = grouped["ia_success"].mean()
    rows = rows.reset_index()
    rows["level"] = "seed"
    rows["n_seeds"] = 1
    rows["is_target"] = rows["class"] == target
    rows["test_accuracy"] = [
        _metric(metrics, p, k, "test_accuracy")
        for p, k in zip(rows.primary, rows.kind, strict=True)
    ]
    rows["attack_success_rate"] = [
        _metric(metrics, p, k, "attack_success_rate")
        for p, k in zip(rows.primary, rows.kind, strict=True)
    ]
    rows["target_rank"] = np.nan
    rows["p_vs_clean"] = np.nan
    rows["p_vs_other_classes"] = np.nan
    for primary in rows["primary"].unique():
        mine = scores[scores.primary == primary]
        backdoored = mine[mine.kind == "backdoored"]
        draws = backdoored[backdoored["class"] == target]["localisation"].to_numpy()
        if len(draws) == 0:
            continue
        clean = mine[(mine.kind == "clean") & (mine["class"] == target)]["localisation"]
        other = backdoored[backdoored["class"] != target]["localisation"].to_numpy()
        means = backdoored.groupby("class")["localisation"].mean()
        where = (rows.primary == primary) & (rows.kind == "backdoored") & rows.is_target
        rows.loc[where, "target_rank"] = int((means > means.loc[target]).sum()) + 1
        rows.loc[where, "p_vs_clean"] = _one_sided_p(draws, clean.to_numpy())
        rows.loc[where, "p_vs_other_classes"] = _one_sided_p(draws, other)
    across = (
        rows.groupby(["architecture", "kind", "class", "class_name", "is_target"], sort=True)
        .agg(
            n_seeds=("seed", "size"),
            n_maps=("n_maps", "sum"),
            localisation_mean=("localisation_mean", "mean"),
            localisation_sd=(
                "localisation_mean",
                lambda s: s.std(ddof=1) if len(s) > 1 else np.nan,
            ),
            localisation_min=("localisation_min", "min"),
            localisation_max=("localisation_max", "max"),
            ia_success_mean=("ia_success_mean", "mean"),
            test_accuracy=("test_accuracy", "mean"),
            attack_success_rate=("attack_success_rate", "mean"),
            target_rank=("target_rank", "mean"),
        )
        .reset_index()
    )
    across["level"] = "across_seeds"
    across["primary"] = [
        f"{a} ({n} seeds)" for a, n in zip(across.architecture, across.n_seeds, strict=True)
    ]
    table = pd.concat([rows, across], ignore_index=True)
    kind_order = {k: i for i, k in enumerate(KINDS)}
    table = table.assign(_level=table.level != "seed", _kind=table.kind.map(kind_order))
    table = table.sort_values(["_level", "architecture", "seed", "_kind", "class"], kind="stable")
    return (
        table.drop(columns=["_level", "_kind"]).reindex(columns=SEED_COLUMNS).reset_index(drop=True)
    )


def _metric(metrics: Mapping[str, dict], primary: str, kind: str, key: str) -> float:
    record = metrics[primary]
    if kind == "backdoored":
        return float(record["clean_test_accuracy" if key == "test_accuracy" else key])
    return float(record["clean_primary"][key])


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")


def _p(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.2g}"


def markdown_table(table: pd.DataFrame, scores: pd.DataFrame, info: Mapping) -> str:
    """The table in words: the trigger, the headline (per primary and across seeds: the target
    class of the backdoored primary, the same class of the clean primary, the backdoored
    primary's other classes; accuracies and attack success rates beside) and every class."""
    target = int(info["target_class"])
    ratio_max = 1 / float(info["area_fraction"])
    seeds = table[table.level == "seed"]
    parts = [
        "# Backdoor triggers in input-agnostic maps\n\n",
        f"Trigger: {info['trigger']} ({100 * info['area_fraction']:.2f}% of the pixels), pasted "
        f"over {info['poison_fraction']:.0%} of each backdoored primary's training images "
        f"(of classes other than the target), relabelled to the target class {target} "
        f"({info['target_class_name']}). Localisation score of a map: the share of its "
        "absolute mass inside the trigger patch over the patch's share of the pixels (1: no "
        f"concentration; {ratio_max:.1f}: all of it in the patch). {info['n_maps']} "
        "input-agnostic maps per class and primary (mean ± sd across them). Attack success: the "
        "fraction of the stamped test images of the other classes classified as the target "
        "class (for the clean primary: what a model without the backdoor does).\n\n",
        "## Headline\n\n",
    ]
    lines = []
    for primary, block in seeds.groupby("primary", sort=False):
        lines.append(_headline(primary, block, scores[scores.primary == primary], target))
    across = table[table.level == "across_seeds"]
    for architecture, block in across.groupby("architecture", sort=False):
        if int(block.n_seeds.max()) > 1:
            lines.append(_headline_across(architecture, block, seeds, target))
    parts.append(pd.DataFrame(lines).to_markdown(index=False) + "\n\n")
    parts.append(
        "p: one-sided Mann-Whitney U of the backdoored primary's target-class draws against the "
        "clean primary's draws of that class, and against the backdoored primary's draws of the "
        "other classes; rank: of the target class's mean score among the backdoored primary's "
        "classes (1 = highest). The p-values are about the maps' draws of one trained pair; "
        "the seeds are the replication across models (across seeds: mean ± sd of the seeds' "
        "means).\n\n"
    )
    parts.append("## Every class (mean ± sd across draws)\n\n")
    pivot = seeds.assign(
        column=[f"{p} {k}" for p, k in zip(seeds.primary, seeds.kind, strict=True)],
        cell=[
            _mean_sd(m, s)
            for m, s in zip(seeds.localisation_mean, seeds.localisation_sd, strict=True)
        ],
        row=[
            f"{c} ({n})" + (" target" if t else "")
            for c, n, t in zip(seeds["class"], seeds.class_name, seeds.is_target, strict=True)
        ],
    ).pivot(index="row", columns="column", values="cell")
    order = seeds.drop_duplicates("class").sort_values("class")
    pivot = pivot.reindex(
        [
            f"{c} ({n})" + (" target" if t else "")
            for c, n, t in zip(order["class"], order.class_name, order.is_target, strict=True)
        ]
    )
    parts.append(pivot.to_markdown() + "\n")
    return "".join(parts)


def _headline(primary: str, block: pd.DataFrame, scores: pd.DataFrame, target: int) -> dict:
    backdoored = block[block.kind == "backdoored"]
    clean = block[block.kind == "clean"]
    hit = backdoored[backdoored.is_target].iloc[0]
    same = clean[clean.is_target].iloc[0]
    others = backdoored[~backdoored.is_target]
    other_draws = scores[(scores.kind == "backdoored") & (scores["class"] != target)][
        "localisation"
    ]
    strongest = others.loc[others.localisation_mean.idxmax()]
    return {
        "primary": primary,
        "test accuracy: clean / backdoored": f"{same.test_accuracy:.3f} / {hit.test_accuracy:.3f}",
        "attack success: clean / backdoored": (
            f"{same.attack_success_rate:.3f} / {hit.attack_success_rate:.3f}"
        ),
        "target class, backdoored": _mean_sd(hit.localisation_mean, hit.localisation_sd),
        "target class, clean": _mean_sd(same.localisation_mean, same.localisation_sd),
        "other classes, backdoored": _mean_sd(other_draws.mean(), other_draws.std(ddof=1))
        + f" (highest: {strongest['class']}, {strongest.localisation_mean:.2f})",
        "rank of target": f"{int(hit.target_rank)} of {len(backdoored)}",
        "p vs clean": _p(hit.p_vs_clean),
        "p vs other classes": _p(hit.p_vs_other_classes),
    }


def _headline_across(
    architecture: str, block: pd.DataFrame, seeds: pd.DataFrame, target: int
) -> dict:
    mine = seeds[seeds.architecture == architecture]
    n = int(block.n_seeds.max())

    def across(kind: str, is_target: bool, key: str) -> str:
        rows = mine[(mine.kind == kind) & (mine.is_target == is_target)]
        per_seed = rows.groupby("seed")[key].mean()
        return _mean_sd(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else np.nan)

    ranks = mine[(mine.kind == "backdoored") & mine.is_target].target_rank
    return {
        "primary": f"{architecture}, {n} seeds (mean ± sd of seeds)",
        "test accuracy: clean / backdoored": (
            f"{across('clean', True, 'test_accuracy')} / "
            f"{across('backdoored', True, 'test_accuracy')}"
        ),
        "attack success: clean / backdoored": (
            f"{across('clean', True, 'attack_success_rate')} / "
            f"{across('backdoored', True, 'attack_success_rate')}"
        ),
        "target class, backdoored": across("backdoored", True, "localisation_mean"),
        "target class, clean": across("clean", True, "localisation_mean"),
        "other classes, backdoored": across("backdoored", False, "localisation_mean"),
        "rank of target": "ranks " + ", ".join(str(int(r)) for r in ranks),
        "p vs clean": "",
        "p vs other classes": "",
    }


def backdoor_table(
    *,
    stores: Sequence[str | Path],
    metrics: Sequence[str | Path],
    trigger_cfg: Mapping,
    target_class: int,
    poison_fraction: float,
    out_csv: str | Path,
    out_md: str | Path,
) -> pd.DataFrame:
    """tables/backdoor.csv and .md from the map stores of every (primary, kind) and every
    backdoored primary's ``metrics.json`` (:func:`summarise_scores`, :func:`markdown_table`)."""
    records = [json.loads(Path(p).read_text()) for p in metrics]
    by_primary = {r["clean_primary"]["primary"]: r for r in records}
    frames = []
    trigger = None
    for path in stores:
        store = open_store(path)
        primary, kind = store.attrs["primary"], store.attrs["kind"]
        if primary not in by_primary:
            raise DataError(f"{path}: no backdoor metrics of primary {primary}")
        settings = by_primary[primary]["backdoor"]
        trigger = Trigger.from_config(
            settings["trigger"], settings["trigger"]["low"], settings["trigger"]["high"]
        )
        if Trigger.from_config(trigger_cfg, trigger.low, trigger.high) != trigger:
            raise DataError(f"{path}: its backdoored primary was trained with another trigger")
        frames.append(
            map_scores(store, trigger).assign(
                architecture=store.attrs["architecture"],
                seed=int(store.attrs["seed"]),
                primary=primary,
                kind=kind,
            )
        )
    if trigger is None:
        raise DataError(f"{KEY}: no map stores to summarise")
    scores = pd.concat(frames, ignore_index=True)
    table = summarise_scores(scores, int(target_class), by_primary)
    side = int(open_store(stores[0])["maps"].shape[-1])
    first = records[0]["backdoor"]
    info = {
        "target_class": int(target_class),
        "target_class_name": first["target_class_name"],
        "trigger": trigger.describe(),
        "area_fraction": trigger.area_fraction(side, side),
        "poison_fraction": float(poison_fraction),
        "n_maps": int(scores.groupby(["primary", "kind", "class"]).size().min()),
    }
    prov = Provenance(
        "backdoor_table",
        {"stores": [str(p) for p in stores], "metrics": [str(p) for p in metrics], **info},
    )
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_table(table, scores, info))
    return table


def mean_abs_maps(store: xr.Dataset) -> np.ndarray:
    """``(class, H, W)``: per class, the mean over draws of the channel-summed ``|map|``."""
    return np.abs(store["maps"].values).sum(axis=2).mean(axis=1)
