"""Train several models of one architecture as one: stacked parameters, one vmapped step.

The secondaries of one cell (its replicates) share an architecture, settings and data sizes but
differ in initialisation, data and batch order. Trained one after another, each step of each
model is a handful of tiny kernel launches: a GPU idles. Here every model's parameters are stacked
along a leading axis (``torch.func.stack_module_state``), one ``vmap`` of the model's forward pass
computes all models' losses on their own batches, the backward pass of their sum gives each model
its own gradient, and one optimiser steps the stacked tensors. Adam and SGD are elementwise, so
this trains each model *exactly as if alone* (its own seed, its own batch order, its own early
stopping), up to float rounding of the batched kernels; ``tests/test_stacked.py`` checks it
against :func:`~saliency_fingerprints.training.train_classifier`.

On a CUDA device the whole step (gathering the batches, forward, backward, optimiser step, loss
bookkeeping) is captured once as a CUDA graph and replayed: one launch per step instead of
hundreds. The first steps run eagerly (they are real steps, and the warm-up CUDA graphs need);
a step that cannot be captured falls back to eager execution, with a warning.

Models that keep going after their own stop (patience, a train-accuracy target) while others
train on are not changed by it: each model's kept weights are snapshotted when they are chosen.

Models may have learning rates of their own (a secondary's learning-rate candidates stack with its
replicates). Every update of Adam and SGD is the learning rate times a direction that does not
depend on it, so the optimiser steps with rate 1 and each model's weights then move by its own
rate times that step (``torch.lerp`` from the weights before the step).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .errors import DataError
from .runtime import seed_generator, set_determinism
from .training import (
    AUTOCAST_DTYPES,
    TrainSettings,
    epoch_record,
    log_epoch,
    make_optimizer,
    numeric_precision,
    train_classifier,
)

log = logging.getLogger(__name__)

Data = tuple[torch.Tensor, torch.Tensor]


def stack_reason(models: list[nn.Module], trains: list[Data]) -> str | None:
    """Why ``models`` cannot train as one stack (None: they can)."""
    if not models:
        return "no models"
    kinds = {type(m) for m in models}
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
    if len(kinds) > 1 or len(shapes) > 1:
        return "the models differ in architecture"
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
        # vmap does not write batch norm's running statistics back into stacked buffers
        return "batch normalisation's running statistics do not stack"
    if len({len(y) for _, y in trains}) > 1 or len({tuple(x.shape[1:]) for x, _ in trains}) > 1:
        return "their training sets differ in size or shape"
    return None


@dataclass
class _Progress:
    """One model's early-stopping state, as :func:`training._train` keeps it."""

    history: list[dict] = field(default_factory=list)
    active: bool = True
    best_accuracy: float = -1.0
    since_best: int = 0
    kept: dict | None = None  # the weights this model ends with, once chosen


class StackedModels:
    """``models`` (one architecture) as stacked parameter and buffer tensors on ``device``."""

    def __init__(self, models: list[nn.Module], device: torch.device) -> None:
        self.n = len(models)
        self.params, self.buffers = stack_module_state([m.to(device) for m in models])
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.detach().clone() for k, v in self.buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(models, batch, ...)`` -> logits ``(models, batch, classes)``."""
        return torch.vmap(self._one, randomness="error")(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> StackedModels:
        self.base.train(mode)
        return self

    def state_of(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s state dict (copies)."""
        return {k: v[index].detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple:
        """Per-model accuracy and mean cross-entropy on ``x`` ``(models, N, ...)``, ``y``
        ``(models, N)``: two float64 tensors of shape ``(models,)``."""
        self.train(False)
        correct = torch.zeros(self.n, dtype=torch.float64, device=x.device)
        loss = torch.zeros(self.n, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[1], batch_size):
            logits = self.forward(x[:, i : i + batch_size])
            yy = y[:, i : i + batch_size]
            correct += (logits.argmax(-1) == yy).sum(1)
            loss += (
                nn.functional.cross_entropy(logits.flatten(0, 1), yy.flatten(), reduction="none")
                .view_as(yy)
                .sum(1)
            )
        return correct / y.shape[1], loss / y.shape[1]


class TrainStep:
    """One training step of every model on the batches ``index`` (``(models, batch)``).
    ``rates``: each model's learning rate (shape ``(models,)``) when they differ; the optimiser
    then steps at rate 1 and each model moves by its rate times that step."""

    def __init__(self, stack, opt, x, y, dtype, totals, hits, rates=None) -> None:
        self.stack, self.opt, self.x, self.y, self.dtype = stack, opt, x, y, dtype
        self.totals, self.hits, self.rates = totals, hits, rates
        self.rows = torch.arange(stack.n, device=x.device)[:, None]

    def __call__(self, index: torch.Tensor) -> None:
        x, y = self.x[self.rows, index], self.y[self.rows, index]
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.stack.forward(x)
            losses = (
                nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), y.flatten(), reduction="none"
                )
                .view_as(y)
                .mean(1)
            )
        losses.sum().backward()
        if self.rates is None:
            self.opt.step()
        else:
            self._step_at_own_rates()
        self.totals += losses.detach().double() * y.shape[1]
        self.hits += (logits.detach().argmax(-1) == y).sum(1)

    @torch.no_grad()
    def _step_at_own_rates(self) -> None:
        params = list(self.stack.params.values())
        before = [p.detach().clone() for p in params]
        self.opt.step()  # at learning rate 1
        for p, b in zip(params, before, strict=True):
            p.copy_(torch.lerp(b, p, self.rates.view(-1, *[1] * (p.dim() - 1))))


