"""Map diagnostics: does a map store hold structure, or maps that the per-map scaling inflates?

The secondary scales every map to [0, 1] by its own largest value, so a map that is nearly flat
reaches it looking as strong as any other. :func:`store_diagnostics` reads one map store and
returns one row of numbers that say how much there was before that scaling:

* ``n_maps``: maps in the store.
* ``all_zero_fraction``: fraction of maps whose raw values are all exactly 0 (any method; e.g. a
  Meaningful Perturbation mask that never moved, or a gradient through dead ReLUs).
* ``near_empty_fraction``: fraction of maps whose reduced map (the secondary's default view:
  sum of |value| over channels) spans ``max - min < threshold`` *on the map's own absolute
  scale*. Only Meaningful Perturbation maps have one: each channel holds ``1 - up(m)``, the
  fraction of the pixel deleted, in [0, 1], so the reduced map is ``C * (1 - up(m))`` and its
  span divided by ``C`` is the span of the deleted fraction - with ``C = 1`` exactly the
  quantity the review measured, with a 0.05 threshold (5% of the pixel range); all-zero maps
  count as near-empty too. Gradient-based
  maps (Grad, SmoothGrad, IG) are in units of logit per input unit: their scale is set by the
  model and the image, not by the method, and float32 keeps their relative precision however
  small they are, so a small span is not missing structure (and a threshold relative to the
  store's largest map would measure the spread of map magnitudes over images, not emptiness).
  For them the column is NaN and ``all_zero_fraction`` is the check that applies.
* Meaningful Perturbation (from the store's ``mp_score`` and ``mask_area``): the median final
  target score and the median and mean deleted area.
* Integrated Gradients (from ``ig_sum`` and ``ig_delta``): the completeness ratio
  ``ig_sum / ig_delta`` (1 = the map accounts for the whole change of the target logit from the
  baseline to the image): its median and 5th-95th percentiles over maps with
  ``ig_delta != 0``.
* Input-agnostic class maps (from ``ia_success`` and ``ia_norm``): the median and mean fraction
  of the sample set (train split) a map moves to its class, and the median map norm.

A store written before these variables were recorded gets NaN in their columns and a ``notes``
entry saying so (rebuild it to fill them); nothing is estimated in their place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .method_names import short_name
from .provenance import Provenance
from .store import atomic_output, chunk_ranges, one_line, open_maps
from .tables import write_table

log = logging.getLogger(__name__)

NEAR_EMPTY_THRESHOLD = 0.05
MP = "meaningful_perturbation"
IG = "integrated_gradients"
MP_VARIABLES = ("mp_score", "mask_area")
IG_VARIABLES = ("ig_sum", "ig_delta")
IA = "input_agnostic"
IA_VARIABLES = ("ia_success", "ia_norm")
COLUMNS = [
    "method",
    "primary",
    "target",
    "n_maps",
    "near_empty_fraction",
    "all_zero_fraction",
    "mp_score_median",
    "mask_area_median",
    "mask_area_mean",
    "completeness_median",
    "completeness_q05",
    "completeness_q95",
    "ia_success_median",
    "ia_success_mean",
    "ia_norm_median",
    "notes",
]


def map_spans(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map of ``(N, C, H, W)`` raw maps: the span ``max - min`` of the channel-reduced map
    (sum of |value| over channels) and whether every raw value is exactly 0."""
    reduced = np.abs(maps.astype(np.float64, copy=False)).sum(axis=1).reshape(len(maps), -1)
    spans = reduced.max(axis=1) - reduced.min(axis=1)
    all_zero = ~np.any(maps.reshape(len(maps), -1) != 0, axis=1)
    return spans, all_zero


