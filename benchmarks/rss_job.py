"""One saliency job for the peak-RSS benchmark (:mod:`benchmarks.rss`), in a process of its own.

Run by the benchmark as ``python -m benchmarks.rss_job ...`` with the repository on
``PYTHONPATH``; by hand (from the repository root)::

    .venv/bin/python -m benchmarks.rss_job --dataset D.zarr --weights W.safetensors \\
        --out maps.zarr --method grad --images 500

It runs ``compute_saliency_maps`` once, checks that the store holds ``--images`` maps, and prints
one JSON line: ``{"seconds": <the call's wall time>, "vmhwm_kB": <this process's peak RSS>}``.
It imports nothing beyond what the pipeline's own job does (no numpy/torch work of its own), so
its high-water mark is the job's.
"""

from __future__ import annotations

import argparse
import json
import time


def peak_rss_kB() -> int | None:
    """This process's high-water mark of resident memory (``VmHWM``), None where not on Linux."""
    try:
        with open("/proc/self/status") as status:
            hwm = [line for line in status if line.startswith("VmHWM:")]
    except OSError:
        return None
    return int(hwm[0].split()[1]) if hwm else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="the image store (Zarr)")
    p.add_argument("--weights", required=True, help="the model (safetensors)")
    p.add_argument("--out", required=True, help="the map store to write (Zarr)")
    p.add_argument("--method", required=True)
    p.add_argument("--params", default="{}", help="the method's parameters, JSON")
    p.add_argument(
        "--config",
        default=json.dumps(
            {"images": "all", "target": "predicted", "pass_size": "auto", "chunk_size": 256}
        ),
        help="the job's `saliency` config, JSON (keys left out: the schema's defaults)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, required=True, help="maps the store must hold")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from saliency_fingerprints.configuration import schema_defaults
    from saliency_fingerprints.saliency import compute_saliency_maps, open_maps

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    compute_saliency_maps(
        dataset_path=args.dataset,
        weights_path=args.weights,
        out=args.out,
        method=args.method,
        method_params=json.loads(args.params),
        cfg={**schema_defaults("properties", "saliency"), **json.loads(args.config)},
        primary="bench",
        device=torch.device(args.device),
        threads=args.threads,
    )
    elapsed = time.perf_counter() - start
    maps = open_maps(args.out)["maps"]
    assert maps.shape[0] == args.images, (maps.shape, args.images)
    record = {"seconds": elapsed, "vmhwm_kB": peak_rss_kB()}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
