"""The saliency job: a dataset store and a primary in, one method's chunked map store out.

:func:`compute_saliency_maps` reads images chunk by chunk from the dataset store (the next group
of chunks is read by a background thread while the current one computes) and writes maps chunk
by chunk (by the writer's background thread), so peak memory depends on ``chunk_size`` and
``pass_size``, not on the number of images. A store records per map its ``target`` (the class
explained) and ``prediction``, and the method's :attr:`~.base.SaliencyMethod.map_variables`
(MP: final score and mask area; IG: completeness terms) as ``<name>(sample)`` data variables.
An interrupted job resumes from its last complete chunk (:class:`~..store.ChunkedMapWriter`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import DataError
from .base import SaliencyMethod, build_method
from .passes import resolve_pass_size

log = logging.getLogger(__name__)

Chunk = tuple[int, int, int]  # (chunk index, first position, end position) in the job's ids


def select_images(split: np.ndarray, which: str, max_images: int | None, seed: int) -> np.ndarray:
    """Sample ids that get maps: a split (``which``: all, train or test), optionally a seeded
    random subset of ``max_images`` (>= 1; None: all) of it."""
    ids = np.arange(len(split)) if which == "all" else np.flatnonzero(split == which)
    if max_images is not None and max_images < len(ids):
        ids = np.sort(np.random.default_rng([seed, 0x1A6E]).choice(ids, max_images, False))
    return ids


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frozen_primary(weights_path: str | Path, device: torch.device) -> nn.Module:
    """The primary on ``device``, its parameters collecting no gradients."""
    from ..training import load_model

    model = load_model(weights_path, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_engine(
    model: nn.Module,
    method: str,
    method_params: dict,
    setting: int | str,
    image_shape: tuple[int, int, int],
    n_images: int,
    tf32: bool,
) -> SaliencyMethod:
    """The method's engine, with its pass size: ``saliency.pass_size`` as given, or (``auto``)
    measured on the device for this job's rows (``n_images`` x gradient evaluations per map)."""
    from ..training import numeric_precision

    fixed = 1 if setting == "auto" else resolve_pass_size(setting, model, image_shape)
    engine = build_method(method, model, method_params, fixed)
    with numeric_precision(tf32=tf32):
        engine.pass_size = resolve_pass_size(
            setting, model, image_shape, max_rows=n_images * engine.gradient_evaluations
        )
    return engine


def store_layout(
    ds,
    ids: np.ndarray,
    primary: str,
    method: str,
    engine: SaliencyMethod,
    target_mode: str,
    dataset_path: str | Path,
) -> tuple[dict, dict, dict]:
    """``(coords, attrs, data_vars)`` of the map store: per map its sample id, label, split,
    and (filled as maps are written) target, prediction and the method's map variables."""
    labels = ds["label"].values[ids].astype(np.int64)
    n = len(ids)
    coords = {
        "sample": ("sample", ids.astype(np.int64)),
        "label": ("sample", labels),
        "split": ("sample", ds["split"].values[ids].astype("<U5")),
        "target": ("sample", np.full(n, -1, dtype=np.int64)),
        "prediction": ("sample", np.full(n, -1, dtype=np.int64)),
        "primary": primary,
        "method": method,
    }
    attrs = {
        "method_params": json.dumps(engine.params(), sort_keys=True),
        "target_mode": target_mode,
        "dataset": str(dataset_path),
    }
    # the method's per-map diagnostics (MP: final score, mask area; IG: completeness terms)
    data_vars = {
        name: ("sample", np.full(n, np.nan, dtype=np.float32), {"description": description})
        for name, description in engine.map_variables.items()
    }
    if data_vars:
        attrs["map_variables"] = json.dumps(engine.map_variables, sort_keys=True)
    return coords, attrs, data_vars


