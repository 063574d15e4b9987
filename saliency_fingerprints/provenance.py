"""Provenance attached to every store and table: config subset, code and package versions,
device, wall time."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from . import __version__

PACKAGES = ("torch", "numpy", "zarr", "xarray", "captum", "pandas", "snakemake")


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Provenance:
    """Collects what a job's output depends on; ``finish()`` returns a JSON-able record."""

    def __init__(self, stage: str, config: dict, device: str = "cpu") -> None:
        self.stage = stage
        self.config = config
        self.device = device
        self._start = time.perf_counter()

    def finish(self, **extra) -> dict:
        record = {
            "stage": self.stage,
            "config": self.config,
            "code_version": f"saliency-fingerprints {__version__} ({_git_commit()})",
            "packages": package_versions(),
            "python": platform.python_version(),
            "host": platform.node(),
            "device": self.device,
            "wall_time_s": round(time.perf_counter() - self._start, 3),
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        record.update(extra)
        return record


def as_attr(record: dict) -> str:
    """Provenance as one JSON string (Zarr/xarray attributes must be flat and portable)."""
    return json.dumps(record, sort_keys=True, default=str)
