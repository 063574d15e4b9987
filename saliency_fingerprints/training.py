"""Seeded, deterministic classifier training, shared by primaries and secondaries.

The training data sits on the device as tensors (CIFAR-sized data fits), batches are drawn with
a seeded permutation per epoch, and every epoch logs loss and train/test accuracy. The running loss
stays on the device (no host synchronisation per step).

Opt-in speed options (config keys of ``primary_training`` and ``secondary``, all off by default):

* ``channels_last``: NHWC memory layout for the model and batches (same maths, possibly a
  different float summation order: results agree to float rounding, not bitwise);
* ``tf32``: TF32 tensor-core matmuls and convolutions on CUDA GPUs (~10 mantissa bits: results
  change at the 1e-3 relative level; no effect on CPUs). Off means strict float32, which also
  switches off PyTorch's own default of TF32 cuDNN convolutions;
* ``autocast: bf16``: bfloat16 autocast of the forward pass (changes results at the 1e-2 level;
  on CPUs without bf16 instructions it is slower, not faster).

BENCHMARKS.md records what each option does to images/s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
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
    channels_last: bool = False
    tf32: bool = False
    autocast: str = "none"

    @classmethod
    def from_config(cls, cfg: dict, key: str) -> TrainSettings:
        settings = cls(
            epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]),
            learning_rate=float(cfg["learning_rate"]),
            weight_decay=float(cfg.get("weight_decay", 0.0)),
            optimizer=str(cfg.get("optimizer", "adam")),
            channels_last=bool(cfg.get("channels_last", False)),
            tf32=bool(cfg.get("tf32", False)),
            autocast=str(cfg.get("autocast", "none")),
        )
        for name in ("epochs", "batch_size"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"{key}.{name} must be a positive integer")
        if settings.optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"{key}.optimizer must be 'adam' or 'sgd', got {settings.optimizer!r}"
            )
        if settings.autocast not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"{key}.autocast must be one of {sorted(AUTOCAST_DTYPES)}, "
                f"got {settings.autocast!r}"
            )
        return settings


AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}


@contextlib.contextmanager
def numeric_precision(tf32: bool = False) -> Iterator[None]:
    """Strict float32 (``tf32=False``) or TF32 math for CUDA matmuls and cuDNN convolutions,
    restored on exit. PyTorch's own default allows TF32 in cuDNN convolutions; here it is off
    unless asked for. No effect on CPUs."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # older torch
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


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
    if len(train[1]) == 0:
        raise DataError(f"{name}: no training examples")
    with numeric_precision(settings.tf32):
        return _train(model, train, test, settings, seed, name)


def _train(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    seed: int,
    name: str,
) -> list[dict]:
    x_train, y_train = train
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    x_train = _layout(x_train, settings.channels_last)
    test = (_layout(test[0], settings.channels_last), test[1])
    dtype = AUTOCAST_DTYPES[settings.autocast]
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
        total = torch.zeros((), dtype=torch.float64, device=x_train.device)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x_train.device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(_layout(x_train[idx], settings.channels_last)), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)  # stays on the device: no sync per step
        record = {
            "epoch": epoch,
            "loss": float(total) / n,
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
        tmp.write_bytes(canonical_safetensors(save(state, metadata=meta)))


def canonical_safetensors(data: bytes) -> bytes:
    """safetensors writes its ``__metadata__`` in a random key order (a Rust HashMap, seeded per
    process): sort it, so that the same weights always give the same file, byte for byte."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > length:  # cannot happen for ASCII metadata; keep the original then
        return data
    return data[:8] + text.ljust(length, b" ") + data[8 + length :]


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