def train_images(ds, device: torch.device) -> torch.Tensor:
    """The dataset's train-split images (float32, on ``device``): the sample set of methods
    with :attr:`~.base.SaliencyMethod.needs_sample_set` (a superset of every primary's own
    training subset; the dataset's provenance is in the store fingerprint)."""
    ids = np.flatnonzero(ds["split"].values == "train")
    images = np.asarray(ds["image"].isel(sample=ids).values, dtype=np.float32)
    return torch.from_numpy(images).to(device)


def store_fingerprint(config: dict, primary: str, weights_path: str | Path, ds) -> str:
    """What a resumable ``.partial`` store must match: the job's config, the primary's name and
    weights, and the dataset's provenance."""
    return hashlib.sha256(
        json.dumps(
            [config, primary, _file_digest(Path(weights_path)), ds.attrs.get("provenance", "")],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()


def chunk_reader(
    ids: np.ndarray, images_var
) -> Callable[[list[Chunk]], tuple[np.ndarray, np.ndarray]]:
    """A function reading the sample ids and float32 images of consecutive chunks (one read
    when their ids are contiguous)."""

    def read(chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray]:
        positions = group_positions(chunks)
        chunk_ids = ids[positions]
        contiguous = chunk_ids[-1] - chunk_ids[0] + 1 == len(chunk_ids)
        where = slice(int(chunk_ids[0]), int(chunk_ids[-1]) + 1) if contiguous else chunk_ids
        return chunk_ids, np.asarray(images_var.isel(sample=where).values, dtype=np.float32)

    return read


def group_positions(chunks: list[Chunk]) -> np.ndarray:
    """Positions in the job's ids of a group of chunks."""
    return np.concatenate([np.arange(start, stop) for _, start, stop in chunks])


def chunks_per_call(engine: SaliencyMethod, chunk_size: int, image_shape) -> int:
    """Chunks per engine call: enough rows to fill a pass (only matters for Grad on a GPU), but
    at most ~64 MB of images, so host memory stays bounded whatever the pass size."""
    per_call = -(-engine.pass_size // (engine.gradient_evaluations * chunk_size))
    chunk_bytes = chunk_size * math.prod(image_shape) * 4
    return max(1, min(per_call, (64 << 20) // chunk_bytes))


def compute_group(
    engine: SaliencyMethod,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    chunk_ids: np.ndarray,
    failure: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Maps, targets, predictions and map variables (as numpy) of one group of images;
    ``targets=None`` explains the predictions. ``failure``: the error if a map is not finite."""
    maps, targets, preds = engine.attribute_with_predictions(
        images, targets, sample_ids=chunk_ids.tolist()
    )
    if not torch.isfinite(maps).all():
        raise DataError(failure)
    per_map = {
        name: values.detach().to(torch.float32).cpu().numpy()
        for name, values in engine.map_variable_values(images, targets, maps).items()
    }
    return maps.cpu().numpy(), targets.cpu().numpy(), preds.cpu().numpy(), per_map


def write_group(writer, group: list[Chunk], maps, targets, preds, per_map) -> int:
    """Write one group's results chunk by chunk; returns the number of maps written."""
    offset = 0
    for index, start, stop in group:
        part = slice(offset, offset + stop - start)
        extras = {"target": targets[part], "prediction": preds[part]}
        extras.update({name: values[part] for name, values in per_map.items()})
        writer.write_chunk(index, maps[part], extras)
        offset += stop - start
    return offset


def compute_saliency_maps(
    *,
    dataset_path: str | Path,
    weights_path: str | Path,
    out: str | Path,
    method: str,
    method_params: dict,
    cfg: dict,
    primary: str,
    device: torch.device,
    threads: int | None = None,
) -> None:
    """Compute one method's maps for one primary and stream them into a Zarr store.

    Images are read chunk by chunk from the dataset store (the next group of chunks is read
    by a background thread while the current one computes) and maps are written chunk by chunk
    (by the writer's background thread), so peak memory depends on ``chunk_size`` and
    ``pass_size``, not on the number of images. ``saliency.pass_size: auto`` is measured on the
    device at hand; when a pass holds more rows than a chunk has (Grad on a GPU), several chunks
    go through the engine together.
    """
    from ..datasets import open_dataset
    from ..provenance import as_attr
    from ..stage import Stage
    from ..store import ChunkedMapWriter, chunk_ranges
    from ..training import numeric_precision

    config = {"method": method, "method_params": method_params, **cfg}
    stage = Stage(
        "compute_saliency",
        {**config, "primary": primary},
        device,
        seed=int(cfg["seed"]),
        threads=threads,
    )
    target_mode, chunk_size = cfg["target"], int(cfg["chunk_size"])
    ds, info = open_dataset(dataset_path)
    model = frozen_primary(weights_path, device)
    image_shape = (info.channels, info.image_size, info.image_size)
    ids = select_images(ds["split"].values, cfg["images"], cfg["max_images"], int(cfg["seed"]))
    tf32 = bool(cfg["tf32"])
    setting = cfg["pass_size"]
    engine = build_engine(model, method, method_params, setting, image_shape, len(ids), tf32)
    if engine.needs_sample_set:  # input_agnostic: minibatches drawn from the train split
        engine.set_sample_set(train_images(ds, device))
    n = len(ids)
    labels = ds["label"].values[ids].astype(np.int64)
    coords, attrs, data_vars = store_layout(
        ds, ids, primary, method, engine, target_mode, dataset_path
    )
    read = chunk_reader(ids, ds["image"])
    per_call = chunks_per_call(engine, chunk_size, image_shape)
    log.info(
        "%s/%s: %d maps, pass size %d rows%s, %d gradient evaluations per map, device %s",
        primary,
        method,
        n,
        engine.pass_size,
        " (auto)" if setting == "auto" else "",
        engine.gradient_evaluations,
        stage.device_line,
    )
    start_time = time.perf_counter()
    with (
        ChunkedMapWriter(
            out,
            (n, *image_shape),
            chunk_size,
            coords,
            attrs,
            store_fingerprint(config, primary, weights_path, ds),
            dtype=cfg["dtype"],
            data_vars=data_vars,
        ) as writer,
        ThreadPoolExecutor(max_workers=1) as reader,
        numeric_precision(tf32=tf32),
    ):
        done = writer.done_chunks
        if done:
            log.info(
                "%s/%s: resuming, %d of %d chunks already written",
                primary,
                method,
                len(done),
                writer.n_chunks,
            )
        bar = tqdm(
            total=n,
            desc=f"{method} {primary}",
            unit="map",
            mininterval=5,
            file=sys.stderr,
            disable=None,
        )
        todo = [c for c in chunk_ranges(n, chunk_size) if c[0] not in done]
        bar.update(n - sum(stop - start for _, start, stop in todo))
        groups = [todo[i : i + per_call] for i in range(0, len(todo), per_call)]
        pending = reader.submit(read, groups[0]) if groups else None
        for number, group in enumerate(groups):
            chunk_ids, values = pending.result()
            if number + 1 < len(groups):
                pending = reader.submit(read, groups[number + 1])
            images = torch.from_numpy(values).to(device)
            targets = (
                None
                if target_mode == "predicted"
                else torch.from_numpy(labels[group_positions(group)]).to(device)
            )
            failure = f"{out}: {method} produced NaN/inf maps for {primary}"
            results = compute_group(engine, images, targets, chunk_ids, failure)
            bar.update(write_group(writer, group, *results))
        bar.close()
        elapsed = time.perf_counter() - start_time
        writer.final_attrs["provenance"] = as_attr(
            stage.finish(
                n_maps=n,
                maps_per_second=round(n / max(elapsed, 1e-9), 2),
                gradient_evaluations_per_map=engine.gradient_evaluations,
                pass_size_used=engine.pass_size,
            )
        )
    log.info("%s/%s: %d maps in %.1fs", primary, method, n, time.perf_counter() - start_time)
