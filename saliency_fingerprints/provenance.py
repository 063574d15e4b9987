"""Provenance attached to every store and table: config subset, code and package versions,
device, the CPU and the kernels torch picked for it, wall time."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
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


def cpu_info() -> dict[str, str]:
    """The CPU's model name and, where this process has imported torch, the instruction set of
    the CPU kernels torch uses (``AVX512``, ``AVX2``, ...). Float rounding, and so the bits of a
    CPU run's results, can differ between kernels: a rerun matches bit for bit only on the same
    ones (docs/results/cifar10-cpu/rerun_check.md). Jobs without torch (tables, figures) do
    not import it for this."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"model": model}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["kernels"] = str(torch.backends.cpu.get_cpu_capability())
    return info


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
            "cpu": cpu_info(),
            "device": self.device,
            "wall_time_s": round(time.perf_counter() - self._start, 3),
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        record.update(extra)
        return record


def as_attr(record: dict) -> str:
    """Provenance as one JSON string (Zarr/xarray attributes must be flat and portable)."""
    return json.dumps(record, sort_keys=True, default=str)
