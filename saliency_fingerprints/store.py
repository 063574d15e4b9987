"""Zarr stores as labelled xarray datasets: atomic outputs, chunked streaming writes, resume.

Every output of the pipeline appears atomically: it is written under a temporary sibling path
and renamed into place only when complete, so a killed job never leaves something a later run
takes for finished. Map stores are written chunk by chunk (whole Zarr chunks at a time, by a
background thread while the next chunk computes) into ``<store>.partial``; a restarted job with
the same parameters resumes from the last complete chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .errors import DataError

MAP_DIMS = ("sample", "channel", "y", "x")


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` siblings left by writers that were killed (their process is
    gone); a live writer's temporary is left alone."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            remove_path(tmp)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``final`` only if the block succeeds.

    A writer killed mid-write (SIGKILL, node failure) leaves only ``.<name>.tmp-<pid>``, never
    ``final``; the next writer of ``final`` removes such leftovers."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    remove_path(tmp)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    remove_path(final)
    os.replace(tmp, final)


def write_json(path: str | os.PathLike, record: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def one_line(err: BaseException) -> str:
    """An exception's message with its line breaks folded (error messages are one line)."""
    return " ".join(str(err).split())


def store_root(path: str | os.PathLike) -> str:
    """The Zarr store that a rule's input or output names by its root ``zarr.json``; any other
    path is returned as it is.

    Rules declare a store by its ``zarr.json`` rather than as a ``directory()`` output (see
    ``zarr_store`` in rules/common.smk): Snakemake would put a ``.snakemake_timestamp`` file in a
    directory output, which Zarr 3 warns about whenever the store is opened."""
    path = Path(path)
    return str(path.parent if path.name == "zarr.json" else path)


def remove_empty_store_folders(outputs) -> None:
    """Remove the folder of each ``<store>/zarr.json`` in ``outputs`` if it is empty: Snakemake
    makes an output's folder before its job runs, and a job that fails before renaming its store
    into place would leave the store's path behind as an empty folder."""
    for output in outputs:
        path = Path(output)
        if path.name == "zarr.json" and path.parent.is_dir() and not path.parent.is_symlink():
            with contextlib.suppress(OSError):  # not empty (a finished store): kept
                path.parent.rmdir()


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a Zarr store lazily as an xarray dataset, with a clear error if it is unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: Zarr store not found")
    try:
        with warnings.catch_warnings():
            # stores made while the rules declared them as directory() outputs hold Snakemake's
            # .snakemake_timestamp file (see store_root); stores made since do not
            warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
            return xr.open_zarr(path, consolidated=False, zarr_format=3)
    except Exception as err:  # zarr raises many types for corrupt metadata
        raise DataError(
            f"{path}: not a readable Zarr store ({type(err).__name__}: {one_line(err)}); "
            "expected a complete Zarr v3 store - delete it and rerun to rebuild it"
        ) from None


def open_maps(path: str | os.PathLike) -> xr.Dataset:
    """Open a map store as an xarray dataset (lazy) and check its layout."""
    ds = open_store(path)
    if "maps" not in ds or tuple(ds["maps"].dims) != MAP_DIMS:
        raise DataError(f"{path}: expected a 'maps' variable with dims {MAP_DIMS}")
    return ds


