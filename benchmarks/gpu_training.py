"""Training-step throughput, meant for a GPU: the plain eager step against the large-batch bound.

Section ``gpu-training`` of ``benchmarks/run.py`` (opt-in: ``--sections gpu-training``). It also
runs on a CPU, with small bound batches (that is what the smoke test does); there the rates are
per second of this process's CPU time, as everywhere in the suite.

For each architecture in :data:`CASES` (MiniResNet and the 2-layer CNN on 3x32x32 images, as
the CIFAR primaries; MiniCNN on 1x32x32 maps, as the secondaries), with 10 classes, Adam (lr
1e-3) and synthetic data already on the device, images/s of one *training step*: zero the
gradients, forward, cross-entropy (mean), backward, ``Adam.step()``. No evaluation, no data
shuffling or gathering (``train_classifier``'s loop adds those; its figures are the ``training``
section):

* **eager**: one model, batch 64 (the pipeline's batch size), fp32: what the pipeline's loop
  costs per step, minus the bookkeeping;
* **bound**: one model at a large batch (8192 on a GPU, smaller on a CPU; halved until it fits in
  memory), fp32: the throughput bound of the hardware for this network, with launch and Python
  overheads amortised over many images;
* **fast path** (when one is plugged in: ``--fast-path module:function``): ``fast_models``
  models trained at once, batch 64 each, by the plugged-in trainer (see :data:`Trainer`), next to
  the eager loop over the same models, the figure it has to beat;
* **bf16** (opt-in, ``--bf16``): eager and bound again under ``torch.autocast(bfloat16)``.

"fraction of the bound" is a path's images/s over the bound's at the same precision, taken per
repeat (paths are measured interleaved, once each per repeat) and reported as the median.

Timing: every path first runs ``warmup`` untimed steps; before and after each timed call the
device is synchronised (``torch.cuda.synchronize``); a timed call is several steps (a few
thousand images on a GPU, one step on a CPU), repeated until ``min_time`` seconds have elapsed.
The section runs under the suite's settings (the jobs' deterministic algorithms, no cuDNN
autotuning) and strict float32 (no TF32), as the pipeline's default training does.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from benchmarks.common import median, summary, timed
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import synchronize

CASES: dict[str, tuple[int, int, int]] = {
    "miniresnet": (3, 32, 32),
    "cnn2": (3, 32, 32),
    "minicnn": (1, 32, 32),
}
CLASSES = 10
BATCH = 64
LEARNING_RATE = 1e-3

Batch = tuple[torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor], object]
#: The fast-path slot: ``trainer(models, batch) -> step``.
#:
#: ``models``: ``M`` freshly built models of one architecture (distinct seeds), on the device, in
#: train mode. ``batch``: an example ``(x, y)`` with ``x`` of shape ``(M, B, C, H, W)`` (float32)
#: and ``y`` of shape ``(M, B)`` (int64), on the device, for setting up (allocating static
#: buffers, stacking parameters, capturing CUDA graphs: not timed). The returned ``step(x, y)``
#: does one training step of every model ``m`` on ``(x[m], y[m])`` - cross-entropy (mean), Adam
#: with lr 1e-3 - for batches of that shape (different tensors on each call: copy them in if
#: the trainer needs static inputs). It should not synchronise (the harness does). The trainer
#: may keep the parameters in its own form (stacked for ``torch.func.vmap``); nothing reads them.
Trainer = Callable[[Sequence[nn.Module], Batch], Step]


def eager_trainer(
    models: Sequence[nn.Module], batch: Batch, *, autocast: torch.dtype | None = None
) -> Step:
    """The reference :data:`Trainer`: the plain eager step, one model after the other, each
    with its own Adam; under ``torch.autocast(dtype=autocast)`` when given."""
    device = batch[0].device
    optimizers = [torch.optim.Adam(m.parameters(), lr=LEARNING_RATE) for m in models]
    for model in models:
        model.train()
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for index, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            opt.step()

    return step


def load_trainer(spec: str) -> Trainer:
    """``"package.module:function"`` -> that function (the ``--fast-path`` option)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--fast-path expects 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def trainer_name(trainer: Callable) -> str:
    base = trainer.func if isinstance(trainer, functools.partial) else trainer
    return f"{getattr(base, '__module__', '?')}:{getattr(base, '__qualname__', repr(base))}"


def build_models(arch: str, shape: tuple[int, int, int], n: int, device: torch.device):
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(build_model(arch, shape[0], shape[1], CLASSES).to(device))
    return models


