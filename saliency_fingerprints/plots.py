"""Figures: cross-evaluation heatmaps (Table 1 layout) and grids of example maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .method_names import short_name  # noqa: E402
from .preprocess import preprocess_maps  # noqa: E402
from .shuffle import apply_variant  # noqa: E402
from .store import atomic_output, open_maps, open_store  # noqa: E402
from .tables import as_matrix  # noqa: E402


def spread_sample(ids: np.ndarray, n: int) -> np.ndarray:
    """``n`` ids evenly spaced over the sorted ``ids``: image-folder datasets are ordered by
    class, so the first ``n`` would all be one class."""
    if len(ids) <= n:
        return ids
    return ids[np.linspace(0, len(ids) - 1, n).round().astype(int)]


def show_input(ax, image: np.ndarray) -> None:
    """An input image ``(channel, y, x)`` in [0, 1]: grey for one channel, RGB for three."""
    shown = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    ax.imshow(np.clip(shown, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def _save(fig, out: str | Path, dpi: int) -> None:
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_heatmap(
    *, table: pd.DataFrame, out: str | Path, title: str, cmap: str = "viridis", dpi: int = 150
) -> None:
    """Accuracy heatmap, rows: test method, columns: training method; chance marked."""
    matrix = as_matrix(table)
    chance = float(table["chance"].iloc[0])
    fig, ax = plt.subplots(figsize=(1.2 * matrix.shape[1] + 2.2, 1.0 * matrix.shape[0] + 1.6))
    image = ax.imshow(matrix.values, vmin=0, vmax=1, cmap=cmap)
    for (i, j), value in np.ndenumerate(matrix.values):
        colour = "black" if value > 0.6 else "white"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns)
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    ax.set_xlabel("secondary trained on")
    ax.set_ylabel("tested on")
    ax.set_title(
        f"{title}\n(chance {chance:.2f}, n_test {int(table['n_test'].min())}"
        + (
            f", mean of {int(table['n_replicates'].max())} replicates"
            if "n_replicates" in table and table["n_replicates"].max() > 1
            else ""
        )
        + ")",
        fontsize=10,
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.axhline(chance, color="red", linewidth=1.5)
    bar.set_label("accuracy (red: chance)")
    _save(fig, out, dpi)


def map_grid_rows(
    stores: dict[str, dict[str, str | Path]],
    sample_ids: np.ndarray,
    variants: list[str],
    preprocess: dict,
    shuffle_seed: int,
) -> list[tuple[str, np.ndarray]]:
    """(label, maps of ``sample_ids`` as the secondary sees them) per (method, primary, variant)."""
    rows = []
    for method, by_primary in stores.items():
        for primary, path in by_primary.items():
            ds = open_maps(path)
            positions = [int(np.flatnonzero(ds["sample"].values == s)[0]) for s in sample_ids]
            maps = preprocess_maps(
                ds["maps"].isel(sample=positions).values,
                preprocess["reduce"],
                preprocess["clip_percentile"],
            )
            for variant in variants:
                shown = apply_variant(maps, variant, shuffle_seed, primary, sample_ids)
                label = f"{short_name(method)}\n{primary}"
                if variant != "original":
                    label += f"\n{variant}"
                rows.append((label, shown))
    return rows


def _draw_map_grid(fig, rows, sample_ids, cmap, dataset=None, title=None, min_rows=0) -> None:
    """Rows of maps (and optionally the images on top) into a figure or subfigure; at least
    ``min_rows`` rows of axes (unused ones hidden), so panels side by side share a row height."""
    n_rows = len(rows) + (1 if dataset is not None else 0)
    axes = fig.subplots(max(n_rows, min_rows), len(sample_ids), squeeze=False)
    for ax in axes[n_rows:].flat:
        ax.set_axis_off()
    offset = 0
    if dataset is not None:
        images = dataset["image"].isel(sample=list(sample_ids)).values
        for j, image in enumerate(images):
            show_input(axes[0, j], image)
        axes[0, 0].set_ylabel("image", rotation=0, ha="right", va="center", fontsize=7)
        offset = 1
    for i, (label, maps) in enumerate(rows, start=offset):
        for j in range(len(sample_ids)):
            axes[i, j].imshow(
                maps[j, 0] if maps.shape[1] == 1 else np.abs(maps[j]).sum(0),
                cmap=cmap,
                vmin=0 if maps.min() >= 0 else None,
            )
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes[:n_rows].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j, sample in enumerate(sample_ids):
        axes[0, j].set_title(f"#{sample}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)


def plot_map_grid(
    *,
    stores: dict[str, dict[str, str | Path]],
    out: str | Path,
    n_images: int,
    variants: list[str],
    preprocess: dict,
    shuffle_seed: int,
    cmap: str = "gray",
    dpi: int = 150,
    dataset=None,
) -> None:
    """Example maps of the same images: one row per (method, primary[, variant]), one column
    per image (the paper's Figures 1 and 2). ``stores``: method -> primary -> store path."""
    first = next(iter(next(iter(stores.values())).values()))
    sample_ids = spread_sample(open_maps(first)["sample"].values, n_images)
    rows = map_grid_rows(stores, sample_ids, variants, preprocess, shuffle_seed)
    n_rows = len(rows) + (1 if dataset is not None else 0)
    fig = plt.figure(figsize=(1.1 * len(sample_ids) + 1.5, 1.1 * n_rows))
    _draw_map_grid(fig, rows, sample_ids, cmap, dataset)
    _save(fig, out, dpi)


def class_map_rows(stores: dict[str, str | Path]) -> tuple[list[int], dict[str, dict]]:
    """Per primary (in order): class -> ``(map (C, H, W), ia_success or nan, draws)``, the map
    being the class's first draw (the row with the lowest sample id whose target is the class);
    and the classes any primary has, sorted."""
    rows: dict[str, dict] = {}
    for primary, path in stores.items():
        ds = open_maps(path)
        targets = ds["target"].values
        success = ds["ia_success"].values if "ia_success" in ds else np.full(len(targets), np.nan)
        order = np.argsort(ds["sample"].values, kind="stable")
        per_class = {}
        for label in np.unique(targets):
            where = order[targets[order] == label]
            first = int(where[0])
            per_class[int(label)] = (
                np.asarray(ds["maps"].isel(sample=first).values, dtype=np.float32),
                float(success[first]),
                len(where),
            )
        rows[primary] = per_class
    classes = sorted({label for per_class in rows.values() for label in per_class})
    return classes, rows


def _map_image(nu: np.ndarray) -> np.ndarray:
    """A signed map ``(C, H, W)`` as an image: min-max scaled to [0, 1] (the paper's display);
    RGB ``(H, W, 3)`` for three channels, ``(H, W)`` otherwise (channel mean)."""
    image = nu.transpose(1, 2, 0) if nu.shape[0] == 3 else nu.mean(axis=0)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def plot_class_maps(
    *,
    stores: dict[str, str | Path],
    out: str | Path,
    class_names: list[str] | None = None,
    cmap: str = "gray",
    dpi: int = 150,
    title: str | None = None,
) -> None:
    """Input-agnostic class maps per primary (Akhtar & Jalwana 2023, Fig. 3, for our
    primaries): one row per primary, one column per class; each cell the class's first draw in
    the primary's ``input_agnostic`` store, min-max scaled, titled with its ``ia_success`` (the
    fraction of the train split it moves to the class). ``stores``: primary -> store path."""
    classes, rows = class_map_rows(stores)
    fig, axes = plt.subplots(
        len(rows),
        len(classes),
        figsize=(1.1 * len(classes) + 1.5, 1.25 * len(rows) + 0.4),
        squeeze=False,
    )
    for r, (primary, per_class) in enumerate(rows.items()):
        for c, label in enumerate(classes):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if label in per_class:
                nu, success, draws = per_class[label]
                ax.imshow(_map_image(nu), cmap=cmap, interpolation="nearest")
                if np.isfinite(success):
                    ax.set_xlabel(f"{success:.2f} ({draws})", fontsize=6)
            else:
                ax.set_axis_off()
            if r == 0:
                name = class_names[label] if class_names and label < len(class_names) else label
                ax.set_title(str(name), fontsize=7)
        axes[r, 0].set_ylabel(primary, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(
        title or "Input-agnostic class maps (below: success on the train split, draws)",
        fontsize=8,
    )
    _save(fig, out, dpi)


def plot_paper_figure(
    *,
    panels: list[dict],
    out: str | Path,
    n_images: int,
    preprocess: dict,
    shuffle_seed: int,
    cmap: str = "gray",
    dpi: int = 150,
    dataset=None,
) -> None:
    """The paper's Figures 1 and 2 side by side, on the same images: each panel is
    ``{"title", "stores": method -> primary -> path, "variants"}`` (optionally with its own
    ``"preprocess"`` and ``"shuffle_seed"``), e.g. (a) Grad maps of two ResNets and their
    pixel-shuffled versions, (b) every method's maps of two 2-layer CNNs."""
    if not panels:
        raise ValueError("plot_paper_figure needs at least one panel")
    common = None
    for panel in panels:
        for by_primary in panel["stores"].values():
            for path in by_primary.values():
                ids = open_maps(path)["sample"].values
                common = ids if common is None else np.intersect1d(common, ids)
    sample_ids = spread_sample(np.sort(common), n_images)
    panel_rows = [
        map_grid_rows(
            p["stores"],
            sample_ids,
            p["variants"],
            p.get("preprocess", preprocess),
            int(p.get("shuffle_seed", shuffle_seed)),
        )
        for p in panels
    ]
    tallest = max(len(rows) for rows in panel_rows) + (1 if dataset is not None else 0)
    fig = plt.figure(
        figsize=((1.1 * len(sample_ids) + 1.6) * len(panels), 1.1 * tallest + 0.6),
        layout="constrained",
    )
    subfigs = np.atleast_1d(fig.subfigures(1, len(panels), wspace=0.05))
    for sub, panel, rows in zip(subfigs, panels, panel_rows, strict=True):
        _draw_map_grid(sub, rows, sample_ids, cmap, dataset, panel["title"], tallest)
    _save(fig, out, dpi)


# -- sanity checks -------------------------------------------------------------------------------


def plot_sanity_curves(*, summary: pd.DataFrame, out: str | Path, dpi: int = 150) -> None:
    """Adebayo et al.'s figure: median Spearman rank correlation of |map| (band: quartiles)
    with the trained model's maps, as the weight layers are randomised from the top (dashed: the
    smooth ladder, sMPRT, where the summary has it); then the random-label primary and the input
    shift. One panel per primary, one line per method."""
    primaries = list(dict.fromkeys(summary["primary"]))
    fig, axes = plt.subplots(
        1, len(primaries), figsize=(6.5 * len(primaries), 4.2), squeeze=False, sharey=True
    )
    for ax, primary in zip(axes[0], primaries, strict=True):
        block = summary[summary["primary"] == primary]
        ladder = block[block["test"].str.startswith("randomised")]
        steps = ladder.drop_duplicates("step").sort_values("step")
        labels = list(steps["layer"])
        extra = [t for t in ("random_labels", "input_shift") if t in set(block["test"])]
        for index, (method, rows) in enumerate(block.groupby("method", sort=False)):
            colour = f"C{index}"
            line = rows[rows["test"].str.startswith("randomised")].sort_values("step")
            ax.plot(
                line["step"],
                line["spearman_abs_median"],
                "o-",
                color=colour,
                label=short_name(method),
            )
            ax.fill_between(
                line["step"],
                line["spearman_abs_q1"],
                line["spearman_abs_q3"],
                color=colour,
                alpha=0.15,
            )
            smooth = rows[rows["test"].str.startswith("smooth_randomised")].sort_values("step")
            if len(smooth):
                ax.plot(
                    smooth["step"],
                    smooth["spearman_abs_median"],
                    "^--",
                    color=colour,
                    alpha=0.7,
                    label=f"{short_name(method)} (sMPRT)",
                )
            for offset, test in enumerate(extra, start=len(labels) + 1):
                point = rows[rows["test"] == test]
                if point.empty:
                    continue
                median = float(point["spearman_abs_median"].iloc[0])
                low = median - float(point["spearman_abs_q1"].iloc[0])
                high = float(point["spearman_abs_q3"].iloc[0]) - median
                ax.errorbar(  # side by side: equal values would hide each other
                    offset + 0.12 * (index - 1),
                    median,
                    yerr=[[low], [high]],
                    fmt="s",
                    color=colour,
                    capsize=3,
                )
        ticks = labels + [t.replace("_", " ") for t in extra]
        ax.set_xticks(range(1, len(ticks) + 1), ticks, rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylim(-0.5, 1.05)
        mode = ladder["test"].iloc[0].removeprefix("randomised_") if len(ladder) else ""
        ax.set_title(f"{primary}: {mode} parameter randomisation", fontsize=9)
        ax.set_xlabel("layers re-initialised, top first (then other tests)")
    axes[0, 0].set_ylabel("Spearman of |map| with trained maps")
    axes[0, -1].legend(fontsize=8, loc="lower left", ncol=2)
    _save(fig, out, dpi)


def plot_sanity_maps(
    *, stores: dict[str, str | Path], out: str | Path, cmap: str = "magma", dpi: int = 150
) -> None:
    """The kept test images' maps under every change: per image, the image, then one row per
    method; one column per stage (trained, each randomisation step, random labels, input
    shift). ``stores``: method -> the sanity-check map store of one primary."""
    opened = {m: open_store(p) for m, p in stores.items()}
    first = next(iter(opened.values()))
    stages = list(first["stage"].values)
    samples = list(first["sample"].values)
    per_image = len(opened) + 1
    fig, axes = plt.subplots(
        per_image * len(samples),
        len(stages),
        figsize=(0.95 * len(stages) + 1.2, 0.95 * per_image * len(samples) + 0.8),
        squeeze=False,
    )
    for k, sample in enumerate(samples):
        top = k * per_image
        show_input(axes[top, 0], first["image"].isel(sample=k).values)
        axes[top, 0].set_ylabel(f"#{sample}", rotation=0, ha="right", va="center", fontsize=8)
        for ax in axes[top, 1:]:
            ax.set_axis_off()
        for i, (method, ds) in enumerate(opened.items(), start=top + 1):
            for j, stage_map in enumerate(ds["maps"].isel(sample=k).values):
                axes[i, j].imshow(np.abs(stage_map).sum(0), cmap=cmap)
            axes[i, 0].set_ylabel(
                short_name(method), rotation=0, ha="right", va="center", fontsize=8
            )
    for j, stage in enumerate(stages):
        axes[1, j].set_title(str(stage).split(":")[-1].replace("_", " "), fontsize=6, rotation=45)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{first.attrs.get('primary', '')}: |map| under each change", fontsize=9)
    _save(fig, out, dpi)


# -- studies -------------------------------------------------------------------------------------


def plot_study(
    *,
    study: str,
    table: pd.DataFrame,
    replicates: pd.DataFrame,
    out: str | Path,
    level_name: str = "level",
    dpi: int = 150,
) -> None:
    """A study's accuracy per level, one line per method: the mean with error bars of ± one sd
    across replicates, the 95% interval as a thin bar, every replicate as a dot; chance and the
    class cue of each level as dashed and dotted lines. Levels are evenly spaced, labelled."""
    levels = list(dict.fromkeys(table["level"]))
    x = {level: i for i, level in enumerate(levels)}
    methods = list(dict.fromkeys(table["method"]))
    fig, ax = plt.subplots(figsize=(1.1 * len(levels) + 3.2, 3.6))
    width = 0.25 / max(1, len(methods))
    for m, method in enumerate(methods):
        rows = table[table["method"] == method]
        offset = (m - (len(methods) - 1) / 2) * width
        xs = np.array([x[level] for level in rows["level"]]) + offset
        colour = f"C{m}"
        ax.vlines(xs, rows["ci_low"], rows["ci_high"], color=colour, linewidth=1, alpha=0.5)
        ax.errorbar(
            xs,
            rows["accuracy"],
            yerr=rows["accuracy_sd"],
            color=colour,
            marker="o",
            capsize=4,
            linewidth=1.5,
            label=short_name(method),
        )
        reps = replicates[replicates["train_method"] == method]
        ax.scatter(
            np.array([x[level] for level in reps["level"]]) + offset,
            reps["accuracy"],
            color=colour,
            s=10,
            alpha=0.5,
            zorder=3,
        )
    per_level = table.drop_duplicates("level")
    xs = [x[level] for level in per_level["level"]]
    ax.plot(xs, per_level["chance"], "k--", linewidth=1, label="chance")
    cue = table.groupby("level", sort=False)["class_cue"].mean()
    ax.plot([x[level] for level in cue.index], cue.values, ":", color="grey", label="class cue")
    if "primary_test_accuracy" in per_level and per_level["primary_test_accuracy"].notna().any():
        ax.errorbar(
            xs,
            per_level["primary_test_accuracy"],
            yerr=per_level["primary_test_accuracy_sd"],
            color="0.45",
            marker="s",
            markersize=4,
            linestyle="-.",
            linewidth=1,
            capsize=2,
            label="primaries' test accuracy",
        )
    ax.set_xticks(
        range(len(levels)), [f"{v:g}" if isinstance(v, float) else str(v) for v in levels]
    )
    ax.set_xlim(-0.5, len(levels) - 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(level_name)
    ax.set_ylabel("secondary test accuracy")
    n_reps = int(table["n_replicates"].max())
    ax.set_title(
        f"study {study}: mean ± sd of {n_reps} replicate(s) (dots), thin bar: 95% interval",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out, dpi)


# -- backdoor ------------------------------------------------------------------------------------


def plot_backdoor(
    *,
    stores: list[str | Path],
    dataset: str | Path,
    metrics: list[str | Path],
    trigger_cfg: dict,
    target_class: int,
    out: str | Path,
    cmap: str = "magma",
    dpi: int = 150,
) -> None:
    """Akhtar & Jalwana's Fig. 4 for our primaries: per primary a row of its clean and a row of
    its backdoored version, one column per class with the mean over draws of the channel-summed
    |input-agnostic map| (each cell scaled to its own maximum; the trigger patch outlined, the
    maps' mean localisation score below); in front, the trigger and a stamped test image.
    ``stores``: :func:`~saliency_fingerprints.backdoor.backdoor_class_maps` stores."""
    import json

    from matplotlib.patches import Rectangle

    from .backdoor_tables import localisation_scores, mean_abs_maps
    from .datasets import open_dataset
    from .trigger import KINDS, Trigger, stamp

    records = {}
    for path in metrics:
        record = json.loads(Path(path).read_text())
        records[record["clean_primary"]["primary"]] = record
    opened = [open_store(p) for p in stores]
    opened.sort(key=lambda s: (s.attrs["primary"], KINDS.index(s.attrs["kind"])))
    settings = next(iter(records.values()))["backdoor"]["trigger"]
    trigger = Trigger.from_config(trigger_cfg, settings["low"], settings["high"])
    ds, info = open_dataset(dataset)
    side = info.image_size
    mask = trigger.mask(side, side)
    rows, cols = trigger.box(side, side)
    split, labels = ds["split"].values, ds["label"].values
    example = int(np.flatnonzero((split == "test") & (labels != target_class))[0])
    stamped = stamp(np.asarray(ds["image"].isel(sample=example).values), trigger)
    canvas = stamp(np.full((info.channels, side, side), trigger.low, dtype=np.float32), trigger)
    classes = [int(c) for c in opened[0]["class"].values]
    names = [str(n) for n in opened[0]["class_name"].values]
    fig, axes = plt.subplots(
        len(opened),
        len(classes) + 1,
        figsize=(1.05 * (len(classes) + 1) + 1.6, 1.15 * len(opened) + 0.9),
        squeeze=False,
    )

    def show_image(ax, image: np.ndarray, title: str) -> None:
        show_input(ax, image)
        ax.set_title(title, fontsize=6)

    for r, store in enumerate(opened):
        primary, kind = store.attrs["primary"], store.attrs["kind"]
        record = records[primary]
        if kind == "clean":
            show_image(axes[r, 0], canvas, "trigger")
            rate = record["clean_primary"]["attack_success_rate"]
        else:
            show_image(axes[r, 0], stamped, f"stamped #{example}")
            rate = record["attack_success_rate"]
        axes[r, 0].set_ylabel(
            f"{primary}\n{kind}\nattack {rate:.2f}",
            rotation=0,
            ha="right",
            va="center",
            fontsize=7,
        )
        means = mean_abs_maps(store)
        scores = localisation_scores(store["maps"].values, mask).mean(axis=1)
        for c, label in enumerate(classes):
            ax = axes[r, c + 1]
            peak = float(means[c].max())
            ax.imshow(
                means[c] / peak if peak > 0 else means[c],
                cmap=cmap,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.add_patch(
                Rectangle(
                    (cols.start - 0.5, rows.start - 0.5),
                    trigger.size,
                    trigger.size,
                    fill=False,
                    edgecolor="cyan",
                    linewidth=0.8,
                    clip_on=False,  # the patch sits at the image's edge: drawn over the frame
                    zorder=5,
                )
            )
            ax.set_xlabel(f"{scores[c]:.2f}", fontsize=6)
            if r == 0:
                is_target = label == target_class
                ax.set_title(
                    names[c] + ("\n(target)" if is_target else ""),
                    fontsize=7,
                    color="red" if is_target else "black",
                )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Backdoor trigger ({trigger.describe()}, target class {names[target_class]}): mean "
        f"|input-agnostic map| per class over {store.sizes['draw']} draws; below each: "
        f"localisation score (1 = none, {1 / mask.mean():.1f} = all in the patch)",
        fontsize=7,
    )
    _save(fig, out, dpi)
