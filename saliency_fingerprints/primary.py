"""Primary classifiers: one per (architecture, seed[, data seed, epochs]), each on its own seeded
training subset.

A primary's seed sets its initial weights, its training subset and its batch order; a separate
data seed (the init_vs_data study) sets the last two instead, and a training length other than
``primary_training.epochs`` (the training_length study; 0 = untrained) stops it early. With a
constant learning rate and the batch order keyed by (seed, epoch), a primary trained for e epochs
is the epoch-e checkpoint of the same primary trained longer (tests/test_primary_variants.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .configuration import primary_name
from .datasets import open_dataset
from .errors import ConfigError
from .models import build_model
from .stacked import train_models
from .stage import Stage
from .training import TrainSettings, accuracy, predict, save_model

log = logging.getLogger(__name__)


def training_subset(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The primary's own seeded random subset of the training split (sorted sample ids)."""
    rng = np.random.default_rng([seed, 0x5EED])
    size = max(1, round(len(train_ids) * fraction))
    return np.sort(rng.choice(train_ids, size=size, replace=False))


def untrained_record(
    model: torch.nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
) -> dict:
    """The history record of a model trained for 0 epochs: its accuracies at initialisation."""
    return {
        "epoch": 0,
        "train_accuracy": accuracy(model, train_images, train_labels),
        "test_accuracy": accuracy(model, test_images, test_labels),
    }


TrainingTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(images, labels) -> (images, labels)`` of a primary's training subset (same length)."""


def class_counts(values: np.ndarray, classes: list[str]) -> dict[str, int]:
    """``{class name: how many of values are that class}``, every class listed."""
    counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=len(classes))
    return {str(name): int(count) for name, count in zip(classes, counts, strict=False)}


def permuted_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` in a seeded random order: the data randomisation test's training labels (same
    class balance, no relation to the images)."""
    return labels[np.random.default_rng([seed, 0x1ABE]).permutation(len(labels))]


def train_primary(
    *,
    dataset_path: str | Path,
    architecture: str,
    seed: int,
    cfg: dict,
    weights_out: str | Path,
    metrics_out: str | Path,
    device: torch.device,
    threads: int | None = None,
    stop_at_train_accuracy: float | None = None,
    data_seed: int | None = None,
    name: str | None = None,
    training_transform: TrainingTransform | None = None,
) -> dict:
    """Train the primary ``architecture``-seed``seed`` on its own subset of the training split.

    With ``stop_at_train_accuracy`` training stops at the first epoch whose train accuracy reaches
    it (``cfg["epochs"]`` is then a cap); the metrics say whether it did. ``data_seed`` (None:
    ``seed``) sets the training subset and batch order; ``seed`` the initial weights.
    ``cfg["epochs"]`` 0 saves the untrained model. ``name`` (default ``<architecture>-seed<seed>``)
    names it in logs and metrics. ``training_transform`` (None: the training subset as it is)
    maps the subset's ``(images, labels)`` tensors to the ones the model trains on, of the same
    length, so the batch order stays the primary's (the data randomisation test's permuted
    labels, :func:`permuted_labels`; the backdoor experiment's poisoning,
    :mod:`~saliency_fingerprints.backdoor`); test images are never transformed. Its caller
    states what it did in the metrics' ``labels`` (default ``original``).
    """
    data = seed if data_seed is None else int(data_seed)
    config = {"architecture": architecture, "seed": seed}
    if data_seed is not None:
        config["data_seed"] = data
    if stop_at_train_accuracy is not None:
        config["target_train_accuracy"] = stop_at_train_accuracy
    stage = Stage("train_primary", {**config, **cfg}, device, seed=seed, threads=threads)
    settings = TrainSettings.from_config(cfg)
    ds, info = open_dataset(dataset_path)
    split = ds["split"].values
    train_ids = training_subset(np.flatnonzero(split == "train"), cfg["train_fraction"], data)
    test_ids = np.flatnonzero(split == "test")
    images = torch.from_numpy(ds["image"].values).to(device)
    label_values = ds["label"].values.astype(np.int64)
    labels = torch.from_numpy(label_values).to(device)
    name = name or primary_name(architecture, seed)
    torch.manual_seed(seed)  # Glorot init draws from the global generator
    try:
        model = build_model(architecture, info.channels, info.image_size, len(info.classes))
    except ConfigError as err:  # name the primary and the dataset the check failed on
        raise ConfigError(f"primary {name} on {dataset_path}: {err}") from None
    model = model.to(device)
    log.info(
        "%s: %d training images (of %d), %d test images, device %s",
        name,
        len(train_ids),
        int((split == "train").sum()),
        len(test_ids),
        stage.device_line,
    )
    train_idx = torch.from_numpy(train_ids).to(device)
    test_idx = torch.from_numpy(test_ids).to(device)
    train_set = (images[train_idx], labels[train_idx])
    if training_transform is not None:
        train_set = training_transform(*train_set)
        if len(train_set[0]) != len(train_idx) or len(train_set[1]) != len(train_idx):
            raise ValueError(f"{name}: the training transform changed the number of images")
    if settings.epochs == 0:  # the untrained primary (training_length study, level 0)
        history = [untrained_record(model, *train_set, images[test_idx], labels[test_idx])]
    else:
        (history,) = train_models(
            [model],
            [train_set],
            settings,
            [data],
            [name],
            tests=[(images[test_idx], labels[test_idx])],
            stop_at_train_accuracy=stop_at_train_accuracy,
            threads=threads,
        )
    save_model(model, weights_out, architecture, info.channels, info.image_size, len(info.classes))
    predicted = predict(model, images[test_idx]).cpu().numpy()
    metrics = {
        "primary": name,
        "architecture": architecture,
        "seed": seed,
        "data_seed": data,
        "epochs": settings.epochs,
        "n_train": len(train_ids),
        "n_test": len(test_ids),
        "labels": "original",
        "final_train_accuracy": history[-1].get("train_accuracy"),
        "final_test_accuracy": history[-1]["test_accuracy"],
        # how often the primary predicts each class on the test split, next to the true counts:
        # primaries that predict different classes explain different classes (the class cue)
        "test_prediction_counts": class_counts(predicted, info.classes),
        "test_label_counts": class_counts(label_values[test_ids], info.classes),
        "history": history,
    }
    if stop_at_train_accuracy is not None:
        reached = history[-1]["train_accuracy"] >= stop_at_train_accuracy
        metrics.update(
            target_train_accuracy=stop_at_train_accuracy,
            max_epochs=settings.epochs,
            epochs_run=len(history),
            target_reached=bool(reached),
        )
        if not reached:
            log.warning(
                "%s: train accuracy %.4f after %d epochs (the cap) is below the target %g",
                name,
                history[-1]["train_accuracy"],
                len(history),
                stop_at_train_accuracy,
            )
    return stage.write_metrics(metrics_out, metrics)
