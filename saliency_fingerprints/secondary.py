"""Secondary classifiers: learn which primary made a saliency map.

A secondary of an experiment sees the maps of one method from every primary of that experiment
(label = the primary's position in the experiment's list). The train/test split is by *source
image*: all maps of an image, from every primary and every method, fall on the same side, so no
test map comes from an image whose map was used in training. Inside the training images a seeded
*validation* split (``secondary.validation_fraction``, again by source image) chooses the epoch
the secondary keeps (highest validation accuracy; ``secondary.patience`` stops early) and, where
``secondary.learning_rate`` lists candidates, the learning rate (each candidate trained from the
same initialisation on the same batches, :func:`~.training.select_candidate`): nothing is chosen by
looking at the test maps, which the cross-evaluation scores once.

A *replicate* (config ``replicates``) is one secondary with its own seed (``secondary.seed`` plus
the replicate index) and, with ``replicates.disjoint_primaries``, its own set of primaries; the
rules pass each replicate's primaries and seed in.

Map preprocessing (config ``secondary.preprocess``, applied per map): :mod:`.preprocess`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .configuration import learning_rate_candidates, schema_defaults
from .errors import ConfigError, DataError
from .models import build_model
from .preprocess import preprocess_maps
from .runtime import describe_device, set_determinism
from .saliency import open_maps
from .shuffle import apply_variant
from .stacked import train_models
from .stage import Stage
from .store import chunk_ranges, one_line
from .training import TrainSettings, save_model, select_candidate, select_epoch

log = logging.getLogger(__name__)

FIT_FRACTION = schema_defaults("properties", "secondary")["fit_fraction"]
"""The schema's default ``secondary.fit_fraction`` (every fitting image). The rules leave the key
out of a job's params at this value (rules/common.smk, ``secondary_params``), so that results from
before the key keep their params: the job applies it here."""


def image_disjoint_split(
    sample_ids: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of *source images* into secondary-train and secondary-test ids (sorted)."""
    return _split(sample_ids, test_fraction, [seed, 0x5EC0], "maps of at least 2 images to split")


