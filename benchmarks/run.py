"""Benchmark suite: saliency engines against the hardware limit, training, Zarr I/O, peak RSS.

One command (from the repository root; not part of CI's tests)::

    .venv/bin/python benchmarks/run.py            # full suite, ~10 min on 2 busy CPU cores
    .venv/bin/python benchmarks/run.py --quick    # smoke run, ~5 min of CPU time (14 min wall
                                                  # on 2 busy cores)
    .venv/bin/python benchmarks/run.py --report   # only rewrite BENCHMARKS.md from the JSON
    .venv/bin/python benchmarks/run.py --device cuda --sections gpu-training --bf16 \
        [--fast-path package.module:function]     # training-step throughput on a GPU

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
* **gpu-training** (opt-in: ``--sections gpu-training``; meant for a GPU, runs on a CPU too):
  images/s of one training step (forward, cross-entropy, backward, Adam) of MiniResNet 3x32x32
  and MiniCNN 1x32x32 at batch 64, against the bound (one model at a large batch: 8192 on a
  GPU), with a slot for a faster trainer (``--fast-path module:function``) and bf16 autocast
  lines (``--bf16``); see ``benchmarks/gpu_training.py``.

Every figure is the median of ``--repeats`` runs; the JSON keeps every run, the markdown the
median and the spread ((max - min) / median).

The measuring lives in ``benchmarks/saliency.py`` (limit, saliency), ``training.py``,
``gpu_training.py``, ``zarr_io.py``, ``rss.py`` (whose job is ``rss_job.py``), the markdown in
``render.py``; this file is the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: import the suite as the package `benchmarks` from the repository root,
    # and drop benchmarks/ itself from the path (its modules would shadow others' names).
    if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
        sys.path.pop(0)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import MODELS, SHAPES, frozen_model, load_average, machine_info  # noqa: E402
from benchmarks.render import done_when, write_markdown  # noqa: E402
from saliency_fingerprints.runtime import select_device, set_determinism  # noqa: E402
from saliency_fingerprints.saliency import candidate_pass_sizes  # noqa: E402

SECTIONS = ("limit", "saliency", "training", "zarr", "rss", "gpu-training")
DEFAULT_SECTIONS = "limit,saliency,training,zarr,rss"  # gpu-training is opt-in


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
    p.add_argument(
        "--sections",
        default=DEFAULT_SECTIONS,
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: {DEFAULT_SECTIONS})",
    )
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
    g = p.add_argument_group("gpu-training")
    g.add_argument(
        "--bound-batch",
        type=int,
        default=None,
        help="batch of the bound (default 8192 on a GPU; on a CPU 512, 128 with --quick)",
    )
    g.add_argument(
        "--fast-path",
        default=None,
        metavar="MODULE:FUNCTION",
        help="a trainer for the fast-path slot (benchmarks.gpu_training.Trainer)",
    )
    g.add_argument("--fast-models", type=int, default=8, help="models the fast path trains at once")
    g.add_argument("--bf16", action="store_true", help="also measure under bf16 autocast")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS) - {""}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; expected some of {', '.join(SECTIONS)}")
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
    if args.bound_batch is None:
        args.bound_batch = 8192 if device.type == "cuda" else (128 if args.quick else 512)
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
            from benchmarks.saliency import bench_saliency, measure_limit

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
                            model,
                            shape,
                            device,
                            limit,
                            repeats=args.repeats,
                            min_time=args.min_time,
                            work=args.work,
                            mp_iterations=mp_iterations,
                        )
                    save(result, start)
            if "saliency" not in sections:
                result.pop("saliency")
        if "training" in sections:
            from benchmarks.training import bench_training

            print("  training", flush=True)
            result["training"] = bench_training(
                device, repeats=args.repeats, train_images=args.train_images, quick=args.quick
            )
            save(result, start)
        if "zarr" in sections:
            from benchmarks.zarr_io import bench_zarr

            print("  zarr", flush=True)
            result["zarr"] = bench_zarr(workdir, maps=args.zarr_maps, repeats=args.repeats)
            save(result, start)
        if "rss" in sections:
            from benchmarks.rss import bench_rss

            print("  rss", flush=True)
            result["rss"] = bench_rss(
                device, workdir, threads, images=args.rss_images, repeats=args.repeats
            )
            save(result, start)
        if "gpu-training" in sections:
            from benchmarks.gpu_training import bench_gpu_training, load_trainer

            print("  gpu-training", flush=True)
            cuda = device.type == "cuda"
            warmup = (5 if args.quick else 10) if cuda else (1 if args.quick else 2)
            result["gpu_training"] = bench_gpu_training(
                device,
                repeats=args.repeats,
                min_time=args.min_time,
                archs=args.models.split(","),
                bound_batch=args.bound_batch,
                warmup=warmup,
                fast_path=load_trainer(args.fast_path) if args.fast_path else None,
                fast_models=args.fast_models,
                bf16=args.bf16,
            )
            save(result, start)
    path = save(result, start)
    print(f"wrote {path}")
    for line in done_when(result):
        print(line)
    write_markdown(args.results, args.markdown, args.notes)


if __name__ == "__main__":
    main()
