"""What every section shares: the cases, clocks, summaries of repeats, the machine's description."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import synchronize

REPO = Path(__file__).resolve().parents[1]

SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}
MODELS = ("cnn2", "minicnn", "miniresnet")
PAIR = {
    "grad": {},
    "smoothgrad": {"n_samples": 25, "noise_level": 0.15, "magnitude": True, "seed": 0},
    "integrated_gradients": {"n_steps": 25, "baseline": "zero", "rule": "pair"},
}
PACKAGES = ("torch", "numpy", "zarr", "xarray", "captum", "safetensors")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> float:
    """(max - min) / median: how noisy the repeats were."""
    mid = median(values)
    return float((max(values) - min(values)) / mid) if mid else 0.0


def summary(values: list[float]) -> dict:
    return {"median": median(values), "spread": spread(values), "runs": [float(v) for v in values]}


def timed(call, device: torch.device, min_time: float, min_calls: int = 1) -> dict:
    """Seconds per call of ``call()`` by the wall clock and by this process's CPU time.

    On a CPU the process's CPU time is the figure we judge by: on a machine shared with other
    jobs, wall time also counts the time the scheduler gave to others. The call repeats until
    ``min_time`` seconds of that clock have elapsed. On a GPU only the wall clock means anything.
    """
    cpu = device.type == "cpu"
    calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        call()
        calls += 1
        synchronize(device)
        wall, used = time.perf_counter() - wall0, time.process_time() - cpu0
        if (used if cpu else wall) >= min_time and calls >= min_calls:
            primary = used if cpu else wall
            return {"wall": wall / calls, "cpu": used / calls, "primary": primary / calls}


def frozen_model(arch: str, shape: tuple[int, int, int], device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(arch, shape[0], shape[1], 10).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def machine_info(device: torch.device, threads: int) -> dict:
    info = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": str(device),
        "packages": {},
    }
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = "not installed"
    info["packages"]["torch"] = torch.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
