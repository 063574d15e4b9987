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

``engine`` picks the training loop: ``plain`` (this module, one model at a time), ``stacked``
(:mod:`~saliency_fingerprints.stacked`: the models of one job as one vmapped stack, the step a
CUDA graph on GPUs; each model trained as if alone, up to float rounding) or ``auto`` (stacked on
CUDA devices, plain on CPUs).

BENCHMARKS.md records what each option does to images/s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from .configuration import schema_defaults
from .errors import DataError
from .models import build_model
from .runtime import seed_generator

log = logging.getLogger(__name__)


_DEFAULTS = schema_defaults("$defs", "train_defaults")  # the schema's, filled in by validation


@dataclass
class TrainSettings:
    """Training settings of a primary or secondary; the optional keys default to the schema's."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = _DEFAULTS["weight_decay"]
    optimizer: str = _DEFAULTS["optimizer"]
    channels_last: bool = _DEFAULTS["channels_last"]
    tf32: bool = _DEFAULTS["tf32"]
    autocast: str = _DEFAULTS["autocast"]
    engine: str = _DEFAULTS["engine"]

    @classmethod
    def from_config(cls, cfg: Mapping) -> TrainSettings:
        """The settings of a schema-validated ``primary_training`` or secondary block (the
        schema checks every value and fills in the defaults)."""
        return cls(
            epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]),
            learning_rate=float(cfg["learning_rate"]),
            weight_decay=float(cfg["weight_decay"]),
            optimizer=str(cfg["optimizer"]),
            channels_last=bool(cfg["channels_last"]),
            tf32=bool(cfg["tf32"]),
            autocast=str(cfg["autocast"]),
            engine=str(cfg["engine"]),
        )

    def stacked_on(self, device: torch.device) -> bool:
        """Whether the stacked engine (saliency_fingerprints/stacked.py) trains on ``device``:
        ``auto`` takes it on CUDA devices, the plain loop on CPUs."""
        return self.engine == "stacked" or (self.engine == "auto" and device.type == "cuda")


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
    test: tuple[torch.Tensor, torch.Tensor] | None,
    settings: TrainSettings,
    seed: int,
    name: str = "model",
    *,
    stop_at_train_accuracy: float | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    patience: int | None = None,
    full_train_accuracy: bool = True,
) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    With ``stop_at_train_accuracy``, training stops after the first epoch whose train accuracy
    is at least that (and after ``settings.epochs`` epochs in any case); None: all epochs.

    With ``validation``, every epoch is scored on it, and the model ends with the weights of its
    best epoch (:func:`select_epoch`: highest validation accuracy, the earliest on ties);
    ``patience`` stops training after that many epochs without a higher validation accuracy
    (None: all epochs). ``test`` (None: no test set) is only recorded, never used to choose.

    ``full_train_accuracy=False`` records the running accuracy of the training batches (free)
    instead of a second pass over the training set after each epoch.
    """
    if len(train[1]) == 0:
        raise DataError(f"{name}: no training examples")
    if validation is not None and len(validation[1]) == 0:
        raise DataError(f"{name}: no validation examples")
    with numeric_precision(settings.tf32):
        return _train(
            model,
            train,
            test,
            settings,
            seed,
            name,
            stop_at_train_accuracy=stop_at_train_accuracy,
            validation=validation,
            patience=patience,
            full_train_accuracy=full_train_accuracy,
        )


def make_optimizer(params, settings: TrainSettings, capturable: bool = False):
    """Adam, or SGD with momentum 0.9 (both elementwise: stacked models step as if alone).
    ``capturable``: Adam's step count on the device, as CUDA-graph capture needs."""
    if settings.optimizer == "adam":
        extra = {"capturable": True} if capturable else {}
        return torch.optim.Adam(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay, **extra
        )
    return torch.optim.SGD(
        params, lr=settings.learning_rate, momentum=0.9, weight_decay=settings.weight_decay
    )


def epoch_record(
    epoch: int,
    loss: float,
    train_accuracy: float,
    name: str,
    *,
    running: bool = True,
    validation: tuple[float, float] | None = None,
    test: float | None = None,
) -> dict:
    """One epoch's history entry; a non-finite loss stops training with a clear error."""
    if not np.isfinite(loss):
        raise DataError(f"{name}: training diverged (loss is {loss}) at epoch {epoch}")
    record = {"epoch": epoch, "loss": loss, "train_accuracy": train_accuracy}
    if running:
        record["train_accuracy_kind"] = "running"
    if validation is not None:
        record["validation_accuracy"], record["validation_loss"] = validation
    if test is not None:
        record["test_accuracy"] = test
    return record


def log_epoch(name: str, record: dict, epochs: int) -> None:
    log.info(
        "%s epoch %d/%d  loss %.4f  %s",
        name,
        record["epoch"],
        epochs,
        record["loss"],
        "  ".join(
            f"{key.replace('_accuracy', ' acc')} {record[key]:.4f}"
            for key in ("train_accuracy", "validation_accuracy", "test_accuracy")
            if key in record
        ),
    )


def select_epoch(history: list[dict]) -> int:
    """The epoch a validated training keeps: highest validation accuracy, the earliest on ties."""
    best = max(history, key=lambda r: (r["validation_accuracy"], -r["epoch"]))
    return int(best["epoch"])