def validation_split(
    train_ids: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the secondary's *training images* into fitting and validation ids
    (sorted, disjoint, their union ``train_ids``): the validation maps choose the kept epoch."""
    return _split(
        train_ids,
        validation_fraction,
        [seed, 0x7A11D],
        "at least 2 training images to hold some out",
    )


def fit_subset(fit_ids: np.ndarray, fit_fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fit_fraction`` of the fitting images (``secondary.fit_fraction``, sorted, at
    least one): what the secondary is fitted on. Validation and test images are not touched, and
    the images of a smaller fraction are among those of a larger one (one permutation, cut)."""
    ids = np.unique(np.asarray(fit_ids))
    if fit_fraction == 1:
        return ids
    order = np.random.default_rng([seed, 0xF17]).permutation(ids)
    return np.sort(order[: max(1, round(len(ids) * fit_fraction))])


def _split(ids, fraction: float, key: list[int], need: str) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)``: a seeded ``fraction`` of the unique ``ids`` held out (at least one,
    never all), both sorted."""
    ids = np.unique(np.asarray(ids))
    if len(ids) < 2:
        raise DataError(f"need {need}, got {len(ids)}")
    order = np.random.default_rng(key).permutation(ids)
    n_out = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    return np.sort(order[n_out:]), np.sort(order[:n_out])


@dataclass
class MapSet:
    """Preprocessed maps of one method, all primaries of an experiment, one side of the split."""

    x: np.ndarray  # (P * n, C', H, W) float32
    y: np.ndarray  # (P * n,) primary index
    sample: np.ndarray  # (P * n,) source image id
    target: np.ndarray  # (P * n,) the class the map explains

    def subset(self, ids: np.ndarray) -> MapSet:
        """The maps of the source images ``ids``."""
        keep = np.isin(self.sample, ids)
        return MapSet(self.x[keep], self.y[keep], self.sample[keep], self.target[keep])


def store_sample_ids(paths: list[str | Path]) -> np.ndarray:
    """Sample ids the stores hold; every store of an experiment must hold the same ones."""
    reference = None
    for path in paths:
        ids = open_maps(path)["sample"].values
        if reference is None:
            reference = ids
        elif not np.array_equal(ids, reference):
            raise DataError(f"{path}: holds maps of other images than {paths[0]}")
    return reference


def load_mapset(
    paths: list[str | Path],
    primaries: list[str],
    ids: np.ndarray,
    cfg: dict,
    variant: str,
    chunk_size: int = 4096,
) -> MapSet:
    """Read, check, preprocess and (for shuffled variants) permute the maps of ``ids``.

    Streams each store chunk by chunk: memory holds the preprocessed maps only.
    """
    pre = cfg["preprocess"]  # schema-filled; shuffle_seed is absent where no variant shuffles
    xs, ys, samples, targets = [], [], [], []
    for index, (path, primary) in enumerate(zip(paths, primaries, strict=True)):
        ds = open_maps(path)
        if str(ds["primary"].values) != primary:
            raise DataError(f"{path}: holds maps of {ds['primary'].values}, expected {primary}")
        if "target" not in ds.coords:
            raise DataError(
                f"{path}: no 'target' coordinate; expected the class each map explains (a store "
                "written by compute_saliency)"
            )
        positions = np.flatnonzero(np.isin(ds["sample"].values, ids))
        nonzero = False
        for _, start, stop in chunk_ranges(len(positions), chunk_size):
            part = ds["maps"].isel(sample=positions[start:stop])
            try:
                raw = part.values
            except Exception as err:  # zarr and its codecs raise many types for damaged chunks
                raise DataError(
                    f"{path}: map chunks are unreadable ({type(err).__name__}: {one_line(err)}); "
                    "expected a complete map store - delete it and rerun to recompute it"
                ) from None
            if not np.isfinite(raw).all():
                raise DataError(
                    f"{path}: maps contain NaN or infinite values (or chunks are missing); "
                    "expected finite maps - delete the store and rerun to recompute it"
                )
            nonzero = nonzero or bool(np.any(raw))
            x = preprocess_maps(raw, pre["reduce"], pre["clip_percentile"])
            sample = part["sample"].values
            xs.append(apply_variant(x, variant, cfg.get("shuffle_seed"), primary, sample))
            ys.append(np.full(len(x), index, dtype=np.int64))
            samples.append(sample)
            targets.append(part["target"].values.astype(np.int64))
        if not nonzero:
            raise DataError(
                f"{path}: every map is all-zero (a dead model or a broken method); expected "
                "maps with some non-zero attribution"
            )
    return MapSet(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(samples), np.concatenate(targets)
    )


def split_ids(paths: list[str | Path], cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    return image_disjoint_split(
        store_sample_ids(paths), float(cfg["test_fraction"]), int(cfg["split_seed"])
    )


def replicate_maps(
    replicates: list[dict], methods: list[str], target: str, stores: list[str | Path]
) -> list[dict]:
    """``replicates`` (each with ``primaries``) with ``maps``: method -> the store of each of its
    primaries, found among ``stores`` (paths ending in ``<target>/<method>/<primary>.zarr``)."""
    by_name = {"/".join(Path(p).parts[-3:]): str(p) for p in stores}
    found = []
    for rep in replicates:
        maps = {}
        for method in methods:
            keys = [f"{target}/{method}/{primary}.zarr" for primary in rep["primaries"]]
            missing = [k for k in keys if k not in by_name]
            if missing:
                raise DataError(f"no map store {missing[0]} among the job's inputs")
            maps[method] = [by_name[k] for k in keys]
        found.append({**rep, "maps": maps})
    return found


def to_tensors(maps: MapSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(maps.x).to(device), torch.from_numpy(maps.y).to(device)


def train_secondary(
    *,
    experiment: str,
    method: str,
    variant: str,
    replicates: list[dict],
    cfg: dict,
    weights_out: str | Path,
    metrics_out: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> dict:
    """Train every replicate of the secondary of (``experiment``, ``method``, ``variant``).

    ``replicates``: one dict per replicate with ``replicate`` (index), ``seed``, ``primaries``
    (names in label order) and ``maps`` (one store per primary, same order). Each replicate is
    trained exactly as if alone (its own seed, determinism reset), on its fitting maps, keeping
    its best validation epoch (and, with learning-rate candidates, the candidate best on
    validation); the test maps are not read. ``cfg``: the experiment's secondary block (its
    ``seed`` is replaced by each replicate's). All replicates' weights go into one safetensors
    file (``rep<r>.`` prefixes), their metrics into one JSON file."""
    stage = Stage(
        "train_secondary",
        {
            "experiment": experiment,
            "method": method,
            "variant": variant,
            "replicates": [
                {k: r[k] for k in ("replicate", "seed", "primaries")} for r in replicates
            ],
            **cfg,
        },
        device,
    )
    rates = learning_rate_candidates(cfg["learning_rate"])
    settings = TrainSettings.from_config({**cfg, "learning_rate": rates[0]})
    prepared = [
        _prepare_replicate(rep, experiment, method, variant, cfg, device, threads)
        for rep in replicates
    ]
    # every (replicate, candidate) is one training; candidates start from the replicate's init
    runs = [(p, rate) for p in prepared for rate in rates]
    trained = [p.model if len(rates) == 1 else copy.deepcopy(p.model) for p, _ in runs]
    histories = train_models(
        trained,
        [p.fit for p, _ in runs],
        settings,
        [p.seed for p, _ in runs],
        [p.name if len(rates) == 1 else f"{p.name} lr {rate:g}" for p, rate in runs],
        validations=[p.validation for p, _ in runs],
        patience=cfg["patience"],
        full_train_accuracy=False,
        threads=threads,
        learning_rates=[rate for _, rate in runs],
    )
    models, records = {}, []
    for r, p in enumerate(prepared):
        own = slice(r * len(rates), (r + 1) * len(rates))
        searched = [_candidate(rate, h) for rate, h in zip(rates, histories[own], strict=True)]
        chosen = select_candidate(histories[own], rates)
        models[f"rep{p.record['replicate']}"] = trained[own][chosen]
        if len(rates) > 1:
            log.info(
                "%s: learning rate %g chosen on validation maps (%s)",
                p.name,
                rates[chosen],
                ", ".join(
                    f"{c['learning_rate']:g}: {c['validation_accuracy']:.3f}" for c in searched
                ),
            )
        records.append(
            {
                **p.record,
                **searched[chosen],
                "map_shape": p.map_shape,  # the secondary's input: channels, side
                **({"learning_rate_search": searched} if len(rates) > 1 else {}),
            }
        )
    channels, size = records[0]["map_shape"]
    n_primaries = len(replicates[0]["primaries"])
    # how each replicate was trained travels with its weights, to the cross-evaluation's rows
    training = {
        f"rep{r['replicate']}.{key}": str(r[field])
        for r in records
        for key, field in (("learning_rate", "learning_rate"), ("epoch", "selected_epoch"))
    }
    save_model(
        models, weights_out, cfg["architecture"], channels, size, n_primaries, metadata=training
    )
    metrics = {
        "experiment": experiment,
        "method": method,
        "variant": variant,
        "replicates": records,
    }
    return stage.write_metrics(metrics_out, metrics)


def _candidate(rate: float, history: list[dict]) -> dict:
    """One validated training's record: its learning rate, kept epoch and history."""
    kept = select_epoch(history)
    return {
        "learning_rate": rate,
        "epochs_run": len(history),
        "selected_epoch": kept,
        "validation_accuracy": history[kept - 1]["validation_accuracy"],
        "validation_loss": history[kept - 1]["validation_loss"],
        "history": history,
    }


