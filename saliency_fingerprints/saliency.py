"""Batched saliency engines: where the maps are computed.

Each method is a small class in the spirit of Captum's attribution classes: build it around a
model, call :meth:`SaliencyMethod.attribute` on a batch of images. Unlike Captum's default call,
the gradient evaluations of all images, noise samples and path steps are folded into passes of
``pass_size`` rows, because the throughput of a forward+backward pass depends on its size (on
small CPUs 64 rows ran ~1.7x faster per image than 256). No per-image Python loop touches the
model.

Defaults follow Google PAIR's ``saliency`` library, which the paper used:

* Grad: the plain input gradient of the target logit (signed, all channels).
* SmoothGrad: ``n_samples=25`` noisy copies with noise std ``noise_level * (max(x) - min(x))``
  per image; ``magnitude=True`` averages *squared* gradients.
* Integrated Gradients: zero baseline, ``n_steps=25`` points ``linspace(0, 1, n_steps)`` with
  equal weights (``rule="pair"``), times ``(x - baseline)``. ``riemann_trapezoid`` matches
  Captum's default rule instead.

Noise is drawn from a generator keyed by ``(seed, sample_id)``, so a map does not depend on the
batch or pass it was computed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import ConfigError, DataError
from .runtime import seed_generator

log = logging.getLogger(__name__)


def input_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of each row's target logit w.r.t. that row, and the logits, in one pass.

    ``targets=None`` explains the predicted class (argmax of the same forward pass).
    """
    rows = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(rows)
        if targets is None:
            targets = logits.argmax(dim=1)
        selected = logits.gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(selected, rows)
    return grad, logits.detach()


class SaliencyMethod:
    """Base class: ``attribute(images, targets, sample_ids) -> maps`` (same shape as images).

    ``gradient_evaluations`` is the number of forward+backward rows one map costs (k), so a
    method cannot beat ``limit / k`` maps per second.
    """

    name = "base"
    gradient_evaluations = 1

    def __init__(self, model: nn.Module, pass_size: int = 64) -> None:
        if pass_size < 1:
            raise ConfigError(f"saliency.pass_size must be a positive integer, got {pass_size}")
        self.model = model
        self.pass_size = pass_size

    def params(self) -> dict:
        """The method's parameters, recorded in the store's attributes."""
        return {}

    def attribute(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers shared by the methods -------------------------------------------------------
    def _row_gradients(self, rows: torch.Tensor, row_targets: torch.Tensor) -> torch.Tensor:
        """Input gradients of many rows, ``pass_size`` rows per forward+backward pass."""
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], self.pass_size):
            stop = start + self.pass_size
            out[start:stop], _ = input_gradients(
                self.model, rows[start:stop], row_targets[start:stop]
            )
        return out

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    self.model(images[s : s + self.pass_size]).argmax(1)
                    for s in range(0, images.shape[0], self.pass_size)
                ]
            )


class Gradient(SaliencyMethod):
    """Simonyan et al. (2013): the gradient of the target logit w.r.t. the input."""

    name = "grad"

    def attribute(self, images, targets=None, sample_ids=None):
        maps = torch.empty_like(images)
        for start in range(0, images.shape[0], self.pass_size):
            stop = start + self.pass_size
            batch_targets = None if targets is None else targets[start:stop]
            maps[start:stop], _ = input_gradients(self.model, images[start:stop], batch_targets)
        return maps


class SmoothGrad(SaliencyMethod):
    """Smilkov et al. (2017): gradients averaged over noisy copies of the input."""

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        n_samples: int = 25,
        noise_level: float = 0.15,
        magnitude: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(model, pass_size)
        if n_samples < 1:
            raise ConfigError(f"methods.smoothgrad.n_samples must be >= 1, got {n_samples}")
        if noise_level < 0:
            raise ConfigError(f"methods.smoothgrad.noise_level must be >= 0, got {noise_level}")
        self.n_samples, self.noise_level, self.magnitude, self.seed = (
            n_samples,
            noise_level,
            magnitude,
            seed,
        )
        self.gradient_evaluations = n_samples

    def params(self):
        return {
            "n_samples": self.n_samples,
            "noise_level": self.noise_level,
            "magnitude": self.magnitude,
            "seed": self.seed,
        }

    def noise(self, images: torch.Tensor, sample_ids: Sequence[int]) -> torch.Tensor:
        """Standard-normal noise, ``(batch, n_samples, *image)``, keyed by sample id."""
        shape = (self.n_samples, *images.shape[1:])
        return torch.stack(
            [torch.randn(shape, generator=seed_generator(self.seed, int(i))) for i in sample_ids]
        ).to(images.device)

    def attribute(self, images, targets=None, sample_ids=None):
        batch = images.shape[0]
        if sample_ids is None:
            sample_ids = range(batch)
        if targets is None:
            targets = self.predict(images)
        flat = images.flatten(1)
        spread = (flat.max(1).values - flat.min(1).values) * self.noise_level
        stdev = spread.view(batch, 1, *([1] * (images.dim() - 1)))
        rows = images.unsqueeze(1) + self.noise(images, sample_ids) * stdev
        rows = rows.reshape(batch * self.n_samples, *images.shape[1:])
        grads = self._row_gradients(rows, targets.repeat_interleave(self.n_samples))
        grads = grads.view(batch, self.n_samples, *images.shape[1:])
        if self.magnitude:
            grads = grads * grads
        return grads.mean(dim=1)