def read_spans(ds, path: str | Path, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`map_spans` of every map of an opened store, read ``chunk_size`` maps at a time."""
    spans, zeros = [], []
    for _, start, stop in chunk_ranges(ds.sizes["sample"], chunk_size):
        try:
            raw = np.asarray(ds["maps"].isel(sample=slice(start, stop)).values)
        except Exception as err:  # zarr and its codecs raise many types for damaged chunks
            raise DataError(
                f"{path}: map chunks are unreadable ({type(err).__name__}: {one_line(err)}); "
                "delete the store and rerun to rebuild it"
            ) from None
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: maps {start}-{stop - 1} hold NaN/inf (an incomplete store?)")
        s, z = map_spans(raw)
        spans.append(s)
        zeros.append(z)
    if not spans:
        return np.empty(0), np.empty(0, dtype=bool)
    return np.concatenate(spans), np.concatenate(zeros)


def completeness_ratio(ig_sum: np.ndarray, ig_delta: np.ndarray) -> np.ndarray:
    """``ig_sum / ig_delta`` per map; NaN where ``ig_delta`` is 0 (the ratio is undefined)."""
    ig_sum, ig_delta = np.asarray(ig_sum, float), np.asarray(ig_delta, float)
    out = np.full(ig_sum.shape, np.nan)
    defined = ig_delta != 0
    out[defined] = ig_sum[defined] / ig_delta[defined]
    return out


def _stat(values: np.ndarray, how: str, q: float | None = None) -> float:
    """NaN-ignoring median / mean / percentile; NaN when no value is finite."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    if how == "median":
        return float(np.median(values))
    if how == "mean":
        return float(np.mean(values))
    return float(np.percentile(values, q))


def _variables(ds, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The store's per-map variables ``names`` (None when any is missing: an older store)."""
    if not all(name in ds for name in names):
        return None
    return {name: np.asarray(ds[name].values, dtype=float) for name in names}


def store_diagnostics(
    path: str | Path, threshold: float = NEAR_EMPTY_THRESHOLD, chunk_size: int = 2048
) -> dict:
    """One row (dict with :data:`COLUMNS`) of diagnostics of the map store at ``path``.

    ``threshold``: a Meaningful Perturbation map is near-empty when its deleted fraction
    ``1 - up(m)`` spans less than this (an absolute fraction of the pixel range, 0.05 by default,
    as in the review); NaN for other methods (see the module docstring for why)."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"map diagnostics: threshold must be in [0, 1], got {threshold!r}")
    ds = open_maps(path)
    method, primary = str(ds["method"].values), str(ds["primary"].values)
    spans, all_zero = read_spans(ds, path, chunk_size)
    n = len(spans)
    if n == 0:
        raise DataError(f"{path}: holds no maps")
    row = dict.fromkeys(COLUMNS, float("nan"))
    target = json.loads(ds.attrs.get("provenance", "{}")).get("config", {}).get("target", "")
    row.update(method=method, primary=primary, target=target, n_maps=n, notes="")
    row["all_zero_fraction"] = float(all_zero.mean())
    notes = []
    if method == MP:
        channels = ds.sizes["channel"]
        row["near_empty_fraction"] = float((spans / channels < threshold).mean())
        values = _variables(ds, MP_VARIABLES)
        if values is None:
            notes.append(missing_note(MP_VARIABLES))
        else:
            row["mp_score_median"] = _stat(values["mp_score"], "median")
            row["mask_area_median"] = _stat(values["mask_area"], "median")
            row["mask_area_mean"] = _stat(values["mask_area"], "mean")
    elif method == IG:
        values = _variables(ds, IG_VARIABLES)
        if values is None:
            notes.append(missing_note(IG_VARIABLES))
        else:
            ratio = completeness_ratio(values["ig_sum"], values["ig_delta"])
            row["completeness_median"] = _stat(ratio, "median")
            row["completeness_q05"] = _stat(ratio, "percentile", 5)
            row["completeness_q95"] = _stat(ratio, "percentile", 95)
            undefined = int(np.isnan(ratio).sum())
            if undefined:
                notes.append(f"{undefined} maps with ig_delta = 0 left out of completeness")
    elif method == IA:
        values = _variables(ds, IA_VARIABLES)
        if values is None:
            notes.append(missing_note(IA_VARIABLES))
        else:
            row["ia_success_median"] = _stat(values["ia_success"], "median")
            row["ia_success_mean"] = _stat(values["ia_success"], "mean")
            row["ia_norm_median"] = _stat(values["ia_norm"], "median")
    row["notes"] = "; ".join(notes)
    return row


def missing_note(names: Sequence[str]) -> str:
    return (
        f"store lacks {', '.join(names)} (written before they were recorded; "
        "rebuild it to fill these columns)"
    )


def diagnostics_table(
    paths: Sequence[str | Path], threshold: float = NEAR_EMPTY_THRESHOLD
) -> pd.DataFrame:
    """One :func:`store_diagnostics` row per distinct store, in the order given."""
    rows = []
    for path in dict.fromkeys(str(p) for p in paths):
        row = store_diagnostics(path, threshold)
        if row["notes"]:
            log.warning("%s: %s", path, row["notes"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown_report(table: pd.DataFrame, threshold: float) -> str:
    """The table as markdown, with what each column means."""
    shown = table.copy()
    shown["method"] = [short_name(m) for m in shown["method"]]
    shown = shown.fillna({"notes": ""})
    return (
        "# Map diagnostics\n\n"
        "One row per map store. `all_zero_fraction`: maps whose raw values are all 0. "
        "`near_empty_fraction` (MP only, NaN for gradient maps, whose scale is arbitrary): "
        f"maps whose deleted fraction 1 - up(mask) spans less than {threshold:g} before the "
        "secondary's per-map scaling stretches it to [0, 1]. `mp_score_median`: the target "
        "score (softmax or logit, as configured) left on the image perturbed by the final "
        "mask. `mask_area_*`: the fraction of the image deleted. `completeness_*` (IG): sum of "
        "the map / (f(x) - f(baseline)) of the target logit, median and 5th-95th percentiles "
        "(1 = complete). `ia_*` (IA): fraction of the train split classified as the map's class "
        "after subtracting the map (median, mean) and the map's L2 norm (median).\n\n"
        + shown.to_markdown(index=False, floatfmt=".4g")
        + "\n"
    )


def write_diagnostics(
    *,
    paths: Sequence[str | Path],
    out_csv: str | Path,
    out_md: str | Path,
    threshold: float = NEAR_EMPTY_THRESHOLD,
) -> pd.DataFrame:
    """The diagnostics of every store in ``paths``: a CSV (with a provenance sidecar) and a
    markdown report, each written atomically."""
    stores = list(dict.fromkeys(str(p) for p in paths))
    prov = Provenance("map_diagnostics", {"stores": stores, "threshold": threshold})
    table = diagnostics_table(stores, threshold)
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_report(table, threshold))
    return table
