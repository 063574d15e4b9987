"""Benchmark suite: saliency engines against the hardware limit, training, Zarr I/O, peak RSS.

One command (from the repository root; not part of CI's tests)::

    .venv/bin/python benchmarks/run.py            # full suite, ~10 min on 2 busy CPU cores
    .venv/bin/python benchmarks/run.py --quick    # smoke run, ~2 min
    .venv/bin/python benchmarks/run.py --report   # only rewrite BENCHMARKS.md from the JSON

Each run writes ``benchmarks/results/<device>-<UTC time>.json`` (gitignored) and rewrites
``BENCHMARKS.md`` from the newest full (non-quick) result of each device kind (CPU, CUDA; a quick
result is used only where no full one exists).

What is measured, per model (cnn2, minicnn, miniresnet) at CIFAR size (3x32x32) and digits size
(1x8x8), on the device at hand:

* **limit**: rows per second of one forward+backward pass to the input (parameters frozen, the
  target logit's gradient), for every candidate pass size; the best is the limit. A method
  needing k gradient evaluations per map cannot beat ``limit / k`` maps per second.
* **saliency**: maps/s of Grad, SmoothGrad (25 samples), IG (25 steps) with our engine
  (``pass_size: auto``) and with Captum's default call on the same images and targets, and
  Meaningful Perturbation (fewer iterations than the paper, to keep the suite short; MP is not in
  Captum). Limit, engine and Captum are measured interleaved, once per repeat, and the ratio
  ``engine / (limit / k)`` is taken per repeat, so slow drifts of a shared machine's load cancel.
* **training**: images/s of ``train_classifier`` (primaries: each architecture on 10 classes;
  secondary: MiniCNN on 1x32x32 maps, 2 classes), per-epoch evaluation included; on CUDA also the
  opt-in ``channels_last``, ``tf32`` and ``autocast: bf16`` options.
* **zarr**: ``ChunkedMapWriter`` (the pipeline's map writer) against ``np.save`` and a raw
  ``tofile`` of the same bytes; random mini-batch reads from Zarr against a memory-mapped .npy.
* **rss**: peak RSS of ``compute_saliency_maps`` run in a subprocess on N and 10N images.

Every figure is the median of ``--repeats`` runs; the JSON keeps every run, the markdown the
median and the spread ((max - min) / median).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saliency_fingerprints.models import build_model  # noqa: E402
from saliency_fingerprints.runtime import select_device, set_determinism  # noqa: E402
from saliency_fingerprints.saliency import (  # noqa: E402
    METHODS,
    build_method,
    candidate_pass_sizes,
    input_gradients,
    synchronize,
    tune_pass_size,
)

SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}
MODELS = ("cnn2", "minicnn", "miniresnet")
PAIR = {
    "grad": {},
    "smoothgrad": {"n_samples": 25, "noise_level": 0.15, "magnitude": True, "seed": 0},
    "integrated_gradients": {"n_steps": 25, "baseline": "zero", "rule": "pair"},
}
PACKAGES = ("torch", "numpy", "zarr", "xarray", "captum", "safetensors")


# -- small helpers ------------------------------------------------------------------------------


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


def rows_rate(model, rows: torch.Tensor, device: torch.device, min_time: float) -> dict:
    """The limit at one pass size: rows/s of forward+backward to the input (both clocks)."""
    targets = torch.zeros(rows.shape[0], dtype=torch.long, device=device)
    input_gradients(model, rows, targets)  # warm-up
    t = timed(lambda: input_gradients(model, rows, targets), device, min_time)
    return {k: rows.shape[0] / v for k, v in t.items()}


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


# -- the limit ----------------------------------------------------------------------------------


def measure_limit(model, shape, device, sizes, repeats, min_time) -> dict:
    """Rows/s of forward+backward to the input per pass size (interleaved repeats)."""
    runs: dict[int, list[dict]] = {s: [] for s in sizes}
    generator = torch.Generator().manual_seed(1)
    for _ in range(repeats):
        for size in list(runs):
            rows = torch.rand((size, *shape), generator=generator).to(device)
            try:
                runs[size].append(rows_rate(model, rows, device, min_time))
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                runs.pop(size)
    table = {str(s): summary([r["primary"] for r in v]) for s, v in runs.items() if v}
    wall = {str(s): summary([r["wall"] for r in v]) for s, v in runs.items() if v}
    best = max(table, key=lambda s: table[s]["median"])
    return {
        "by_pass_size": table,
        "by_pass_size_wall": wall,
        "best_pass_size": int(best),
        "rows_per_s": table[best],
    }


# -- saliency: our engine vs Captum --------------------------------------------------------------


def captum_call(method: str, model, images, targets):
    """Captum's default call for the same work (NOTES.md): everything in one call, no internal
    batching; PAIR's SmoothGrad is Captum's smoothgrad_sq with an absolute std."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    if method == "grad":
        return lambda: Saliency(model).attribute(images, target=targets, abs=False)
    if method == "smoothgrad":
        stdev = float(0.15 * (images.max() - images.min()))
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            images, nt_type="smoothgrad_sq", nt_samples=25, stdevs=stdev, target=targets, abs=False
        )
    if method == "integrated_gradients":
        return lambda: IntegratedGradients(model).attribute(
            images, baselines=0.0, target=targets, n_steps=25, method="riemann_trapezoid"
        )
    return None