IG_RULES = ("pair", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


def path_points(n_steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alpha`` on [0, 1] and weights (summing to 1) of an integration rule."""
    if rule == "pair":  # PAIR: linspace(0, 1, n) with equal weights
        return torch.linspace(0, 1, n_steps), torch.full((n_steps,), 1.0 / n_steps)
    if rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ConfigError("methods.integrated_gradients.n_steps must be >= 2 for trapezoid")
        weights = torch.full((n_steps,), 1.0 / (n_steps - 1))
        weights[0] = weights[-1] = 0.5 / (n_steps - 1)
        return torch.linspace(0, 1, n_steps), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}.get(rule)
    if offset is None:
        raise ConfigError(
            f"methods.integrated_gradients.rule {rule!r} is unknown; expected one of {IG_RULES}"
        )
    return (torch.arange(n_steps) + offset) / n_steps, torch.full((n_steps,), 1.0 / n_steps)


class IntegratedGradients(SaliencyMethod):
    """Sundararajan et al. (2017): path-integrated gradients from a baseline to the input."""

    name = "integrated_gradients"
    BASELINES = ("zero", "min")

    def __init__(
        self,
        model: nn.Module,
        pass_size: int = 64,
        n_steps: int = 25,
        baseline: str = "zero",
        rule: str = "pair",
    ) -> None:
        super().__init__(model, pass_size)
        if n_steps < 1:
            raise ConfigError(f"methods.integrated_gradients.n_steps must be >= 1, got {n_steps}")
        if baseline not in self.BASELINES:
            raise ConfigError(
                f"methods.integrated_gradients.baseline {baseline!r} is unknown; "
                f"expected one of {self.BASELINES}"
            )
        self.alphas, self.weights = path_points(n_steps, rule)
        self.n_steps, self.baseline, self.rule = n_steps, baseline, rule
        self.gradient_evaluations = n_steps

    def params(self):
        return {"n_steps": self.n_steps, "baseline": self.baseline, "rule": self.rule}

    def baseline_of(self, images: torch.Tensor) -> torch.Tensor:
        if self.baseline == "zero":
            return torch.zeros_like(images)
        # "min": a constant image at each image's minimum (a black image for [0, 1] inputs
        # whatever preprocessing shifts them; Kindermans et al. 2017).
        low = images.flatten(1).min(1).values.view(-1, *([1] * (images.dim() - 1)))
        return low.expand_as(images).clone()

    def attribute(self, images, targets=None, sample_ids=None):
        batch = images.shape[0]
        if targets is None:
            targets = self.predict(images)
        base = self.baseline_of(images)
        diff = images - base
        alphas = self.alphas.to(images.device, images.dtype)
        weights = self.weights.to(images.device, images.dtype)
        shape = (1, self.n_steps, *([1] * (images.dim() - 1)))
        rows = base.unsqueeze(1) + alphas.view(shape) * diff.unsqueeze(1)
        rows = rows.reshape(batch * self.n_steps, *images.shape[1:])
        grads = self._row_gradients(rows, targets.repeat_interleave(self.n_steps))
        grads = grads.view(batch, self.n_steps, *images.shape[1:])
        return (grads * weights.view(shape)).sum(dim=1) * diff


METHODS: dict[str, type[SaliencyMethod]] = {
    "grad": Gradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
}

SHORT_NAMES = {
    "grad": "Grad",
    "smoothgrad": "SG",
    "integrated_gradients": "IG",
    "meaningful_perturbation": "MP",
}


def build_method(name: str, model: nn.Module, params: dict, pass_size: int) -> SaliencyMethod:
    """Instantiate a registered method with its config parameters."""
    if name not in METHODS:
        raise ConfigError(
            f"saliency method {name!r} is unknown; expected one of: {', '.join(sorted(METHODS))}"
        )
    try:
        return METHODS[name](model, pass_size=pass_size, **params)
    except TypeError as err:
        raise ConfigError(f"methods.{name}: {err}") from None


# -- the saliency job: a dataset and a primary in, a chunked map store out ---------------------


def select_images(split: np.ndarray, which: str, max_images: int | None, seed: int) -> np.ndarray:
    """Sample ids that get maps: a split (or all), optionally a seeded random subset of it."""
    if which not in ("all", "train", "test"):
        raise ConfigError(f"saliency.images must be 'all', 'train' or 'test', got {which!r}")
    ids = np.arange(len(split)) if which == "all" else np.flatnonzero(split == which)
    if max_images is not None:
        if max_images < 1:
            raise ConfigError(f"saliency.max_images must be a positive integer, got {max_images}")
        if max_images < len(ids):
            ids = np.sort(np.random.default_rng([seed, 0x1A6E]).choice(ids, max_images, False))
    return ids


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_saliency_maps(
    dataset_path: str | Path,
    weights_path: str | Path,
    out: str | Path,
    method: str,
    method_params: dict,
    cfg: dict,
    primary: str,
    device: torch.device,
    threads: int | None = None,
) -> None:
    """Compute one method's maps for one primary and stream them into a Zarr store.

    Images are read chunk by chunk from the dataset store and maps are written chunk by chunk,
    so peak memory depends on ``chunk_size`` and ``pass_size``, not on the number of images.
    """
    from .datasets import open_dataset
    from .provenance import Provenance, as_attr
    from .runtime import describe_device, set_determinism
    from .store import ChunkedMapWriter, chunk_ranges
    from .training import load_model

    config = {"method": method, "method_params": method_params, **cfg}
    prov = Provenance("compute_saliency", {**config, "primary": primary}, describe_device(device))
    set_determinism(int(cfg.get("seed", 0)), threads)
    ds, info = open_dataset(dataset_path)
    model = load_model(weights_path, device)
    for p in model.parameters():
        p.requires_grad_(False)
    engine = build_method(method, model, method_params, int(cfg["pass_size"]))
    ids = select_images(
        ds["split"].values, cfg["images"], cfg.get("max_images"), int(cfg.get("seed", 0))
    )
    target_mode = cfg["target"]
    if target_mode not in ("true", "predicted"):
        raise ConfigError(f"saliency.target must be 'true' or 'predicted', got {target_mode!r}")
    chunk_size = int(cfg["chunk_size"])
    if chunk_size < 1:
        raise ConfigError(f"saliency.chunk_size must be a positive integer, got {chunk_size}")
    labels = ds["label"].values[ids].astype(np.int64)
    n = len(ids)
    shape = (n, info.channels, info.image_size, info.image_size)
    coords = {
        "sample": ("sample", ids.astype(np.int64)),
        "label": ("sample", labels),
        "split": ("sample", ds["split"].values[ids].astype("<U5")),
        "target": ("sample", np.full(n, -1, dtype=np.int64)),
        "prediction": ("sample", np.full(n, -1, dtype=np.int64)),
        "primary": primary,
        "method": method,
    }
    attrs = {
        "method_params": json.dumps(engine.params(), sort_keys=True),
        "target_mode": target_mode,
        "dataset": str(dataset_path),
    }
    fingerprint = hashlib.sha256(
        json.dumps(
            [config, primary, _file_digest(Path(weights_path)), ds.attrs.get("provenance", "")],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    images_var = ds["image"]
    start_time = time.perf_counter()
    with ChunkedMapWriter(
        out, shape, chunk_size, coords, attrs, fingerprint, dtype=cfg.get("dtype", "float32")
    ) as writer:
        done = writer.done_chunks
        if done:
            log.info(
                "%s/%s: resuming, %d of %d chunks already written",
                primary,
                method,
                len(done),
                writer.n_chunks,
            )
        bar = tqdm(
            total=n,
            desc=f"{method} {primary}",
            unit="map",
            mininterval=5,
            file=sys.stderr,
            disable=None,
        )
        for index, start, stop in chunk_ranges(n, chunk_size):
            if index in done:
                bar.update(stop - start)
                continue
            chunk_ids = ids[start:stop]
            images = torch.from_numpy(
                images_var.isel(sample=chunk_ids).values.astype(np.float32)
            ).to(device)
            with torch.no_grad():
                preds = engine.predict(images)
            targets = (
                preds
                if target_mode == "predicted"
                else torch.from_numpy(labels[start:stop]).to(device)
            )
            maps = engine.attribute(images, targets, sample_ids=chunk_ids.tolist())
            if not torch.isfinite(maps).all():
                raise DataError(f"{out}: {method} produced NaN/inf maps for {primary}")
            writer.write_chunk(
                index,
                maps.cpu().numpy(),
                {"target": targets.cpu().numpy(), "prediction": preds.cpu().numpy()},
            )
            bar.update(stop - start)
        bar.close()
        elapsed = time.perf_counter() - start_time
        writer.final_attrs["provenance"] = as_attr(
            prov.finish(
                n_maps=n,
                maps_per_second=round(n / max(elapsed, 1e-9), 2),
                gradient_evaluations_per_map=engine.gradient_evaluations,
            )
        )
    log.info("%s/%s: %d maps in %.1fs", primary, method, n, time.perf_counter() - start_time)


def open_maps(path: str | Path):
    """Open a map store as an xarray dataset (lazy) and check its layout."""
    from .store import MAP_DIMS, open_store

    ds = open_store(path)
    if "maps" not in ds or tuple(ds["maps"].dims) != MAP_DIMS:
        raise DataError(f"{path}: expected a 'maps' variable with dims {MAP_DIMS}")
    return ds
