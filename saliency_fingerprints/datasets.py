"""Dataset sources, all ending in one labelled Zarr layout.

The dataset store (``results/data/<name>.zarr``) is an xarray dataset with

* ``image (sample, channel, y, x)`` float32 in [0, 1],
* coordinates ``label (sample)`` (class index), ``split (sample)`` ("train" / "test") and
  ``sample`` (0..N-1, the image's identity everywhere downstream),
* attributes ``classes`` (JSON list of class names), ``source`` and ``provenance``.

A source is a function ``config -> ImageSet`` registered in :data:`SOURCES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import ConfigError, DataError
from .provenance import Provenance, as_attr
from .store import open_store, write_dataset


@dataclass
class ImageSet:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) "train" / "test"
    classes: list[str]

    def validate(self, origin: str) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise DataError(
                f"{origin}: expected square images (N, C, H, W), got {self.images.shape}"
            )
        if self.labels.shape != (n,) or self.split.shape != (n,):
            raise DataError(f"{origin}: labels/split do not match the {n} images")
        if len(np.unique(self.labels)) < 2:
            raise DataError(f"{origin}: the dataset has a single class; at least 2 are needed")
        for part in ("train", "test"):
            if not np.any(self.split == part):
                raise DataError(f"{origin}: the {part!r} split is empty")
        if not np.isfinite(self.images).all():
            raise DataError(f"{origin}: images contain NaN or infinite values")


def random_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded train/test assignment for sources without an official split."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    split = np.full(n, "train", dtype="<U5")
    split[order[: max(1, round(n * test_fraction))]] = "test"
    return split


def load_sklearn_digits(cfg: dict) -> ImageSet:
    """scikit-learn's embedded 1,797 8x8 handwritten digits (values 0..16), offline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    split = random_split(len(labels), cfg.get("test_fraction", 0.2), cfg.get("split_seed", 0))
    return ImageSet(images, labels, split, [str(c) for c in digits.target_names])


SOURCES: dict[str, Callable[[dict], ImageSet]] = {"sklearn_digits": load_sklearn_digits}


def load_source(cfg: dict) -> ImageSet:
    source = cfg.get("source")
    if source not in SOURCES:
        raise ConfigError(
            f"dataset.source {source!r} is unknown; expected one of: {', '.join(sorted(SOURCES))}"
        )
    return SOURCES[source](cfg)


def prepare_dataset(cfg: dict, out: str | Path) -> xr.Dataset:
    """Load the configured source and write the dataset store atomically."""
    prov = Provenance("prepare_dataset", cfg)
    data = load_source(cfg)
    data.validate(f"dataset {cfg.get('name')!r} (source {cfg.get('source')!r})")
    n = data.images.shape[0]
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), data.images.astype(np.float32))},
        coords={
            "sample": np.arange(n, dtype=np.int64),
            "label": ("sample", data.labels.astype(np.int64)),
            "split": ("sample", data.split.astype("<U5")),
        },
        attrs={
            "name": cfg.get("name", ""),
            "source": cfg.get("source", ""),
            "classes": json.dumps(data.classes),
            "provenance": as_attr(prov.finish(n_images=n)),
        },
    )
    write_dataset(ds, out, chunks={"image": 1024})
    return ds


@dataclass
class DatasetInfo:
    n_images: int
    channels: int
    image_size: int
    classes: list[str]


def open_dataset(path: str | Path) -> tuple[xr.Dataset, DatasetInfo]:
    """Open a dataset store and check it has the expected layout."""
    ds = open_store(path)
    for name in ("image", "label", "split"):
        if name not in ds.variables:
            raise DataError(f"{path}: dataset store has no {name!r} variable")
    n, c, h, w = ds["image"].shape
    return ds, DatasetInfo(n, c, h, json.loads(ds.attrs.get("classes", "[]")))
