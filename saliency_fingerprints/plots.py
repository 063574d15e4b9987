"""Figures: cross-evaluation heatmaps (Table 1 layout) and grids of example maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .evaluate import as_matrix  # noqa: E402
from .saliency import SHORT_NAMES, open_maps  # noqa: E402
from .secondary import preprocess_maps  # noqa: E402
from .shuffle import apply_variant  # noqa: E402
from .store import atomic_output  # noqa: E402


def _save(fig, out: str | Path, dpi: int) -> None:
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_heatmap(
    table: pd.DataFrame, out: str | Path, title: str, cmap: str = "viridis", dpi: int = 150
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
        f"{title}\n(chance {chance:.2f}, n_test {int(table['n_test'].min())})", fontsize=10
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.axhline(chance, color="red", linewidth=1.5)
    bar.set_label("accuracy (red: chance)")
    _save(fig, out, dpi)


def plot_map_grid(
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
    rows = []
    first = next(iter(next(iter(stores.values())).values()))
    sample_ids = open_maps(first)["sample"].values[:n_images]
    for method, by_primary in stores.items():
        for primary, path in by_primary.items():
            ds = open_maps(path)
            positions = np.flatnonzero(np.isin(ds["sample"].values, sample_ids))
            maps = preprocess_maps(
                ds["maps"].isel(sample=positions).values,
                preprocess.get("reduce", "abs_sum"),
                preprocess.get("clip_percentile", 99.0),
            )
            for variant in variants:
                shown = apply_variant(maps, variant, shuffle_seed, primary, sample_ids)
                label = f"{SHORT_NAMES.get(method, method)}\n{primary}"
                if variant != "original":
                    label += f"\n{variant}"
                rows.append((label, shown))
    n_rows = len(rows) + (1 if dataset is not None else 0)
    fig, axes = plt.subplots(
        n_rows, len(sample_ids), squeeze=False, figsize=(1.1 * len(sample_ids) + 1.5, 1.1 * n_rows)
    )
    offset = 0
    if dataset is not None:
        images = dataset["image"].isel(sample=sample_ids).values
        for j, image in enumerate(images):
            shown = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            axes[0, j].imshow(np.clip(shown, 0, 1), cmap="gray" if image.shape[0] == 1 else None)
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
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j, sample in enumerate(sample_ids):
        axes[0, j].set_title(f"#{sample}", fontsize=7)
    _save(fig, out, dpi)
