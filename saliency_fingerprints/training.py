"""Seeded, deterministic classifier training, shared by primaries and secondaries.

The training data sits on the device as tensors (CIFAR-sized data fits), batches are drawn with
a seeded permutation per epoch, and every epoch logs loss and train/test accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, DataError
from .models import build_model
from .runtime import seed_generator

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    optimizer: str = "adam"

    @classmethod
    def from_config(cls, cfg: dict, key: str) -> TrainSettings:
        settings = cls(
            epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]),
            learning_rate=float(cfg["learning_rate"]),
            weight_decay=float(cfg.get("weight_decay", 0.0)),
            optimizer=str(cfg.get("optimizer", "adam")),
        )
        for name in ("epochs", "batch_size"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"{key}.{name} must be a positive integer")
        if settings.optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"{key}.optimizer must be 'adam' or 'sgd', got {settings.optimizer!r}"
            )
        return settings


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x, batch_size) == y).float().mean())


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        )


def train_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    seed: int,
    name: str = "model",
) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history."""
    x_train, y_train = train
    if len(y_train) == 0:
        raise DataError(f"{name}: no training examples")
    params = model.parameters()
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            params, lr=settings.learning_rate, momentum=0.9, weight_decay=settings.weight_decay
        )
    loss_fn = nn.CrossEntropyLoss()
    history = []
    n = len(y_train)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=seed_generator(seed, epoch)).to(x_train.device)
        total = 0.0
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        record = {
            "epoch": epoch,
            "loss": total / n,
            "train_accuracy": accuracy(model, x_train, y_train),
            "test_accuracy": accuracy(model, *test),
        }
        if not np.isfinite(record["loss"]):
            raise DataError(
                f"{name}: training diverged (loss is {record['loss']}) at epoch {epoch}"
            )
        history.append(record)
        log.info(
            "%s epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f",
            name,
            epoch,
            settings.epochs,
            record["loss"],
            record["train_accuracy"],
            record["test_accuracy"],
        )
    model.eval()
    return history


def save_model(
    model: nn.Module,
    path: str | Path,
    architecture: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
) -> None:
    """Weights as safetensors; the metadata says how to rebuild the module."""
    from .store import atomic_output

    meta = {
        "architecture": architecture,
        "in_channels": str(in_channels),
        "image_size": str(image_size),
        "num_classes": str(num_classes),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (no pickle involved)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model weights not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        model = build_model(
            meta["architecture"],
            int(meta["in_channels"]),
            int(meta["image_size"]),
            int(meta["num_classes"]),
        )
        model.load_state_dict(state)
    except (KeyError, RuntimeError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable model file ({err})") from None
    return model.to(device).eval()