def make_batches(
    n_models: int, batch: int, shape, device: torch.device, count: int, seed: int = 4
) -> list[Batch]:
    """``count`` distinct synthetic batches ``(x, y)`` of shape ``(n_models, batch, *shape)``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.rand((n_models, batch, *shape), generator=generator).to(device)
        y = torch.randint(0, CLASSES, (n_models, batch), generator=generator).to(device)
        out.append((x, y))
    return out


class TrainingPath:
    """One measured path: a trainer set up on its models and batches, ready to time."""

    def __init__(
        self,
        label: str,
        precision: str,
        trainer: Trainer,
        arch: str,
        shape: tuple[int, int, int],
        n_models: int,
        batch: int,
        device: torch.device,
        warmup: int,
    ) -> None:
        self.label, self.precision = label, precision
        self.n_models, self.batch, self.device = n_models, batch, device
        images = n_models * batch
        # a timed call: about 4096 images on a GPU (so one synchronisation per call costs
        # nothing), one step on a CPU (its clock needs no synchronisation)
        self.steps_per_call = max(1, 4096 // images) if device.type == "cuda" else 1
        count = min(8, max(2, self.steps_per_call))  # distinct batches, cycled through
        self.models = build_models(arch, shape, n_models, device)
        self.batches = make_batches(n_models, batch, shape, device, count)
        self.step = trainer(self.models, self.batches[0])
        self.next = 0
        for _ in range(warmup):
            self._one()
        synchronize(device)
        self.rates: list[dict] = []

    def _one(self) -> None:
        x, y = self.batches[self.next % len(self.batches)]
        self.next += 1
        self.step(x, y)

    def _call(self) -> None:
        for _ in range(self.steps_per_call):
            self._one()

    def measure(self, min_time: float) -> dict:
        """Images/s by both clocks (and the primary one) of one timed run."""
        synchronize(self.device)  # nothing queued before the clock starts
        t = timed(self._call, self.device, min_time)
        images = self.steps_per_call * self.n_models * self.batch
        rate = {k: images / v for k, v in t.items()}
        self.rates.append(rate)
        return rate

    def release(self) -> None:
        del self.models, self.batches, self.step


def set_up_bound(label, precision, trainer, arch, shape, batch, device, warmup) -> TrainingPath:
    """The bound's path at ``batch``, halved until a step fits in the device's memory."""
    while True:
        try:
            return TrainingPath(label, precision, trainer, arch, shape, 1, batch, device, warmup)
        except torch.OutOfMemoryError:
            if batch <= BATCH:
                raise
        # outside the except block: the failed attempt's tensors are no longer referenced
        torch.cuda.empty_cache()
        batch //= 2
        print(f"    out of memory: bound batch halved to {batch}", flush=True)


def bench_case(
    arch: str,
    shape: tuple[int, int, int],
    device: torch.device,
    *,
    batch: int,
    bound_batch: int,
    repeats: int,
    min_time: float,
    warmup: int,
    fast_path: Trainer | None = None,
    fast_models: int = 8,
    bf16: bool = False,
) -> dict:
    """Every path of one architecture, measured interleaved ``repeats`` times."""
    from saliency_fingerprints.training import numeric_precision

    paths: dict[str, TrainingPath] = {}
    bound_of: dict[str, str] = {}
    with numeric_precision(False):
        paths["eager"] = TrainingPath(
            "eager step", "fp32", eager_trainer, arch, shape, 1, batch, device, warmup
        )
        paths["bound"] = set_up_bound(
            "bound (large batch)", "fp32", eager_trainer, arch, shape, bound_batch, device, warmup
        )
        bound_of.update(eager="bound", bound="bound")
        if fast_path is not None:
            n = fast_models
            paths["eager_loop"] = TrainingPath(
                f"eager loop over {n} models",
                "fp32",
                eager_trainer,
                arch,
                shape,
                n,
                batch,
                device,
                warmup,
            )
            paths["fast_path"] = TrainingPath(
                f"fast path `{trainer_name(fast_path)}`",
                "fp32",
                fast_path,
                arch,
                shape,
                n,
                batch,
                device,
                warmup,
            )
            bound_of.update(eager_loop="bound", fast_path="bound")
        if bf16:
            bf16_trainer = functools.partial(eager_trainer, autocast=torch.bfloat16)
            paths["eager_bf16"] = TrainingPath(
                "eager step", "bf16 autocast", bf16_trainer, arch, shape, 1, batch, device, warmup
            )
            paths["bound_bf16"] = set_up_bound(
                "bound (large batch)",
                "bf16 autocast",
                bf16_trainer,
                arch,
                shape,
                paths["bound"].batch,
                device,
                warmup,
            )
            bound_of.update(eager_bf16="bound_bf16", bound_bf16="bound_bf16")
        for _ in range(repeats):
            for path in paths.values():
                path.measure(min_time)
    out = {}
    for name, path in paths.items():
        bound = paths[bound_of[name]]
        primary = [r["primary"] for r in path.rates]
        fractions = [
            r["primary"] / b["primary"] for r, b in zip(path.rates, bound.rates, strict=True)
        ]
        out[name] = {
            "label": path.label,
            "precision": path.precision,
            "models": path.n_models,
            "batch": path.batch,
            "steps_per_call": path.steps_per_call,
            "images_per_s": summary(primary),
            "images_per_s_wall": summary([r["wall"] for r in path.rates]),
            "fraction_of_bound": summary(fractions),
        }
        print(
            f"    {arch:10s} {path.label:28s} {path.precision:13s} "
            f"{path.n_models:3d} x {path.batch:5d} {median(primary):10.1f} images/s  "
            f"{median(fractions):.2f} of the bound",
            flush=True,
        )
    for path in paths.values():
        path.release()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "paths": out,
        "warmup_steps": warmup,
        "fast_path": trainer_name(fast_path) if fast_path is not None else None,
    }


def bench_gpu_training(
    device: torch.device,
    *,
    repeats: int,
    min_time: float,
    archs: Sequence[str] | None = None,
    cases: dict[str, tuple[int, int, int]] | None = None,
    batch: int = BATCH,
    bound_batch: int | None = None,
    warmup: int | None = None,
    fast_path: Trainer | None = None,
    fast_models: int = 8,
    bf16: bool = False,
) -> dict:
    """The ``gpu-training`` section: :func:`bench_case` for each case (``cases``, default
    :data:`CASES`, restricted to ``archs`` when given), keyed ``"<arch> <C>x<H>x<W>"``.

    Defaults on a GPU: bound batch 8192, 10 warm-up steps; on a CPU: 512 and 2.
    """
    cuda = device.type == "cuda"
    if bound_batch is None:
        bound_batch = 8192 if cuda else 512
    if warmup is None:
        warmup = 10 if cuda else 2
    results = {}
    for arch, shape in (cases or CASES).items():
        if archs is not None and arch not in archs:
            continue
        key = f"{arch} {'x'.join(map(str, shape))}"
        results[key] = bench_case(
            arch,
            shape,
            device,
            batch=batch,
            bound_batch=max(batch, bound_batch),
            repeats=repeats,
            min_time=min_time,
            warmup=warmup,
            fast_path=fast_path,
            fast_models=fast_models,
            bf16=bf16,
        )
    return results


def stacked_trainer(models: Sequence[nn.Module], batch: Batch, *, cuda_graphs: bool = True) -> Step:
    """The workflow's fast path as a :data:`Trainer` (``--fast-path
    benchmarks.gpu_training:stacked_trainer``): the models as one ``torch.func.vmap`` stack
    (:mod:`saliency_fingerprints.stacked`), the whole step - batch gather, forward, backward,
    Adam - one CUDA graph on a GPU after three eager warm-up steps. Each call copies the batch
    into the static buffer the step gathers from, as the training loop's gather does."""
    from saliency_fingerprints.stacked import GraphedStep, StackedModels, TrainStep

    x, y = (t.clone() for t in batch)
    device = x.device
    stack = StackedModels(list(models), device)
    capturable = cuda_graphs and device.type == "cuda"
    extra = {"capturable": True} if capturable else {}
    opt = torch.optim.Adam(list(stack.params.values()), lr=LEARNING_RATE, **extra)
    n = stack.n
    totals = torch.zeros(n, dtype=torch.float64, device=device)
    hits = torch.zeros(n, dtype=torch.float64, device=device)
    step = TrainStep(stack, opt, x, y, None, totals, hits)
    index = torch.arange(x.shape[1], device=device).expand(n, -1).contiguous()
    run = GraphedStep(step, x.shape[1]) if capturable else step

    def call(xb: torch.Tensor, yb: torch.Tensor) -> None:
        x.copy_(xb)
        y.copy_(yb)
        run(index)

    return call