class GraphedStep:
    """A :class:`TrainStep` of a fixed batch size, captured as a CUDA graph after ``warmup`` eager
    steps (on a side stream, as capture requires); replays copy the batch indices in."""

    def __init__(self, step: TrainStep, batch_size: int, warmup: int = 3) -> None:
        self.step, self.warmup, self.done = step, warmup, 0
        self.index = torch.zeros(step.stack.n, batch_size, dtype=torch.long, device=step.x.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.stream = torch.cuda.Stream(device=step.x.device)

    def __call__(self, index: torch.Tensor) -> None:
        if self.failed:
            self.step(index)
            return
        self.index.copy_(index)
        if self.graph is not None:
            self.graph.replay()
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.step(self.index)
        torch.cuda.current_stream().wait_stream(self.stream)
        self.done += 1
        if self.done >= self.warmup:
            self._capture()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # Capture records the step without running it: it costs no training step (nor counts).
        try:
            self.step.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.step(self.index)
        except Exception as err:  # noqa: BLE001 - any capture failure: run eagerly instead
            log.warning("CUDA graph capture failed (%s); training on without graphs", err)
            self.failed = True
            return
        self.graph = graph


def train_stacked(
    models: list[nn.Module],
    trains: list[Data],
    settings: TrainSettings,
    seeds: list[int],
    names: list[str],
    *,
    validations: list[Data] | None = None,
    tests: list[Data] | None = None,
    patience: int | None = None,
    stop_at_train_accuracy: float | None = None,
    full_train_accuracy: bool = False,
    cuda_graphs: bool = True,
    learning_rates: list[float] | None = None,
) -> list[list[dict]]:
    """Train ``models`` (one architecture, training sets of one size) in place as one stack;
    return each model's per-epoch history. Every model trains and stops exactly as
    :func:`~saliency_fingerprints.training.train_classifier` would train it alone with the same
    seed, data and options (``full_train_accuracy=False``: the running train accuracy).
    ``cuda_graphs``: capture the step as a CUDA graph on CUDA devices (ignored on CPUs).
    ``learning_rates``: each model's own (default ``settings.learning_rate`` for all)."""
    reason = stack_reason(models, trains)
    if reason:
        raise DataError(f"{', '.join(names)}: cannot train as one stack: {reason}")
    for name, (_, y) in zip(names, trains, strict=True):
        if len(y) == 0:
            raise DataError(f"{name}: no training examples")
    for kind, sets in (("validation", validations), ("test", tests)):
        if sets is not None and len({len(y) for _, y in sets}) > 1:
            raise DataError(f"{', '.join(names)}: {kind} sets differ in size")
        if sets is not None and len(sets[0][1]) == 0:
            raise DataError(f"{names[0]}: no {kind} examples")
    if learning_rates is not None and len(learning_rates) != len(models):
        raise DataError(
            f"{', '.join(names)}: {len(learning_rates)} learning rates for {len(models)} models"
        )
    with numeric_precision(settings.tf32):
        return _train_stacked(
            models,
            trains,
            settings,
            seeds,
            names,
            validations=validations,
            tests=tests,
            patience=patience,
            stop_at_train_accuracy=stop_at_train_accuracy,
            full_train_accuracy=full_train_accuracy,
            cuda_graphs=cuda_graphs,
            learning_rates=learning_rates,
        )


def _train_stacked(
    models,
    trains,
    settings,
    seeds,
    names,
    *,
    validations,
    tests,
    patience,
    stop_at_train_accuracy,
    full_train_accuracy,
    cuda_graphs,
    learning_rates,
) -> list[list[dict]]:
    device = trains[0][0].device
    stack = StackedModels(models, device)
    x, y = _stacked(trains)
    val, test = _stacked(validations), _stacked(tests)
    capturable = cuda_graphs and device.type == "cuda"
    rates = None
    if learning_rates is not None and len(set(learning_rates)) > 1:
        rates = torch.tensor(learning_rates, dtype=torch.float32, device=device)
        settings = dataclasses.replace(settings, learning_rate=1.0)
    elif learning_rates is not None:
        settings = dataclasses.replace(settings, learning_rate=float(learning_rates[0]))
    opt = make_optimizer(list(stack.params.values()), settings, capturable=capturable)
    totals = torch.zeros(stack.n, dtype=torch.float64, device=device)
    hits = torch.zeros(stack.n, dtype=torch.float64, device=device)
    dtype = AUTOCAST_DTYPES[settings.autocast]
    step = TrainStep(stack, opt, x, y, dtype, totals, hits, rates)
    n, batch = y.shape[1], settings.batch_size
    full = GraphedStep(step, batch) if capturable and n >= batch else step
    progress = [_Progress() for _ in models]
    for epoch in range(1, settings.epochs + 1):
        stack.train(True)
        orders = torch.stack(
            [torch.randperm(n, generator=seed_generator(s, epoch)) for s in seeds]
        ).to(device)
        totals.zero_()
        hits.zero_()
        for start in range(0, n, batch):
            index = orders[:, start : start + batch]
            (full if index.shape[1] == batch else step)(index)
        val_acc = val_loss = None
        if val is not None:
            val_acc, val_loss = (t.tolist() for t in stack.evaluate(*val))
        losses, accs = (totals / n).tolist(), (hits / n).tolist()
        if full_train_accuracy:
            accs = stack.evaluate(x, y)[0].tolist()
        test_acc = None if test is None else stack.evaluate(*test)[0].tolist()
        for m, p in enumerate(progress):
            if not p.active:
                continue
            record = epoch_record(
                epoch,
                losses[m],
                accs[m],
                names[m],
                running=not full_train_accuracy,
                validation=None if val is None else (val_acc[m], val_loss[m]),
                test=None if test is None else test_acc[m],
            )
            p.history.append(record)
            log_epoch(names[m], record, settings.epochs)
            _advance(p, record, stack, m, names[m], stop_at_train_accuracy, val, patience)
        if not any(p.active for p in progress):
            break
    for m, (model, p) in enumerate(zip(models, progress, strict=True)):
        model.load_state_dict(p.kept if p.kept is not None else stack.state_of(m))
        model.eval()
    return [p.history for p in progress]


def _stacked(sets: list[Data] | None) -> Data | None:
    if sets is None:
        return None
    return torch.stack([x for x, _ in sets]), torch.stack([y for _, y in sets])


def _advance(p, record, stack, m, name, stop_at, val, patience) -> None:
    """Early stopping of model ``m`` after an epoch, as ``training._train`` decides it."""
    if stop_at is not None and record["train_accuracy"] >= stop_at:
        log.info("%s: train accuracy target %g reached", name, stop_at)
        p.active = False
    elif val is not None:
        if record["validation_accuracy"] > p.best_accuracy:
            p.best_accuracy, p.since_best = record["validation_accuracy"], 0
            p.kept = stack.state_of(m)
        else:
            p.since_best += 1
        if patience is not None and p.since_best >= patience:
            log.info("%s: no better validation accuracy for %d epochs; stopping", name, patience)
            p.active = False
    if not p.active and p.kept is None:
        p.kept = stack.state_of(m)


def train_models(
    models: list[nn.Module],
    trains: list[Data],
    settings: TrainSettings,
    seeds: list[int],
    names: list[str],
    *,
    validations: list[Data] | None = None,
    tests: list[Data] | None = None,
    patience: int | None = None,
    stop_at_train_accuracy: float | None = None,
    full_train_accuracy: bool = True,
    threads: int | None = None,
    learning_rates: list[float] | None = None,
) -> list[list[dict]]:
    """Train ``models`` with the engine ``settings.engine`` picks for their device: one stack
    (:func:`train_stacked`) where it applies and they can stack, else one after another with
    :func:`~saliency_fingerprints.training.train_classifier` (determinism reset to each model's
    seed first, as a job training it alone would). ``learning_rates``: each model's own
    (default ``settings.learning_rate`` for every model)."""
    device = trains[0][0].device
    options = {
        "patience": patience,
        "stop_at_train_accuracy": stop_at_train_accuracy,
        "full_train_accuracy": full_train_accuracy,
    }
    if settings.stacked_on(device):
        reason = stack_reason(models, trains)
        if reason is None:
            log.info("training %d model(s) as one stack on %s", len(models), device)
            return train_stacked(
                models,
                trains,
                settings,
                seeds,
                names,
                validations=validations,
                tests=tests,
                learning_rates=learning_rates,
                **options,
            )
        log.info("training one model at a time: %s", reason)
    histories = []
    for m, model in enumerate(models):
        set_determinism(seeds[m], threads)
        own = settings
        if learning_rates is not None:
            own = dataclasses.replace(settings, learning_rate=float(learning_rates[m]))
        histories.append(
            train_classifier(
                model,
                trains[m],
                None if tests is None else tests[m],
                own,
                seeds[m],
                names[m],
                validation=None if validations is None else validations[m],
                **options,
            )
        )
    return histories