def select_candidate(histories: list[list[dict]], learning_rates: list[float]) -> int:
    """Which of several validated trainings of one model (one per learning-rate candidate) a
    search keeps: the highest validation accuracy at each one's kept epoch; ties: the lower
    validation loss there, then the smaller learning rate (the candidates' order never counts)."""

    def key(i: int) -> tuple:
        kept = histories[i][select_epoch(histories[i]) - 1]
        return (-kept["validation_accuracy"], kept["validation_loss"], learning_rates[i])

    return min(range(len(histories)), key=key)


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on ``(x, y)``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=x.device)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size])
            correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
            loss += nn.functional.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
    return float(correct) / len(y), float(loss) / len(y)


def _train(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    settings: TrainSettings,
    seed: int,
    name: str,
    *,
    stop_at_train_accuracy: float | None,
    validation: tuple[torch.Tensor, torch.Tensor] | None,
    patience: int | None,
    full_train_accuracy: bool,
) -> list[dict]:
    x_train, y_train = train
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    x_train = _layout(x_train, settings.channels_last)
    if test is not None:
        test = (_layout(test[0], settings.channels_last), test[1])
    if validation is not None:
        validation = (_layout(validation[0], settings.channels_last), validation[1])
    dtype = AUTOCAST_DTYPES[settings.autocast]
    opt = make_optimizer(model.parameters(), settings)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    best_state, best_accuracy, since_best = None, -1.0, 0
    n = len(y_train)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=seed_generator(seed, epoch)).to(x_train.device)
        total = torch.zeros((), dtype=torch.float64, device=x_train.device)
        hits = torch.zeros((), dtype=torch.float64, device=x_train.device)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x_train.device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(_layout(x_train[idx], settings.channels_last))
                loss = loss_fn(logits, y_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)  # stays on the device: no sync per step
            hits += (logits.detach().argmax(1) == y_train[idx]).sum()
        record = epoch_record(
            epoch,
            float(total) / n,
            accuracy(model, x_train, y_train) if full_train_accuracy else float(hits) / n,
            name,
            running=not full_train_accuracy,
            validation=None if validation is None else _evaluate(model, *validation),
            test=None if test is None else accuracy(model, *test),
        )
        history.append(record)
        log_epoch(name, record, settings.epochs)
        reached = stop_at_train_accuracy is not None
        if reached and record["train_accuracy"] >= stop_at_train_accuracy:
            log.info("%s: train accuracy target %g reached", name, stop_at_train_accuracy)
            break
        if validation is not None:
            if record["validation_accuracy"] > best_accuracy:
                best_accuracy, since_best = record["validation_accuracy"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            if patience is not None and since_best >= patience:
                log.info(
                    "%s: no better validation accuracy for %d epochs; stopping", name, patience
                )
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        log.info(
            "%s: keeping epoch %d (validation accuracy %.4f)",
            name,
            select_epoch(history),
            best_accuracy,
        )
    model.eval()
    return history


def save_model(
    model: nn.Module | dict[str, nn.Module],
    path: str | Path,
    architecture: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    metadata: dict[str, str] | None = None,
) -> None:
    """Weights as safetensors; the metadata says how to rebuild the module. A dict of models
    (e.g. the replicates of one secondary, ``{"rep0": m0, "rep1": m1}``) goes into one file, each
    model's tensors under its key (``rep0.stem.weight``); :func:`load_model` takes one back.
    ``metadata``: more strings to record (how the models were trained, e.g. the learning rate
    chosen on validation); :func:`model_metadata` reads them back."""
    from .store import atomic_output

    meta = {
        **(metadata or {}),
        "architecture": architecture,
        "in_channels": str(in_channels),
        "image_size": str(image_size),
        "num_classes": str(num_classes),
    }
    models = model if isinstance(model, dict) else {"": model}
    state = {
        f"{name}.{k}" if name else k: v.detach().cpu().contiguous()
        for name, one in models.items()
        for k, v in one.state_dict().items()
    }
    if len(models) > 1 or "" not in models:
        meta["models"] = ",".join(models)
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


def model_metadata(path: str | Path) -> dict[str, str]:
    """The metadata that :func:`save_model` wrote, without loading the weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, ValueError, SafetensorError) as err:
        raise DataError(f"{path}: not a readable model file ({err})") from None


def load_model(
    path: str | Path, device: torch.device | str = "cpu", name: str | None = None
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (no pickle involved); ``name`` picks one
    model of a file that holds several."""
    from safetensors import SafetensorError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model weights not found")
    meta = model_metadata(path)
    try:
        names = meta["models"].split(",") if "models" in meta else [""]
        if (name or "") not in names:
            raise DataError(f"{path}: holds no model {name!r}; it holds {', '.join(names)}")
        state = load_file(str(path))
        if name:
            state = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")}
        model = build_model(
            meta["architecture"],
            int(meta["in_channels"]),
            int(meta["image_size"]),
            int(meta["num_classes"]),
        )
        model.load_state_dict(state)
    except (KeyError, RuntimeError, OSError, ValueError, SafetensorError) as err:
        raise DataError(f"{path}: not a readable model file ({err})") from None
    return model.to(device).eval()