@dataclass
class _Replicate:
    """One replicate ready to train: its model (initialised with its seed) and its maps."""

    name: str
    seed: int
    model: torch.nn.Module
    fit: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    map_shape: list[int]
    record: dict


def _prepare_replicate(
    rep: dict,
    experiment: str,
    method: str,
    variant: str,
    cfg: dict,
    device: torch.device,
    threads: int | None,
) -> _Replicate:
    primaries, map_paths, seed = rep["primaries"], rep["maps"], int(rep["seed"])
    if len(primaries) < 2:
        raise ConfigError(f"experiments.{experiment}: needs at least 2 primaries to tell apart")
    set_determinism(seed, threads)
    train_ids, test_ids = split_ids(map_paths, cfg)
    fit_ids, val_ids = validation_split(
        train_ids, float(cfg["validation_fraction"]), int(cfg["split_seed"])
    )
    fraction = float(cfg.get("fit_fraction", FIT_FRACTION))  # absent at the default: see there
    fit_ids = fit_subset(fit_ids, fraction, int(cfg["split_seed"]))
    maps = load_mapset(map_paths, primaries, train_ids, cfg, variant)
    fit, val = maps.subset(fit_ids), maps.subset(val_ids)
    _, channels, size, _ = fit.x.shape
    torch.manual_seed(seed)
    try:
        model = build_model(cfg["architecture"], channels, size, len(primaries))
    except ConfigError as err:
        raise ConfigError(f"experiments.{experiment}.secondary.architecture: {err}") from None
    name = f"{experiment}/{method}/{variant}/rep{rep['replicate']}"
    log.info(
        "%s: %d fitting maps, %d validation maps (%d test images held out), primaries %s, "
        "seed %d, device %s",
        name,
        len(fit.y),
        len(val.y),
        len(test_ids),
        ", ".join(primaries),
        seed,
        describe_device(device),
    )
    return _Replicate(
        name=name,
        seed=seed,
        model=model.to(device),
        fit=to_tensors(fit, device),
        validation=to_tensors(val, device),
        map_shape=[channels, size],
        record={
            "replicate": rep["replicate"],
            "seed": seed,
            "primaries": primaries,
            "n_fit": len(fit.y),
            "n_validation": len(val.y),
            "n_fit_images": len(fit_ids),
            "n_validation_images": len(val_ids),
            "n_test_images": len(test_ids),
        },
    )
