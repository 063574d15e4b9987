"""Zarr I/O: the pipeline's map writer against numpy's, and random mini-batch reads."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import median, summary


def bench_zarr(workdir: Path, *, maps: int, repeats: int) -> dict:
    """Write ``maps`` float32 maps 3x32x32 with the pipeline's writer, ``np.save`` and a raw
    ``tofile`` (each repeat in alternating order, after an ``os.sync()``), then read them back:
    whole chunks from Zarr, random mini-batches from Zarr and from a memory-mapped .npy."""
    import zarr

    from saliency_fingerprints.store import ChunkedMapWriter

    n, chunk = maps, 256
    shape = (n, 3, 32, 32)
    data = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    nbytes = data.nbytes
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
    for repeat in range(repeats):
        base = workdir / f"zarr{repeat}"
        base.mkdir()

        def write_zarr(base=base):
            with ChunkedMapWriter(base / "maps.zarr", shape, chunk, coords, {}, "b") as writer:
                for index, first in enumerate(range(0, n, chunk)):
                    part = data[first : first + chunk]
                    extra = extras_zero[: len(part)]
                    writer.write_chunk(index, part, {"target": extra, "prediction": extra})

        writes = {
            "zarr_writer": write_zarr,
            "numpy_save": lambda base=base: np.save(base / "maps.npy", data),
            "raw_tofile": lambda base=base: data.tofile(base / "maps.raw"),
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
