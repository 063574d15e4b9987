"""Backdoor triggers in input-agnostic class maps (Akhtar & Jalwana 2023, "Backdoor detection").

The paper trains classifiers with a planted trigger ("Trojan") and finds that the input-agnostic
map (:mod:`~saliency_fingerprints.agnostic`) of the attack's target class shows the trigger. This
module repeats that on our primaries, with a measure instead of a look:

* **The trigger** (:class:`.Trigger`): a ``size`` x ``size`` square patch in one corner of the
  image (``position``), its pattern a ``checkerboard`` of the dataset's lowest and highest pixel
  values (the highest at the patch's top-left corner) or ``solid`` (the highest value), the same
  in every channel. :func:`.stamp` pastes it over images: the patch's pixels are replaced, every
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
* **Localisation** (:func:`.localisation_scores`): per map, the share of its absolute mass (summed
  over channels) inside the trigger patch divided by the patch's share of the pixels. 1: no more
  mass in the patch than anywhere else; ``H x W / size^2``: all of it there.
* **The table** (:func:`.backdoor_table`): per primary, kind (clean / backdoored) and class, the
  score's mean and sd across draws; per architecture, kind and class, the mean across seeds of
  those means and their sd; on the backdoored target class's rows, its rank among the backdoored
  primary's classes and one-sided Mann-Whitney U tests of its draws against the clean primary's
  draws of the class and against the backdoored primary's draws of the other classes. Those tests
  are about the maps' draws for one pair of trained models (how reliably the method shows what
  that model learned), not about models in general: the seeds are the replication over models.

The trigger (:mod:`~saliency_fingerprints.trigger`) and the localisation table
(:mod:`~saliency_fingerprints.backdoor_tables`) are modules of their own, without torch, so
that the table and figure jobs start without it; this one trains and draws the maps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from .agnostic import batch_diagnostics, input_agnostic_maps
from .configuration import primary_name
from .datasets import open_dataset
from .errors import ConfigError, DataError
from .primary import train_primary
from .provenance import as_attr
from .runtime import seed_generator
from .saliency.job import build_engine, frozen_primary, train_images
from .stage import Stage
from .store import write_dataset, write_json
from .training import load_model, numeric_precision, predict
from .trigger import KEY, KINDS, Trigger, pixel_range, stamp

log = logging.getLogger(__name__)


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
