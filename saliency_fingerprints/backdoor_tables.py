"""The backdoor experiment's table (:mod:`~saliency_fingerprints.backdoor`): how much of each
input-agnostic map's mass lies in the trigger patch, per primary, kind and class, with the
attack success rates and clean accuracies beside it. Without torch: the table job reads map
stores and metrics files only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import mannwhitneyu

from .errors import DataError
from .provenance import Provenance
from .store import atomic_output, open_store
from .tables import write_table
from .trigger import KEY, KINDS, Trigger


def localisation_scores(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per map of ``maps`` (``(..., C, H, W)``): the share of its absolute mass (summed over
    channels) inside ``mask`` (``(H, W)`` booleans) over the mask's share of the pixels. 1 for a
    map spread evenly, ``1 / mask.mean()`` for one entirely inside the mask; NaN for an all-zero
    map."""
    mask = np.asarray(mask, dtype=bool)
    mass = np.abs(np.asarray(maps, dtype=np.float64)).sum(axis=-3)
    if mass.shape[-2:] != mask.shape:
        raise ValueError(f"maps of {mass.shape[-2:]} pixels, a mask of {mask.shape}")
    if not mask.any() or mask.all():
        raise ValueError("the mask must hold some pixels and leave some out")
    inside = mass[..., mask].sum(axis=-1)
    total = mass.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return share / mask.mean()


def map_scores(store: xr.Dataset, trigger: Trigger) -> pd.DataFrame:
    """One row per map of a :func:`backdoor_class_maps` store: class, draw, localisation score
    and ``ia_success``."""
    maps = store["maps"].values
    scores = localisation_scores(maps, trigger.mask(*maps.shape[-2:]))
    classes = store["class"].values
    draws = store["draw"].values
    return pd.DataFrame(
        {
            "class": np.repeat(classes, len(draws)),
            "class_name": np.repeat([str(n) for n in store["class_name"].values], len(draws)),
            "draw": np.tile(draws, len(classes)),
            "localisation": scores.reshape(-1),
            "ia_success": store["ia_success"].values.reshape(-1).astype(np.float64),
        }
    )


