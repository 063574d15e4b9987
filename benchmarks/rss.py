"""Peak RSS of a saliency job (``compute_saliency_maps``, :mod:`benchmarks.rss_job`) on N and
10N images, each job in a subprocess of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import PAIR, REPO, SHAPES, frozen_model, summary
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import build_method, tune_pass_size


def synthetic_inputs(workdir: Path, n: int, shape, arch: str) -> tuple[Path, Path]:
    import xarray as xr

    from saliency_fingerprints.store import write_dataset
    from saliency_fingerprints.training import save_model

    rng = np.random.default_rng(n)
    images = rng.random((n, *shape), dtype=np.float32)
    ds = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), images)},
        coords={
            "sample": np.arange(n, dtype=np.int64),
            "label": ("sample", rng.integers(0, 10, n).astype(np.int64)),
            "split": ("sample", np.where(np.arange(n) % 5 == 0, "test", "train").astype("<U5")),
        },
        attrs={"classes": json.dumps([str(c) for c in range(10)]), "provenance": "benchmark"},
    )
    dataset = workdir / f"data-{n}-{shape[0]}x{shape[1]}.zarr"
    write_dataset(ds, dataset, chunks={"image": 1024})
    torch.manual_seed(0)
    weights = workdir / f"{arch}-{shape[0]}x{shape[1]}.safetensors"
    save_model(build_model(arch, shape[0], shape[1], 10), weights, arch, shape[0], shape[1], 10)
    return dataset, weights


def job_command(dataset, weights, out, method, params, n, device, threads, cfg) -> list[str]:
    """The command line of one job (:mod:`benchmarks.rss_job`)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.rss_job",
        "--dataset",
        str(dataset),
        "--weights",
        str(weights),
        "--out",
        str(out),
        "--method",
        method,
        "--params",
        json.dumps(params),
        "--config",
        json.dumps(cfg),
        "--device",
        str(device),
        "--threads",
        str(threads),
        "--images",
        str(n),
    ]


def job_env() -> dict[str, str]:
    """The job's environment: this one, with the repository first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_job(workdir, dataset, weights, method, params, n, device, threads, pass_size) -> dict:
    cfg = {"images": "all", "target": "predicted", "pass_size": pass_size, "chunk_size": 256}
    out = workdir / f"maps-{method}-{n}-{time.monotonic_ns()}.zarr"
    proc = subprocess.Popen(
        job_command(dataset, weights, out, method, params, n, device, threads, cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=job_env(),
    )
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"saliency job failed ({proc.returncode}):\n{stderr[-3000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    # The child's own high-water mark (VmHWM). getrusage's ru_maxrss (RUSAGE_CHILDREN or wait4)
    # would report the *parent's* size when that is larger: Linux carries the RSS of the forked
    # copy of the parent across exec into the child's maxrss.
    return {
        "peak_rss_MB": record["vmhwm_kB"] / 1024,
        "seconds": record["seconds"],
        "maps_per_s": n / record["seconds"],
    }


def bench_rss(device, workdir: Path, threads: int, *, images: int, repeats: int) -> dict:
    """Grad on CIFAR-sized and SmoothGrad on 8x8 images with cnn2: peak RSS at ``images`` and
    10 x ``images`` images (``repeats - 1`` jobs each on a CPU, one on a GPU)."""
    cases = [
        ("grad", {}, SHAPES["cifar"], "cnn2"),
        ("smoothgrad", PAIR["smoothgrad"], SHAPES["digits"], "cnn2"),
    ]
    results = {}
    for method, params, shape, arch in cases:
        # One pass size for both jobs: the one `auto` picks for the larger job. (With `auto` a
        # small job may pick a smaller pass, hence less memory: that is not growth with N.)
        k = build_method(method, frozen_model(arch, shape, device), params, 1).gradient_evaluations
        pass_size = tune_pass_size(
            frozen_model(arch, shape, device), shape, device, max_rows=10 * images * k
        )
        row = {"pass_size": pass_size}
        for n in (images, 10 * images):
            dataset, weights = synthetic_inputs(workdir, n, shape, arch)
            jobs = 1 if device.type == "cuda" else max(1, repeats - 1)
            runs = [
                run_job(workdir, dataset, weights, method, params, n, device, threads, pass_size)
                for _ in range(jobs)
            ]
            row[str(n)] = {
                "peak_rss_MB": summary([r["peak_rss_MB"] for r in runs]),
                "maps_per_s": summary([r["maps_per_s"] for r in runs]),
            }
            shutil.rmtree(dataset)
        pass_size = row.pop("pass_size")
        small, large = (row[str(n)]["peak_rss_MB"]["median"] for n in sorted(map(int, row)))
        growth = large / small - 1
        key = f"{method} {arch} {shape[0]}x{shape[1]}x{shape[2]}"
        results[key] = {"by_images": row, "growth": growth, "pass_size": pass_size}
        print(f"    {key}: peak RSS {small:.0f} MB -> {large:.0f} MB ({growth:+.1%})", flush=True)
    return results