def bench_saliency(model, shape, device, limit: dict, args, mp_iterations: int) -> dict:
    """Maps/s of each method with our engine and Captum, interleaved with the limit."""
    try:
        import captum  # noqa: F401

        have_captum = True
    except ImportError:
        have_captum = False
    pass_size = tune_pass_size(model, shape, device)
    best = limit["best_pass_size"]
    rate = limit["rows_per_s"]["median"]
    # rows per call: about args.work seconds at the limit, at least 4 of the best passes where
    # memory allows (Captum's default call puts them all in one pass)
    budget = (64 << 20) if device.type == "cuda" else (24 << 20)
    max_rows = max(4 * best, budget // (math.prod(shape) * 4))
    methods = dict(PAIR)
    if "meaningful_perturbation" in METHODS:
        methods["meaningful_perturbation"] = {"iterations": mp_iterations}
    generator = torch.Generator().manual_seed(2)
    out = {"pass_size_auto": pass_size, "methods": {}}
    for method, params in methods.items():
        engine = build_method(method, model, params, pass_size)
        k = engine.gradient_evaluations
        if method == "meaningful_perturbation":  # one group of masks per call
            n = max(8, min(pass_size, 1024))
        else:
            n = max(8, int(min(rate * args.work, max_rows) // k))
        images = torch.rand((n, *shape), generator=generator).to(device)
        with torch.no_grad():
            targets = model(images).argmax(1)
        ids = list(range(n))
        rows = torch.rand((best, *shape), generator=generator).to(device)

        def ours(engine=engine, images=images, targets=targets, ids=ids):
            return engine.attribute(images, targets, ids)

        theirs = captum_call(method, model, images, targets) if have_captum else None
        record = {"limit": [], "engine": [], "captum": []}
        wall = {"limit": [], "engine": [], "captum": []}
        ours()  # warm-up
        for _ in range(args.repeats):
            lim = rows_rate(model, rows, device, args.min_time)
            record["limit"].append(lim["primary"])
            wall["limit"].append(lim["wall"])
            t = timed(ours, device, args.min_time)
            record["engine"].append(n / t["primary"])
            wall["engine"].append(n / t["wall"])
            if theirs is not None:
                try:
                    t = timed(theirs, device, args.min_time)
                    record["captum"].append(n / t["primary"])
                    wall["captum"].append(n / t["wall"])
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    theirs = None
        ratios = [e / (lim / k) for e, lim in zip(record["engine"], record["limit"], strict=True)]
        wall_ratios = [e / (lim / k) for e, lim in zip(wall["engine"], wall["limit"], strict=True)]
        entry = {
            "k": k,
            "params": engine.params(),
            "images_per_call": n,
            "limit_rows_per_s": summary(record["limit"]),
            "limit_over_k": median(record["limit"]) / k,
            "engine_maps_per_s": summary(record["engine"]),
            "ratio_to_limit": summary(ratios),
            "wall": {
                "limit_rows_per_s": summary(wall["limit"]),
                "engine_maps_per_s": summary(wall["engine"]),
                "ratio_to_limit": summary(wall_ratios),
            },
        }
        if record["captum"]:
            vs = [e / c for e, c in zip(record["engine"], record["captum"], strict=False)]
            entry["captum_maps_per_s"] = summary(record["captum"])
            entry["engine_over_captum"] = summary(vs)
            entry["wall"]["captum_maps_per_s"] = summary(wall["captum"])
        out["methods"][method] = entry
        print(
            f"    {method:22s} k={k:3d} engine {median(record['engine']):9.1f} maps/s  "
            f"ratio {median(ratios):.3f}"
            + (
                f"  captum {median(record['captum']):9.1f} maps/s"
                if record["captum"]
                else "  captum n/a"
            ),
            flush=True,
        )
    return out


# -- training -----------------------------------------------------------------------------------


def bench_training(device, args) -> dict:
    from saliency_fingerprints.training import TrainSettings, train_classifier

    n_train = args.train_images
    cases = [(f"primary {a}", a, SHAPES["cifar"], 10) for a in MODELS]
    cases += [(f"primary {a} (digits)", a, SHAPES["digits"], 10) for a in MODELS]
    cases.append(("secondary minicnn", "minicnn", (1, 32, 32), 2))
    options = [("default", {})]
    if device.type == "cuda":
        options += [
            ("channels_last", {"channels_last": True}),
            ("tf32", {"tf32": True}),
            ("bf16 autocast", {"autocast": "bf16"}),
            ("all three", {"channels_last": True, "tf32": True, "autocast": "bf16"}),
        ]
    elif not args.quick:
        options.append(("channels_last", {"channels_last": True}))
    results = {}
    generator = torch.Generator().manual_seed(3)
    for label, arch, shape, classes in cases:
        x = torch.rand((n_train, *shape), generator=generator).to(device)
        y = torch.randint(0, classes, (n_train,), generator=generator).to(device)
        xt, yt = x[: n_train // 8], y[: n_train // 8]
        for option, extra in options:
            if option != "default" and (
                "digits" in label or arch != "minicnn" and "resnet" not in arch
            ):
                continue  # the options on MiniCNN (secondary) and MiniResNet at 32x32 only
            settings = TrainSettings(1, 64, 1e-3, **extra)
            runs, walls = [], []
            for repeat in range(args.repeats):
                torch.manual_seed(repeat)
                model = build_model(arch, shape[0], shape[1], classes).to(device)
                train_classifier(model, (x[:256], y[:256]), (xt, yt), settings, 0)  # warm-up
                synchronize(device)
                t = timed(
                    lambda: train_classifier(model, (x, y), (xt, yt), settings, repeat),  # noqa: B023
                    device,
                    0.0,
                )
                runs.append(n_train / t["primary"])
                walls.append(n_train / t["wall"])
            results[f"{label} | {option}"] = {
                "images_per_s": summary(runs),
                "images_per_s_wall": summary(walls),
                "train_images": n_train,
                "batch_size": 64,
            }
            print(f"    {label:28s} {option:14s} {median(runs):9.1f} images/s", flush=True)
    return results


# -- Zarr ---------------------------------------------------------------------------------------


def bench_zarr(args, workdir: Path) -> dict:
    import zarr

    from saliency_fingerprints.store import ChunkedMapWriter

    n, chunk = args.zarr_maps, 256
    shape = (n, 3, 32, 32)
    maps = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    nbytes = maps.nbytes
    coords = {
        "sample": ("sample", np.arange(n, dtype=np.int64)),
        "target": ("sample", np.full(n, -1, dtype=np.int64)),
        "prediction": ("sample", np.full(n, -1, dtype=np.int64)),
    }
    extras_zero = np.zeros(chunk, dtype=np.int64)
    runs: dict[str, list[float]] = {k: [] for k in ("zarr_writer", "numpy_save", "raw_tofile")}
    durable: dict[str, list[float]] = {k: [] for k in runs}
    reads: dict[str, list[float]] = {k: [] for k in ("zarr_random", "npy_random", "zarr_chunks")}
    batch = 256
    rng = np.random.default_rng(1)
    for repeat in range(args.repeats):
        base = workdir / f"zarr{repeat}"
        base.mkdir()

        def write_zarr(base=base):
            with ChunkedMapWriter(base / "maps.zarr", shape, chunk, coords, {}, "b") as writer:
                for index, first in enumerate(range(0, n, chunk)):
                    part = maps[first : first + chunk]
                    extra = extras_zero[: len(part)]
                    writer.write_chunk(index, part, {"target": extra, "prediction": extra})

        writes = {
            "zarr_writer": write_zarr,
            "numpy_save": lambda base=base: np.save(base / "maps.npy", maps),
            "raw_tofile": lambda base=base: maps.tofile(base / "maps.raw"),
        }
        order = list(writes) if repeat % 2 == 0 else list(reversed(writes))
        for name in order:
            os.sync()  # every write starts with no dirty pages of the others to flush
            start = time.perf_counter()
            writes[name]()
            runs[name].append(nbytes / (time.perf_counter() - start))
            os.sync()  # durable: until the bytes are on the disk
            durable[name].append(nbytes / (time.perf_counter() - start))

        array = zarr.open_array(base / "maps.zarr" / "maps", mode="r")
        mapped = np.load(base / "maps.npy", mmap_mode="r")
        batches = [np.sort(rng.choice(n, batch, replace=False)) for _ in range(4)]
        start = time.perf_counter()
        for idx in batches:
            got = array.get_orthogonal_selection((idx, slice(None), slice(None), slice(None)))
        reads["zarr_random"].append(len(batches) / (time.perf_counter() - start))
        start = time.perf_counter()
        for idx in batches:
            ref = np.asarray(mapped[idx])
        reads["npy_random"].append(len(batches) / (time.perf_counter() - start))
        assert np.array_equal(got, ref)
        start = time.perf_counter()
        for first in range(0, n, chunk):
            array[first : first + chunk]
        reads["zarr_chunks"].append(nbytes / (time.perf_counter() - start))
        shutil.rmtree(base)
    mb = 2**20
    out = {
        "maps": n,
        "bytes": nbytes,
        "chunk": chunk,
        "write_MB_per_s": {k: summary([v / mb for v in vals]) for k, vals in runs.items()},
        "durable_write_MB_per_s": {
            k: summary([v / mb for v in vals]) for k, vals in durable.items()
        },
        "random_batches_per_s": {
            "batch": batch,
            "zarr": summary(reads["zarr_random"]),
            "npy_mmap": summary(reads["npy_random"]),
        },
        "zarr_chunk_read_MB_per_s": summary([v / mb for v in reads["zarr_chunks"]]),
    }
    ratios = [z / n for z, n in zip(runs["zarr_writer"], runs["numpy_save"], strict=True)]
    ratio = median(ratios)  # per repeat: the two writes of a repeat saw the same disk
    out["zarr_over_numpy_write"] = ratio
    out["zarr_over_numpy_write_runs"] = ratios
    out["zarr_over_numpy_durable"] = median(
        [z / n for z, n in zip(durable["zarr_writer"], durable["numpy_save"], strict=True)]
    )
    print(
        f"    write MB/s zarr {median(runs['zarr_writer']) / mb:.0f}, np.save "
        f"{median(runs['numpy_save']) / mb:.0f}, raw {median(runs['raw_tofile']) / mb:.0f} "
        f"(zarr/numpy {ratio:.2f}); random {batch}-map batches/s zarr "
        f"{median(reads['zarr_random']):.1f}, npy mmap {median(reads['npy_random']):.1f}",
        flush=True,
    )
    return out


# -- peak RSS of a saliency job -----------------------------------------------------------------

JOB = """
import json, sys, time, torch
sys.path.insert(0, {repo!r})
from saliency_fingerprints.saliency import compute_saliency_maps, open_maps
cfg = json.loads({cfg!r})
torch.set_num_threads({threads})
start = time.perf_counter()
compute_saliency_maps({dataset!r}, {weights!r}, {out!r}, {method!r}, json.loads({params!r}),
                      cfg, "bench", torch.device({device!r}), {threads})
elapsed = time.perf_counter() - start
maps = open_maps({out!r})["maps"]
assert maps.shape[0] == {n}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({{"seconds": elapsed, "vmhwm_kB": int(hwm[0].split()[1]) if hwm else None}}))
"""


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


def run_job(workdir, dataset, weights, method, params, n, device, threads, pass_size) -> dict:
    cfg = {"images": "all", "target": "predicted", "pass_size": pass_size, "chunk_size": 256}
    out = workdir / f"maps-{method}-{n}-{time.monotonic_ns()}.zarr"
    code = JOB.format(
        repo=str(REPO),
        cfg=json.dumps(cfg),
        threads=threads,
        dataset=str(dataset),
        weights=str(weights),
        out=str(out),
        method=method,
        params=json.dumps(params),
        device=str(device),
        n=n,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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


def bench_rss(device, args, workdir: Path, threads: int) -> dict:
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
            frozen_model(arch, shape, device), shape, device, max_rows=10 * args.rss_images * k
        )
        row = {"pass_size": pass_size}
        for n in (args.rss_images, 10 * args.rss_images):
            dataset, weights = synthetic_inputs(workdir, n, shape, arch)
            repeats = 1 if device.type == "cuda" else max(1, args.repeats - 1)
            runs = [
                run_job(workdir, dataset, weights, method, params, n, device, threads, pass_size)
                for _ in range(repeats)
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


# -- the report ---------------------------------------------------------------------------------


def fmt(x: float, digits: int = 0) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{max(digits, 1)}f}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def device_title(result: dict) -> str:
    m = result["machine"]
    if result["device_kind"] == "cuda":
        return f"GPU: {m.get('gpu', m['device'])}"
    return f"CPU: {m['cpu']} ({m['cpu_count']} cores)"


def render_device(result: dict) -> list[str]:
    m = result["machine"]
    lines = [f"## {device_title(result)}", ""]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines += [
        f"- date: {m['date_utc']}; host `{m['host']}`; {m['platform']}; Python {m['python']}",
        f"- packages: {pkgs}" + (f"; CUDA {m['cuda']}" if "cuda" in m else ""),
        f"- torch threads: {m['torch_threads']}; repeats: {result['repeats']} (medians; spread ="
        " (max - min) / median of the repeats)"
        + ("; **quick run**" if result.get("quick") else ""),
        f"- load average (1, 5, 15 min) at start {result['load_start']}, at end "
        f"{result['load_end']}" + (f" on {m['cpu_count']} cores" if m.get("cpu_count") else ""),
        f"- wall time of the suite: {result['wall_s']:.0f} s",
    ]
    if result.get("note"):
        lines.append(f"- note: {result['note']}")
    lines.append("")
    clock = (
        "rates per second of this process's CPU time (the machine is shared; wall-clock figures "
        "are in the JSON and in the wall-clock columns)"
        if result["device_kind"] == "cpu"
        else "wall-clock rates (CUDA synchronised)"
    )
    lines += [f"All rates are {clock}.", ""]
    if "limit" in result:
        lines += [
            "### The limit: forward+backward to the input (parameters frozen), rows/s by pass size",
            "",
        ]
        sizes = sorted(
            {int(s) for v in result["limit"].values() for s in v["by_pass_size"]}, key=int
        )
        lines.append("| model | image | " + " | ".join(str(s) for s in sizes) + " | best |")
        lines.append("|---|---|" + "---:|" * len(sizes) + "---:|")
        for key, v in result["limit"].items():
            arch, shape = key.split(" ")
            cells = []
            for s in sizes:
                e = v["by_pass_size"].get(str(s))
                cells.append(fmt(e["median"]) if e else "-")
            lines.append(
                f"| {arch} | {shape} | " + " | ".join(cells) + f" | **{v['best_pass_size']}** |"
            )
        lines.append("")
    if "saliency" in result:
        lines += [
            "### Saliency maps/s: our engine vs the limit / k and vs Captum's default call",
            "",
            "| model | image | method | k | pass (auto) | limit / k | engine | engine / (limit/k) "
            "| spread | wall-clock ratio | Captum default | engine / Captum |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in result["saliency"].items():
            arch, shape = key.split(" ")
            for method, e in v["methods"].items():
                captum = e.get("captum_maps_per_s")
                vs = e.get("engine_over_captum")
                lines.append(
                    f"| {arch} | {shape} | {method} | {e['k']} | {v['pass_size_auto']} | "
                    f"{fmt(e['limit_over_k'])} | {fmt(e['engine_maps_per_s']['median'])} | "
                    f"**{e['ratio_to_limit']['median']:.2f}** | "
                    f"{pct(e['ratio_to_limit']['spread'])} | "
                    f"{e['wall']['ratio_to_limit']['median']:.2f} | "
                    + (f"{fmt(captum['median'])} | {vs['median']:.2f}x |" if captum else "n/a | |")
                )
        lines.append("")
    if "training" in result:
        lines += [
            "### Training images/s (`train_classifier`, batch 64, per-epoch evaluation included)",
            "",
            "| what | option | images/s | spread | wall-clock images/s |",
            "|---|---|---:|---:|---:|",
        ]
        for key, v in result["training"].items():
            what, option = key.split(" | ")
            s, w = v["images_per_s"], v["images_per_s_wall"]
            lines.append(
                f"| {what} | {option} | {fmt(s['median'])} | {pct(s['spread'])} | "
                f"{fmt(w['median'])} |"
            )
        lines.append("")
    if "zarr" in result:
        z = result["zarr"]
        w, r = z["write_MB_per_s"], z["random_batches_per_s"]
        lines += [
            f"### Zarr: {z['maps']:,} float32 maps 3x32x32 ({z['bytes'] / 2**20:.0f} MB), "
            f"chunks of {z['chunk']} maps",
            "",
            "| measurement | MB/s or batches/s | spread |",
            "|---|---:|---:|",
            f"| write: `ChunkedMapWriter` (pipeline) | {fmt(w['zarr_writer']['median'])} MB/s | "
            f"{pct(w['zarr_writer']['spread'])} |",
            f"| write: `np.save` | {fmt(w['numpy_save']['median'])} MB/s | "
            f"{pct(w['numpy_save']['spread'])} |",
            f"| write: raw `tofile` | {fmt(w['raw_tofile']['median'])} MB/s | "
            f"{pct(w['raw_tofile']['spread'])} |",
            f"| **Zarr / np.save write throughput** (median of per-repeat ratios) | "
            f"**{z['zarr_over_numpy_write']:.2f}** | "
            f"{pct(spread(z.get('zarr_over_numpy_write_runs', [1.0])))} |",
        ]
        if "durable_write_MB_per_s" in z:
            d = z["durable_write_MB_per_s"]
            lines += [
                f"| durable write (until `os.sync()` returns): `ChunkedMapWriter` | "
                f"{fmt(d['zarr_writer']['median'])} MB/s | {pct(d['zarr_writer']['spread'])} |",
                f"| durable write: `np.save` | {fmt(d['numpy_save']['median'])} MB/s | "
                f"{pct(d['numpy_save']['spread'])} |",
                f"| **Zarr / np.save, durable** | **{z['zarr_over_numpy_durable']:.2f}** | |",
            ]
        lines += [
            f"| read: whole chunks from Zarr | {fmt(z['zarr_chunk_read_MB_per_s']['median'])} MB/s"
            f" | {pct(z['zarr_chunk_read_MB_per_s']['spread'])} |",
            f"| read: random {r['batch']}-map batches, Zarr | {fmt(r['zarr']['median'], 1)} "
            f"batches/s | {pct(r['zarr']['spread'])} |",
            f"| read: random {r['batch']}-map batches, memory-mapped .npy | "
            f"{fmt(r['npy_mmap']['median'], 1)} batches/s | {pct(r['npy_mmap']['spread'])} |",
            "",
        ]
    if "rss" in result:
        lines += [
            "### Peak RSS of a saliency job (`compute_saliency_maps` in a subprocess)",
            "",
            "| job | pass size | images | peak RSS | maps/s | images (10x) | peak RSS | maps/s "
            "| growth |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in result["rss"].items():
            (n1, a), (n2, b) = sorted(v["by_images"].items(), key=lambda kv: int(kv[0]))
            lines.append(
                f"| {key} | {v.get('pass_size', 'auto')} | {int(n1):,} | "
                f"{a['peak_rss_MB']['median']:.0f} MB | "
                f"{fmt(a['maps_per_s']['median'])} | {int(n2):,} | "
                f"{b['peak_rss_MB']['median']:.0f} MB | {fmt(b['maps_per_s']['median'])} | "
                f"**{v['growth']:+.1%}** |"
            )
        lines.append("")
    return lines


def done_when(result: dict) -> list[str]:
    """The issue's acceptance checks, evaluated on one result."""
    lines = []
    if "saliency" in result:
        worst = min(
            (e["ratio_to_limit"]["median"], f"{key} {m}")
            for key, v in result["saliency"].items()
            for m, e in v["methods"].items()
            if m in PAIR
        )
        vs = [
            (e["engine_over_captum"]["median"], f"{key} {m}")
            for key, v in result["saliency"].items()
            for m, e in v["methods"].items()
            if m in PAIR and "engine_over_captum" in e
        ]
        ok = "yes" if worst[0] >= 0.85 else "NO"
        lines.append(
            f"- Grad/SG/IG >= 0.85 x limit/k for every model: **{ok}** (lowest "
            f"{worst[0]:.2f}, {worst[1]})"
        )
        if vs:
            low = min(vs)
            ok = "yes" if low[0] >= 1.0 else "NO"
            lines.append(
                f"- at least as fast as Captum's default call: **{ok}** (lowest engine/Captum "
                f"{low[0]:.2f}x, {low[1]})"
            )
    if "rss" in result:
        worst = max((v["growth"], k) for k, v in result["rss"].items())
        ok = "yes" if worst[0] < 0.20 else "NO"
        lines.append(
            f"- peak RSS grows < 20% from N to 10N: **{ok}** (largest {worst[0]:+.1%}, {worst[1]})"
        )
    if "zarr" in result:
        r = result["zarr"]["zarr_over_numpy_write"]
        ok = "yes" if r >= 0.5 else "NO"
        durable = result["zarr"].get("zarr_over_numpy_durable")
        lines.append(
            f"- Zarr writes >= half of numpy's throughput: **{ok}** ({r:.2f} into the page cache"
            + (f", {durable:.2f} durable)" if durable is not None else ")")
        )
    return lines


def write_markdown(results_dir: Path, target: Path, notes: Path | None = None) -> None:
    chosen: dict[str, dict] = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        kind = result["device_kind"]
        old = chosen.get(kind)
        # the newest full run wins; a quick run only where no full run exists
        if (
            old is None
            or (old.get("quick") and not result.get("quick"))
            or (old.get("quick") == result.get("quick"))
        ):
            chosen[kind] = result
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run.py` (run it with `.venv/bin/python benchmarks/run.py`; "
        "`--quick` for a smoke run, `--device cuda` on a GPU; `--report` rewrites this file from "
        "`benchmarks/results/*.json`). The suite is not part of CI's tests. What each figure "
        "means is in the docstring of `benchmarks/run.py`; the analysis is in the last section.",
        "",
    ]
    for kind in ("cpu", "cuda"):
        if kind in chosen:
            scope = (
                "the issue's targets, set for these CPUs"
                if kind == "cpu"
                else "the same checks for reference; see the analysis"
            )
            lines += [f"**Done-when checks ({device_title(chosen[kind])}; {scope})**", ""]
            lines += done_when(chosen[kind]) + [""]
    for kind in ("cpu", "cuda"):
        if kind in chosen:
            lines += render_device(chosen[kind])
    if notes and notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    target.write_text("\n".join(lines))
    print(f"wrote {target}")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, small sizes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on "
        "a CPU, as the pipeline's jobs; torch's default with a GPU)",
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3)")
    p.add_argument("--sections", default="limit,saliency,training,zarr,rss")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--shapes", default="cifar,digits")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument(
        "--notes",
        type=Path,
        default=REPO / "benchmarks" / "analysis.md",
        help="appended to the markdown (the written analysis)",
    )
    p.add_argument("--report", action="store_true", help="only rewrite the markdown")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.min_time = 0.15 if args.quick else 0.3  # seconds per timed measurement
    args.work = 0.5 if args.quick else 1.0  # seconds of work per saliency call at the limit
    args.train_images = 1024 if args.quick else 4096
    args.zarr_maps = 4096 if args.quick else 20000
    args.rss_images = 200 if args.quick else 500
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report:
        write_markdown(args.results, args.markdown, args.notes)
        return
    device = select_device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    set_determinism(0, threads)  # the jobs' settings: deterministic kernels, no cudnn autotune
    if device.type == "cuda":
        args.min_time = 0.1 if args.quick else 0.2
        args.work = 0.5
        args.train_images *= 4
        args.zarr_maps *= 2
        args.rss_images = 2000 if args.quick else 10000  # more than a GPU call's images
    sections = set(args.sections.split(","))
    mp_iterations = 5 if args.quick else 20
    result = {
        "device_kind": device.type,
        "quick": args.quick,
        "repeats": args.repeats,
        "machine": machine_info(device, threads),
        "load_start": load_average(),
    }
    start = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.results / f"{device.type}-{stamp}{'-quick' if args.quick else ''}.json"

    def save(result: dict, start: float) -> Path:
        """(Re)write the JSON: after every section, so a run cut short keeps what it measured."""
        result["load_end"] = load_average()
        result["wall_s"] = time.perf_counter() - start
        path.write_text(json.dumps(result, indent=1))
        return path

    print(f"device {device}, {threads} threads, repeats {args.repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        workdir = Path(tmp)
        if sections & {"limit", "saliency"}:
            result["limit"], result["saliency"] = {}, {}
            for arch in args.models.split(","):
                for shape_name in args.shapes.split(","):
                    shape = SHAPES[shape_name]
                    key = f"{arch} {'x'.join(map(str, shape))}"
                    print(f"  {key}", flush=True)
                    model = frozen_model(arch, shape, device)
                    sizes = candidate_pass_sizes(device, math.prod(shape) * 4)
                    limit = measure_limit(model, shape, device, sizes, args.repeats, args.min_time)
                    result["limit"][key] = limit
                    print(
                        f"    limit {limit['rows_per_s']['median']:.0f} rows/s at pass "
                        f"{limit['best_pass_size']}",
                        flush=True,
                    )
                    if "saliency" in sections:
                        result["saliency"][key] = bench_saliency(
                            model, shape, device, limit, args, mp_iterations
                        )
                    save(result, start)
            if "saliency" not in sections:
                result.pop("saliency")
        if "training" in sections:
            print("  training", flush=True)
            result["training"] = bench_training(device, args)
            save(result, start)
        if "zarr" in sections:
            print("  zarr", flush=True)
            result["zarr"] = bench_zarr(args, workdir)
            save(result, start)
        if "rss" in sections:
            print("  rss", flush=True)
            result["rss"] = bench_rss(device, args, workdir, threads)
            save(result, start)
    path = save(result, start)
    print(f"wrote {path}")
    for line in done_when(result):
        print(line)
    write_markdown(args.results, args.markdown, args.notes)


if __name__ == "__main__":
    main()