def variable_length_strings(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its fixed-length text arrays (numpy ``<U``) as variable-length strings.

    Zarr v3 has no specification for fixed-length UTF-32 (zarr-python warns that such arrays
    may become unreadable); variable-length UTF-8 strings have one. Readers get object arrays of
    ``str``, which compare, index and ``astype`` like the fixed-length ones."""
    text = [name for name, var in ds.variables.items() if var.dtype.kind == "U"]
    if not text:
        return ds
    return ds.assign(
        {name: ds[name].astype(object) for name in text if name in ds.data_vars}
    ).assign_coords({name: ds[name].astype(object) for name in text if name in ds.coords})


def write_dataset(ds: xr.Dataset, path: str | os.PathLike, chunks: dict | None = None) -> None:
    """Write an in-memory dataset atomically (chunk sizes per variable in ``chunks``)."""
    ds = variable_length_strings(ds)
    encoding = {}
    for name, size in (chunks or {}).items():
        var = ds[name]
        encoding[name] = {"chunks": (min(size, var.shape[0]), *var.shape[1:])}
    with atomic_output(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3, encoding=encoding)


class ChunkedMapWriter:
    """Stream a ``(sample, channel, y, x)`` array into a Zarr store, one whole chunk at a time.

    ``coords`` are small per-sample or scalar coordinates written up front; ``data_vars`` are
    small per-sample data variables (xarray ``(dims, values, attrs)`` tuples, e.g. a method's
    per-map diagnostics) written up front as placeholders (NaN) and filled chunk by chunk through
    ``extras`` like the coordinates, so a chunk is marked done only once they are on disk too.
    ``fingerprint`` identifies the job's inputs and parameters: a ``.partial`` store with the
    same fingerprint (and every variable of ``data_vars``) is resumed, any other is discarded.
    Use as a context manager; ``write_chunk`` queues a write on one of ``writers`` background
    threads (default: up to 4; chunks are separate files, so writes of different chunks
    overlap), ``done_chunks`` says what a resumed store already has.

    Throughput (BENCHMARKS.md): the maps' chunks are written uncompressed, whole chunks of a
    local store straight to their files (:meth:`_direct_root`); the per-sample coordinates of
    finished chunks (``extras``) and the ``done_chunks`` marker are written in batches, by one
    writer at a time, every ``FLUSH_CHUNKS`` chunks or ``FLUSH_SECONDS`` seconds and on exit
    (also on an exception). A chunk is marked done only after its maps and coordinates are on
    disk; a job killed outright loses at most one batch, which a resume recomputes.
    """

    FLUSH_CHUNKS = 16
    FLUSH_SECONDS = 2.0

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, int, int, int],
        chunk_size: int,
        coords: dict,
        attrs: dict,
        fingerprint: str,
        dtype: str = "float32",
        name: str = "maps",
        writers: int | None = None,
        data_vars: dict | None = None,
    ) -> None:
        self.final = Path(path)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.shape, self.chunk_size, self.name = shape, chunk_size, name
        self.n_chunks = -(-shape[0] // chunk_size)
        self.fingerprint = fingerprint
        self.final_attrs: dict = {}  # merged into the store's attributes when it is complete
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self._coord_arrays: dict[str, zarr.Array] = {}
        self._unflushed: dict[int, dict[str, np.ndarray]] = {}  # written, not yet marked done
        self._last_flush = time.monotonic()
        self._open(coords, attrs, dtype, data_vars or {})
        self._done: set[int] = set(self.group.attrs.get("done_chunks", []))
        if writers is None:
            writers = min(4, os.cpu_count() or 1)
        self._writers = max(1, writers)
        self._direct = self._direct_root()
        self._dtype = np.dtype(self.array.dtype).newbyteorder("<")
        self._pool = ThreadPoolExecutor(max_workers=self._writers)

    def _open(self, coords: dict, attrs: dict, dtype: str, data_vars: dict) -> None:
        if self.partial.exists():
            try:
                group = zarr.open_group(self.partial, mode="r+", zarr_format=3)
                names = (self.name, *data_vars)
                if group.attrs.get("fingerprint") == self.fingerprint and all(
                    name in group for name in names
                ):
                    self.group, self.array = group, group[self.name]
                    return
            except Exception:  # unreadable leftovers are simply discarded
                pass
            remove_path(self.partial)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        skeleton = variable_length_strings(
            xr.Dataset(data_vars=data_vars, coords=coords, attrs=attrs)
        )
        skeleton.to_zarr(self.partial, mode="w", consolidated=False, zarr_format=3)
        self.group = zarr.open_group(self.partial, mode="r+", zarr_format=3)
        self.array = self.group.create_array(
            self.name,
            shape=self.shape,
            chunks=(self.chunk_size, *self.shape[1:]),
            dtype=dtype,
            fill_value=np.nan,
            compressors=None,  # maps barely compress (~1.1x) and compression costs 3x in speed
            dimension_names=MAP_DIMS,
            config={"write_empty_chunks": True},  # skip the all-fill-value check (2x faster)
            # flat chunk files (maps/0.0.0.0, ...): one file per chunk, no directory per chunk
            chunk_key_encoding={"name": "v2", "separator": "."},
        )
        self.group.attrs.update({"fingerprint": self.fingerprint, "done_chunks": []})

    @property
    def done_chunks(self) -> set[int]:
        with self._lock:
            return set(self._done)

    def _coordinate(self, name: str) -> zarr.Array:
        """A per-sample coordinate or data variable array, opened once (opening reads its
        metadata from disk)."""
        if name not in self._coord_arrays:
            self._coord_arrays[name] = self.group[name]
        return self._coord_arrays[name]

    def _direct_root(self) -> Path | None:
        """The array's folder if whole chunks may be written straight to their files, else None.

        For an array in a local store whose only codec is ``bytes`` (little endian, no
        compression), Zarr 3 keeps each chunk as its C-order bytes in one file. Writing that file
        ourselves (to a temporary name, renamed into place, as Zarr does) skips Zarr's copies
        and event-loop round trips: 2-4x faster (BENCHMARKS.md). Any other layout, and partial
        edge chunks, go through Zarr.
        """
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore

        codecs = self.array.metadata.codecs
        if not (isinstance(self.array.store, LocalStore) and len(codecs) == 1):
            return None
        codec = codecs[0]
        endian = getattr(codec.endian, "value", codec.endian)
        if not isinstance(codec, BytesCodec) or endian not in (None, "little"):
            return None
        return Path(self.array.store.root) / self.array.path

    def _write_maps(self, index: int, values: np.ndarray) -> None:
        start = index * self.chunk_size
        if self._direct is None or values.shape[0] != self.chunk_size:
            self.array[start : start + values.shape[0]] = values
            return
        data = np.ascontiguousarray(values, dtype=self._dtype)
        path = self._direct / self.array.metadata.encode_chunk_key((index, 0, 0, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(data.data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write(self, index: int, values: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self._write_maps(index, values)
        with self._lock:
            self._unflushed[index] = extras
            due = time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
            if due or len(self._unflushed) >= self.FLUSH_CHUNKS:
                self._flush_locked()

    def _flush_locked(self) -> None:
        """Write the coordinates of written chunks, then mark them done (caller holds the lock)."""
        if not self._unflushed:
            return
        indices = sorted(self._unflushed)
        runs: list[list[int]] = []  # consecutive chunk indices: one write per coordinate
        for index in indices:
            if runs and index == runs[-1][-1] + 1:
                runs[-1].append(index)
            else:
                runs.append([index])
        names = {name for extras in self._unflushed.values() for name in extras}
        for name in sorted(names):
            for run in runs:
                parts = [self._unflushed[i][name] for i in run]
                start = run[0] * self.chunk_size
                values = np.concatenate(parts)
                self._coordinate(name)[start : start + len(values)] = values
        self._done.update(indices)
        self.group.attrs["done_chunks"] = sorted(self._done)
        self._unflushed.clear()
        self._last_flush = time.monotonic()

    def write_chunk(
        self, index: int, values: np.ndarray, extras: dict[str, np.ndarray] | None = None
    ) -> None:
        """Queue chunk ``index`` (and slices of per-sample coordinates and data variables in
        ``extras``) for writing; at most ``writers`` writes run while the next chunk computes."""
        self._drain(keep=self._writers - 1)
        job = self._pool.submit(self._write, index, np.ascontiguousarray(values), extras or {})
        self._pending.append(job)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def __enter__(self) -> ChunkedMapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._drain(keep=0)
        finally:
            self._pool.shutdown(wait=True)
            with self._lock:
                self._flush_locked()  # what was written is marked done, even on an exception
        if exc_type is not None:
            return  # keep the .partial store for a resume
        missing = set(range(self.n_chunks)) - self.done_chunks
        if missing:
            raise RuntimeError(f"{self.partial}: chunks {sorted(missing)} were never written")
        attrs = {**self.group.attrs, **self.final_attrs}
        attrs.pop("done_chunks", None)
        attrs.pop("fingerprint", None)
        self.group.attrs.clear()
        self.group.attrs.update(attrs)
        remove_path(self.final)
        os.replace(self.partial, self.final)


def chunk_ranges(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    """``(index, start, stop)`` of consecutive chunks covering ``range(n)``."""
    for index, start in enumerate(range(0, n, size)):
        yield index, start, min(start + size, n)
