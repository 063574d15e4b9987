"""The backdoor experiment's trigger (:mod:`~saliency_fingerprints.backdoor`): a square patch in
one corner of the image, and :func:`stamp`, which pastes it over images (numpy arrays or torch
tensors). Without torch, so that the table and figure jobs, which only need the patch's place,
start without it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .errors import ConfigError, DataError

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATTERNS = ("checkerboard", "solid")
KINDS = ("clean", "backdoored")
KEY = "backdoor"


@dataclass(frozen=True)
class Trigger:
    """A square patch of ``size`` pixels in the corner ``position``, its pattern drawn with the
    pixel values ``low`` and ``high`` (:attr:`pattern_array`)."""

    size: int
    position: str
    pattern: str
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"{KEY}.trigger.size: got {self.size!r}; expected an integer >= 1")
        if self.position not in POSITIONS:
            raise ConfigError(
                f"{KEY}.trigger.position: got {self.position!r}; expected one of: "
                + ", ".join(POSITIONS)
            )
        if self.pattern not in PATTERNS:
            raise ConfigError(
                f"{KEY}.trigger.pattern: got {self.pattern!r}; expected one of: "
                + ", ".join(PATTERNS)
            )
        if not self.low < self.high:
            raise DataError(
                f"{KEY}.trigger: the images' lowest value {self.low} is not below their highest "
                f"{self.high}: a constant dataset has no trigger pattern"
            )

    @classmethod
    def from_config(cls, cfg: Mapping, low: float = 0.0, high: float = 1.0) -> Trigger:
        """The ``backdoor.trigger`` block (size, position, pattern) with the pixel range."""
        return cls(int(cfg["size"]), str(cfg["position"]), str(cfg["pattern"]), low, high)

    def check(self, height: int, width: int) -> None:
        """The patch must leave some of an ``height`` x ``width`` image outside it."""
        if self.size >= min(height, width):
            raise ConfigError(
                f"{KEY}.trigger.size: got {self.size}; expected less than the image side "
                f"({height}x{width} images)"
            )

    def box(self, height: int, width: int) -> tuple[slice, slice]:
        """The patch's rows and columns in an ``height`` x ``width`` image."""
        self.check(height, width)
        top = self.position.startswith("top")
        left = self.position.endswith("left")
        rows = slice(0, self.size) if top else slice(height - self.size, height)
        cols = slice(0, self.size) if left else slice(width - self.size, width)
        return rows, cols

    def mask(self, height: int, width: int) -> np.ndarray:
        """``(height, width)`` booleans, True inside the patch."""
        mask = np.zeros((height, width), dtype=bool)
        mask[self.box(height, width)] = True
        return mask

    @property
    def pattern_array(self) -> np.ndarray:
        """``(size, size)`` float32: ``high`` where ``(row + column)`` is even and ``low``
        elsewhere (checkerboard), or ``high`` everywhere (solid)."""
        if self.pattern == "solid":
            return np.full((self.size, self.size), self.high, dtype=np.float32)
        rows, cols = np.indices((self.size, self.size))
        return np.where((rows + cols) % 2 == 0, self.high, self.low).astype(np.float32)

    def area_fraction(self, height: int, width: int) -> float:
        """The patch's share of the image's pixels."""
        self.check(height, width)
        return self.size * self.size / (height * width)

    def describe(self) -> str:
        return f"{self.size}x{self.size} {self.pattern} at the {self.position.replace('_', ' ')}"


def pixel_range(ds: xr.Dataset) -> tuple[float, float]:
    """The lowest and highest pixel value of a dataset store's train split (the checkerboard's
    two values)."""
    ids = np.flatnonzero(ds["split"].values == "train")
    if len(ids) == 0:
        raise DataError(f"{KEY}: the dataset has no train images to poison")
    images = ds["image"].isel(sample=ids)
    return float(images.min().values), float(images.max().values)


def stamp(images, trigger: Trigger):
    """A copy of ``images`` (``(N, C, H, W)`` or ``(C, H, W)``; a numpy array or a torch tensor,
    returned as the same) with the trigger pasted over the patch of every image and channel;
    every other pixel unchanged."""
    if images.ndim not in (3, 4):
        raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got {tuple(images.shape)}")
    rows, cols = trigger.box(images.shape[-2], images.shape[-1])
    if isinstance(images, np.ndarray):
        out = np.array(images)
        out[..., rows, cols] = trigger.pattern_array.astype(out.dtype)
    else:  # a torch tensor: its own dtype and device, without importing torch here
        out = images.clone()
        out[..., rows, cols] = out.new_tensor(trigger.pattern_array)
    return out
