"""Primary classifiers: one per (architecture, seed), each on its own seeded training subset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .datasets import open_dataset
from .errors import ConfigError
from .models import build_model
from .provenance import Provenance
from .runtime import describe_device, set_determinism
from .store import write_json
from .training import TrainSettings, save_model, train_classifier

log = logging.getLogger(__name__)


def primary_id(architecture: str, seed: int) -> str:
    """The name a primary goes by in paths, stores and tables."""
    return f"{architecture}-seed{seed}"


def training_subset(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The primary's own seeded random subset of the training split (sorted sample ids)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"primary_training.train_fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 0x5EED])
    size = max(1, round(len(train_ids) * fraction))
    return np.sort(rng.choice(train_ids, size=size, replace=False))


def train_primary(
    dataset_path: str | Path,
    architecture: str,
    seed: int,
    cfg: dict,
    weights_out: str | Path,
    metrics_out: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> dict:
    prov = Provenance(
        "train_primary",
        {"architecture": architecture, "seed": seed, **cfg},
        describe_device(device),
    )
    set_determinism(seed, threads)
    settings = TrainSettings.from_config(cfg, "primary_training")
    ds, info = open_dataset(dataset_path)
    split = ds["split"].values
    train_ids = training_subset(np.flatnonzero(split == "train"), cfg["train_fraction"], seed)
    test_ids = np.flatnonzero(split == "test")
    images = torch.from_numpy(ds["image"].values).to(device)
    labels = torch.from_numpy(ds["label"].values.astype(np.int64)).to(device)
    torch.manual_seed(seed)  # Glorot init draws from the global generator
    try:
        model = build_model(architecture, info.channels, info.image_size, len(info.classes))
    except ConfigError as err:  # name the primary and the dataset the check failed on
        raise ConfigError(
            f"primary {primary_id(architecture, seed)} on {dataset_path}: {err}"
        ) from None
    model = model.to(device)
    name = primary_id(architecture, seed)
    log.info(
        "%s: %d training images (of %d), %d test images, device %s",
        name,
        len(train_ids),
        int((split == "train").sum()),
        len(test_ids),
        describe_device(device),
    )
    train_idx = torch.from_numpy(train_ids).to(device)
    test_idx = torch.from_numpy(test_ids).to(device)
    history = train_classifier(
        model,
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        settings,
        seed,
        name,
    )
    save_model(model, weights_out, architecture, info.channels, info.image_size, len(info.classes))
    metrics = {
        "primary": name,
        "architecture": architecture,
        "seed": seed,
        "n_train": len(train_ids),
        "n_test": len(test_ids),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "history": history,
        "provenance": prov.finish(),
    }
    write_json(metrics_out, metrics)
    return metrics
