"""What every training or map-making stage does first and last, in one place.

A stage starts its provenance record (its name, the config it depends on, the device as
described at that moment), then seeds Python, NumPy and torch and asks for deterministic kernels;
it ends by stamping its metrics with the finished provenance and writing them as JSON::

    stage = Stage("train_primary", {...}, device, seed=seed, threads=threads)
    ...
    stage.write_metrics(metrics_out, metrics)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .provenance import Provenance
from .runtime import describe_device, set_determinism
from .store import write_json


class Stage:
    """A stage's provenance record, started on construction; with ``seed``, determinism set
    (after the device is described, so the record names the thread count the stage was given)."""

    def __init__(
        self,
        name: str,
        config: dict,
        device: torch.device,
        *,
        seed: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.device = device
        self.provenance = Provenance(name, config, describe_device(device))
        if seed is not None:
            set_determinism(seed, threads)

    @property
    def device_line(self) -> str:
        """The device as it is now, for log lines."""
        return describe_device(self.device)

    def finish(self, **extra) -> dict:
        """The finished provenance record (wall time so far), with ``extra`` keys."""
        return self.provenance.finish(**extra)

    def write_metrics(self, path: str | Path, metrics: dict, **extra) -> dict:
        """``metrics`` with its ``provenance`` (finished now), written to ``path`` as JSON."""
        metrics["provenance"] = self.finish(**extra)
        write_json(path, metrics)
        return metrics