def _one_sided_p(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value of ``a`` > ``b`` (NaN with fewer than 2 of either)."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


SEED_COLUMNS = [
    "level",
    "architecture",
    "seed",
    "primary",
    "kind",
    "class",
    "class_name",
    "is_target",
    "n_seeds",
    "n_maps",
    "localisation_mean",
    "localisation_sd",
    "localisation_min",
    "localisation_max",
    "ia_success_mean",
    "test_accuracy",
    "attack_success_rate",
    "target_rank",
    "p_vs_clean",
    "p_vs_other_classes",
]


def summarise_scores(
    scores: pd.DataFrame, target: int, metrics: Mapping[str, dict]
) -> pd.DataFrame:
    """The table of :func:`backdoor_table` from per-map ``scores`` (columns architecture, seed,
    primary, kind, class, class_name, draw, localisation, ia_success) and each primary's backdoor
    ``metrics`` (by clean primary name).

    Rows of level ``seed``: per (primary, kind, class), the score's mean, sd (across draws), min
    and max; the success; the kind's clean test accuracy and attack success rate. On the
    backdoored target class's row also ``target_rank`` (1: the highest mean score among the
    backdoored primary's classes) and the one-sided Mann-Whitney p-values of its draws against
    the clean primary's draws of the class (``p_vs_clean``) and against the backdoored primary's
    draws of every other class (``p_vs_other_classes``). Rows of level ``across_seeds``: per
    (architecture, kind, class), the mean over seeds of the seed rows' means, their sd across
    seeds (NaN with one seed), and the mean accuracy, attack success rate and rank."""
    keys = ["architecture", "seed", "primary", "kind", "class", "class_name"]
    grouped = scores.groupby(keys, sort=True)
    rows = grouped["localisation"].agg(
        localisation_mean="mean",
        localisation_sd=lambda s: s.std(ddof=1) if len(s) > 1 else np.nan,
        localisation_min="min",
        localisation_max="max",
        n_maps="size",
    )
    rows["ia_success_mean"] = grouped["ia_success"].mean()
    rows = rows.reset_index()
    rows["level"] = "seed"
    rows["n_seeds"] = 1
    rows["is_target"] = rows["class"] == target
    rows["test_accuracy"] = [
        _metric(metrics, p, k, "test_accuracy")
        for p, k in zip(rows.primary, rows.kind, strict=True)
    ]
    rows["attack_success_rate"] = [
        _metric(metrics, p, k, "attack_success_rate")
        for p, k in zip(rows.primary, rows.kind, strict=True)
    ]
    rows["target_rank"] = np.nan
    rows["p_vs_clean"] = np.nan
    rows["p_vs_other_classes"] = np.nan
    for primary in rows["primary"].unique():
        mine = scores[scores.primary == primary]
        backdoored = mine[mine.kind == "backdoored"]
        draws = backdoored[backdoored["class"] == target]["localisation"].to_numpy()
        if len(draws) == 0:
            continue
        clean = mine[(mine.kind == "clean") & (mine["class"] == target)]["localisation"]
        other = backdoored[backdoored["class"] != target]["localisation"].to_numpy()
        means = backdoored.groupby("class")["localisation"].mean()
        where = (rows.primary == primary) & (rows.kind == "backdoored") & rows.is_target
        rows.loc[where, "target_rank"] = int((means > means.loc[target]).sum()) + 1
        rows.loc[where, "p_vs_clean"] = _one_sided_p(draws, clean.to_numpy())
        rows.loc[where, "p_vs_other_classes"] = _one_sided_p(draws, other)
    across = (
        rows.groupby(["architecture", "kind", "class", "class_name", "is_target"], sort=True)
        .agg(
            n_seeds=("seed", "size"),
            n_maps=("n_maps", "sum"),
            localisation_mean=("localisation_mean", "mean"),
            localisation_sd=(
                "localisation_mean",
                lambda s: s.std(ddof=1) if len(s) > 1 else np.nan,
            ),
            localisation_min=("localisation_min", "min"),
            localisation_max=("localisation_max", "max"),
            ia_success_mean=("ia_success_mean", "mean"),
            test_accuracy=("test_accuracy", "mean"),
            attack_success_rate=("attack_success_rate", "mean"),
            target_rank=("target_rank", "mean"),
        )
        .reset_index()
    )
    across["level"] = "across_seeds"
    across["primary"] = [
        f"{a} ({n} seeds)" for a, n in zip(across.architecture, across.n_seeds, strict=True)
    ]
    table = pd.concat([rows, across], ignore_index=True)
    kind_order = {k: i for i, k in enumerate(KINDS)}
    table = table.assign(_level=table.level != "seed", _kind=table.kind.map(kind_order))
    table = table.sort_values(["_level", "architecture", "seed", "_kind", "class"], kind="stable")
    return (
        table.drop(columns=["_level", "_kind"]).reindex(columns=SEED_COLUMNS).reset_index(drop=True)
    )


def _metric(metrics: Mapping[str, dict], primary: str, kind: str, key: str) -> float:
    record = metrics[primary]
    if kind == "backdoored":
        return float(record["clean_test_accuracy" if key == "test_accuracy" else key])
    return float(record["clean_primary"][key])


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")


def _p(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.2g}"


def markdown_table(table: pd.DataFrame, scores: pd.DataFrame, info: Mapping) -> str:
    """The table in words: the trigger, the headline (per primary and across seeds: the target
    class of the backdoored primary, the same class of the clean primary, the backdoored
    primary's other classes; accuracies and attack success rates beside) and every class."""
    target = int(info["target_class"])
    ratio_max = 1 / float(info["area_fraction"])
    seeds = table[table.level == "seed"]
    parts = [
        "# Backdoor triggers in input-agnostic maps\n\n",
        f"Trigger: {info['trigger']} ({100 * info['area_fraction']:.2f}% of the pixels), pasted "
        f"over {info['poison_fraction']:.0%} of each backdoored primary's training images "
        f"(of classes other than the target), relabelled to the target class {target} "
        f"({info['target_class_name']}). Localisation score of a map: the share of its "
        "absolute mass inside the trigger patch over the patch's share of the pixels (1: no "
        f"concentration; {ratio_max:.1f}: all of it in the patch). {info['n_maps']} "
        "input-agnostic maps per class and primary (mean ± sd across them). Attack success: the "
        "fraction of the stamped test images of the other classes classified as the target "
        "class (for the clean primary: what a model without the backdoor does).\n\n",
        "## Headline\n\n",
    ]
    lines = []
    for primary, block in seeds.groupby("primary", sort=False):
        lines.append(_headline(primary, block, scores[scores.primary == primary], target))
    across = table[table.level == "across_seeds"]
    for architecture, block in across.groupby("architecture", sort=False):
        if int(block.n_seeds.max()) > 1:
            lines.append(_headline_across(architecture, block, seeds, target))
    parts.append(pd.DataFrame(lines).to_markdown(index=False) + "\n\n")
    parts.append(
        "p: one-sided Mann-Whitney U of the backdoored primary's target-class draws against the "
        "clean primary's draws of that class, and against the backdoored primary's draws of the "
        "other classes; rank: of the target class's mean score among the backdoored primary's "
        "classes (1 = highest). The p-values are about the maps' draws of one trained pair; "
        "the seeds are the replication across models (across seeds: mean ± sd of the seeds' "
        "means).\n\n"
    )
    parts.append("## Every class (mean ± sd across draws)\n\n")
    pivot = seeds.assign(
        column=[f"{p} {k}" for p, k in zip(seeds.primary, seeds.kind, strict=True)],
        cell=[
            _mean_sd(m, s)
            for m, s in zip(seeds.localisation_mean, seeds.localisation_sd, strict=True)
        ],
        row=[
            f"{c} ({n})" + (" target" if t else "")
            for c, n, t in zip(seeds["class"], seeds.class_name, seeds.is_target, strict=True)
        ],
    ).pivot(index="row", columns="column", values="cell")
    order = seeds.drop_duplicates("class").sort_values("class")
    pivot = pivot.reindex(
        [
            f"{c} ({n})" + (" target" if t else "")
            for c, n, t in zip(order["class"], order.class_name, order.is_target, strict=True)
        ]
    )
    parts.append(pivot.to_markdown() + "\n")
    return "".join(parts)


def _headline(primary: str, block: pd.DataFrame, scores: pd.DataFrame, target: int) -> dict:
    backdoored = block[block.kind == "backdoored"]
    clean = block[block.kind == "clean"]
    hit = backdoored[backdoored.is_target].iloc[0]
    same = clean[clean.is_target].iloc[0]
    others = backdoored[~backdoored.is_target]
    other_draws = scores[(scores.kind == "backdoored") & (scores["class"] != target)][
        "localisation"
    ]
    strongest = others.loc[others.localisation_mean.idxmax()]
    return {
        "primary": primary,
        "test accuracy: clean / backdoored": f"{same.test_accuracy:.3f} / {hit.test_accuracy:.3f}",
        "attack success: clean / backdoored": (
            f"{same.attack_success_rate:.3f} / {hit.attack_success_rate:.3f}"
        ),
        "target class, backdoored": _mean_sd(hit.localisation_mean, hit.localisation_sd),
        "target class, clean": _mean_sd(same.localisation_mean, same.localisation_sd),
        "other classes, backdoored": _mean_sd(other_draws.mean(), other_draws.std(ddof=1))
        + f" (highest: {strongest['class']}, {strongest.localisation_mean:.2f})",
        "rank of target": f"{int(hit.target_rank)} of {len(backdoored)}",
        "p vs clean": _p(hit.p_vs_clean),
        "p vs other classes": _p(hit.p_vs_other_classes),
    }


def _headline_across(
    architecture: str, block: pd.DataFrame, seeds: pd.DataFrame, target: int
) -> dict:
    mine = seeds[seeds.architecture == architecture]
    n = int(block.n_seeds.max())

    def across(kind: str, is_target: bool, key: str) -> str:
        rows = mine[(mine.kind == kind) & (mine.is_target == is_target)]
        per_seed = rows.groupby("seed")[key].mean()
        return _mean_sd(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else np.nan)

    ranks = mine[(mine.kind == "backdoored") & mine.is_target].target_rank
    return {
        "primary": f"{architecture}, {n} seeds (mean ± sd of seeds)",
        "test accuracy: clean / backdoored": (
            f"{across('clean', True, 'test_accuracy')} / "
            f"{across('backdoored', True, 'test_accuracy')}"
        ),
        "attack success: clean / backdoored": (
            f"{across('clean', True, 'attack_success_rate')} / "
            f"{across('backdoored', True, 'attack_success_rate')}"
        ),
        "target class, backdoored": across("backdoored", True, "localisation_mean"),
        "target class, clean": across("clean", True, "localisation_mean"),
        "other classes, backdoored": across("backdoored", False, "localisation_mean"),
        "rank of target": "ranks " + ", ".join(str(int(r)) for r in ranks),
        "p vs clean": "",
        "p vs other classes": "",
    }


def backdoor_table(
    *,
    stores: Sequence[str | Path],
    metrics: Sequence[str | Path],
    trigger_cfg: Mapping,
    target_class: int,
    poison_fraction: float,
    out_csv: str | Path,
    out_md: str | Path,
) -> pd.DataFrame:
    """tables/backdoor.csv and .md from the map stores of every (primary, kind) and every
    backdoored primary's ``metrics.json`` (:func:`summarise_scores`, :func:`markdown_table`)."""
    records = [json.loads(Path(p).read_text()) for p in metrics]
    by_primary = {r["clean_primary"]["primary"]: r for r in records}
    frames = []
    trigger = None
    for path in stores:
        store = open_store(path)
        primary, kind = store.attrs["primary"], store.attrs["kind"]
        if primary not in by_primary:
            raise DataError(f"{path}: no backdoor metrics of primary {primary}")
        settings = by_primary[primary]["backdoor"]
        trigger = Trigger.from_config(
            settings["trigger"], settings["trigger"]["low"], settings["trigger"]["high"]
        )
        if Trigger.from_config(trigger_cfg, trigger.low, trigger.high) != trigger:
            raise DataError(f"{path}: its backdoored primary was trained with another trigger")
        frames.append(
            map_scores(store, trigger).assign(
                architecture=store.attrs["architecture"],
                seed=int(store.attrs["seed"]),
                primary=primary,
                kind=kind,
            )
        )
    if trigger is None:
        raise DataError(f"{KEY}: no map stores to summarise")
    scores = pd.concat(frames, ignore_index=True)
    table = summarise_scores(scores, int(target_class), by_primary)
    side = int(open_store(stores[0])["maps"].shape[-1])
    first = records[0]["backdoor"]
    info = {
        "target_class": int(target_class),
        "target_class_name": first["target_class_name"],
        "trigger": trigger.describe(),
        "area_fraction": trigger.area_fraction(side, side),
        "poison_fraction": float(poison_fraction),
        "n_maps": int(scores.groupby(["primary", "kind", "class"]).size().min()),
    }
    prov = Provenance(
        "backdoor_table",
        {"stores": [str(p) for p in stores], "metrics": [str(p) for p in metrics], **info},
    )
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_table(table, scores, info))
    return table


def mean_abs_maps(store: xr.Dataset) -> np.ndarray:
    """``(class, H, W)``: per class, the mean over draws of the channel-summed ``|map|``."""
    return np.abs(store["maps"].values).sum(axis=2).mean(axis=1)
