"""The sanity checks' summary tables (:mod:`.sanity` runs the checks): the medians and
interquartile ranges of every similarity per (primary, method, test, step), what each
random-label copy reached, and the markdown report.

Torch-free, like every module a table or figure job imports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .configuration import primary_name
from .errors import DataError
from .method_names import short_name
from .provenance import Provenance
from .store import atomic_output
from .tables import write_table

# The sanity tables' vocabulary (the long table's test and score columns)
SIMILARITIES = ("spearman_abs", "spearman", "ssim")
SMOOTH_PREFIX = "smooth_"  # sMPRT's test: smooth_randomised_<mode>
EFFICIENT = "efficient_randomisation"  # eMPRT's test, one row per image
COMPLEXITIES = ("complexity_trained", "complexity_randomised", "complexity_ratio")


def random_label_summary(metrics: list[dict]) -> pd.DataFrame:
    """One row per random-label copy (from its ``metrics.json``): the primary it copies, the
    epochs run and their cap, the train accuracy reached on the permuted labels, the target and
    whether it was reached, and the test accuracy on the true labels."""
    rows = []
    for m in metrics:
        if "epochs_run" not in m:
            raise DataError(
                f"{m.get('primary', 'a random-label copy')}: metrics.json without epochs_run "
                "(written before the train-accuracy target existed): retrain it"
            )
        rows.append(
            {
                "primary": primary_name(m["architecture"], m["seed"]),
                "copy_epochs": int(m["epochs_run"]),
                "copy_max_epochs": int(m["max_epochs"]),
                "copy_train_accuracy": float(m["final_train_accuracy"]),
                "copy_target_train_accuracy": m["target_train_accuracy"],
                "copy_target_reached": bool(m["target_reached"]),
                "copy_test_accuracy": float(m["final_test_accuracy"]),
            }
        )
    return pd.DataFrame(rows, columns=RANDOM_LABEL_COLUMNS)


RANDOM_LABEL_COLUMNS = [
    "primary",
    "copy_epochs",
    "copy_max_epochs",
    "copy_train_accuracy",
    "copy_target_train_accuracy",
    "copy_target_reached",
    "copy_test_accuracy",
]


# -- the summary over primaries and methods ------------------------------------------------------


def summarise(
    tables: list[pd.DataFrame], random_labels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Median and interquartile range of every similarity (and, on eMPRT's rows, complexity)
    per (primary, method, test, step); with ``random_labels`` (:func:`random_label_summary`), the
    ``random_labels`` rows also carry their copy's epochs, train accuracy reached, target and
    test accuracy (``copy_*``)."""
    data = pd.concat(tables, ignore_index=True)
    keys = ["primary", "method", "test", "step", "layer"]
    scores = [name for name in (*SIMILARITIES, *COMPLEXITIES) if name in data]
    grouped = data.groupby(keys, sort=False)[scores]
    out = grouped.median().add_suffix("_median")
    q1, q3 = grouped.quantile(0.25), grouped.quantile(0.75)
    for name in scores:
        out[f"{name}_q1"], out[f"{name}_q3"] = q1[name], q3[name]
    out["n_images"] = grouped.size()
    # a constant map (e.g. Grad-CAM of a randomised layer whose ReLU is off everywhere) has no
    # rank correlation (nor, as the trained map, a complexity ratio): counted here, left out of
    # the medians
    out["n_undefined"] = (
        headline_scores(data).isna().groupby([data[k] for k in keys], sort=False).sum()
    )
    out = out.reset_index()
    if random_labels is not None and len(random_labels):
        copies = random_labels.assign(test="random_labels")
        out = out.merge(copies, on=["primary", "test"], how="left", validate="many_to_one")
    return out


def headline_scores(data: pd.DataFrame) -> pd.Series:
    """The score a row of the long table is reported by: the Spearman rank correlation of
    |map|, and on eMPRT's rows the complexity ratio."""
    if "complexity_ratio" not in data:
        return data["spearman_abs"]
    return data["spearman_abs"].where(data["test"] != EFFICIENT, data["complexity_ratio"])


def _copy_lines(summary: pd.DataFrame) -> list[str]:
    """The random-label copies in a table, and a plain warning for each that fell short."""
    if "copy_train_accuracy" not in summary:
        return []
    copies = summary[summary["test"] == "random_labels"].drop_duplicates("primary")
    copies = copies[copies["copy_train_accuracy"].notna()]
    if copies.empty:
        return []
    table = pd.DataFrame(
        {
            "random-label copy of": copies["primary"],
            "epochs (cap)": [
                f"{int(e)} ({int(c)})"
                for e, c in zip(copies["copy_epochs"], copies["copy_max_epochs"], strict=True)
            ],
            "train accuracy (permuted labels)": copies["copy_train_accuracy"],
            "target": [_target(t) for t in copies["copy_target_train_accuracy"]],
            "reached": ["yes" if _reached(r) else "**no**" for r in copies["copy_target_reached"]],
            "test accuracy (true labels)": copies["copy_test_accuracy"],
        }
    )
    lines = [
        "\nThe random-label copies are trained on permuted labels until the first epoch whose "
        "train accuracy reaches the target, or for the cap: Adebayo et al.'s data randomisation "
        "test compares with a network that has memorised the permuted labels.\n\n",
        table.to_markdown(index=False, floatfmt=".3f") + "\n",
    ]
    for _, row in copies[~copies["copy_target_reached"].map(_reached)].iterrows():
        lines.append(
            f"\n**{row['primary']}: target not reached.** Its random-label copy stopped at the "
            f"cap of {int(row['copy_epochs'])} epochs with train accuracy "
            f"{row['copy_train_accuracy']:.3f} (target "
            f"{_target(row['copy_target_train_accuracy'])}): it has not memorised the permuted "
            "labels, so its random labels rows compare the primary with a network that learned "
            "little, not with one that memorised random labels. They are not Adebayo et al.'s "
            "test.\n"
        )
    return lines


def _reached(value: object) -> bool:
    """A ``copy_target_reached`` cell as a bool (NaN, on rows without a copy: False)."""
    return not pd.isna(value) and bool(value)


def _target(value: object) -> str:
    return "none" if value is None or pd.isna(value) else f"{float(value):.2f}"


def _undefined_lines(summary: pd.DataFrame) -> list[str]:
    """Where some maps were constant (no rank correlation), say how many: those medians are
    over the other images only."""
    if "n_undefined" not in summary:
        return []
    rows = summary[summary["n_undefined"] > 0]
    what = {EFFICIENT: "trained maps constant (no complexity ratio"}
    return [
        f"\n- {r.primary} {short_name(r.method)}, {r.test} step {r.step} "
        f"({r.layer}): {r.n_undefined} of {r.n_images} "
        f"{what.get(r.test, 'maps constant (no rank correlation')}; "
        "the median is over the others)\n"
        for r in rows.itertuples()
    ]


SMOOTH_NOTE = (
    "Hedström et al. (2023)'s smooth MPRT (Quantus' `SmoothMPRT`): the same ladder and median "
    "Spearman of |map|, but every map, of the trained and of each randomised model, is the mean "
    "of the method's maps over `sanity_checks.smooth_randomisation.n_samples` copies of the "
    "image, all but one with Gaussian noise (std `noise_level` x the image's range; the same "
    "copies for every model). Noisy maps differ between any two models by their noise alone, "
    "which the plain ladder counts as a pass; averaged, what remains is how much of the maps' "
    "structure the randomised weights change.\n\n"
)

EFFICIENT_NOTE = (
    "Hedström et al. (2023)'s efficient MPRT (Quantus' `EfficientMPRT`), per image: the "
    "complexity of the map of the fully randomised model (every weight layer re-initialised, "
    "as at the cascade's last step) divided by that of the trained model's map. Complexity is "
    "Quantus' default, the discrete entropy (nats) of the histogram of |map| in "
    "`sanity_checks.efficient_randomisation.bins` equal-width bins over the map's range. Above "
    "1, the maps lose their structure when the weights are randomised: the method passes; at "
    "or below 1 it fails (Quantus reports the ratio - 1).\n\n"
)


def _ladder_section(primary: str, test: str, block: pd.DataFrame) -> str:
    """One primary's ladder, plain or smooth (sMPRT): the median Spearman of |map| per method
    (rows) and step (columns)."""
    smooth = test.startswith(SMOOTH_PREFIX)
    mode = test.removeprefix(SMOOTH_PREFIX).removeprefix("randomised_")
    title = f"{'smooth ' if smooth else ''}{mode} parameter randomisation"
    title += " (sMPRT)" if smooth else ""
    block = block.assign(
        column=[f"{k}: {layer}" for k, layer in zip(block["step"], block["layer"], strict=True)]
    )
    matrix = block.pivot_table(
        index="method", columns="column", values="spearman_abs_median", sort=False
    )
    matrix.index = [short_name(m) for m in matrix.index]
    return (
        f"\n## {primary}: {title}, top layer first\n\n"
        + (SMOOTH_NOTE if smooth else "")
        + matrix.to_markdown(floatfmt=".3f")
        + "\n"
    )


def _passes(ratio: float) -> str:
    """eMPRT's verdict on a median complexity ratio."""
    if pd.isna(ratio):
        return "undefined"
    return "yes" if ratio > 1 else "**no**"


def _efficient_lines(summary: pd.DataFrame) -> list[str]:
    """eMPRT's section: per primary and method, the median complexities, their ratio with its
    quartiles, and whether the median ratio is above 1."""
    rows = summary[summary["test"] == EFFICIENT]
    if rows.empty:
        return []
    names = zip(rows["primary"], rows["method"], strict=True)
    quartiles = zip(rows["complexity_ratio_q1"], rows["complexity_ratio_q3"], strict=True)
    table = pd.DataFrame(
        {
            "": [f"{p} {short_name(m)}" for p, m in names],
            "complexity trained": rows["complexity_trained_median"].to_numpy(),
            "complexity randomised": rows["complexity_randomised_median"].to_numpy(),
            "ratio": rows["complexity_ratio_median"].to_numpy(),
            "ratio quartiles": [f"{a:.3f} - {b:.3f}" for a, b in quartiles],
            "passes (ratio > 1)": [_passes(r) for r in rows["complexity_ratio_median"]],
        }
    )
    return [
        "\n## Efficient parameter randomisation (eMPRT)\n\n",
        EFFICIENT_NOTE,
        "Medians over test images:\n\n",
        table.to_markdown(index=False, floatfmt=".3f") + "\n",
    ]


def markdown_summary(summary: pd.DataFrame) -> str:
    """The summary in words and tables: per primary, the randomisation ladder (rows: methods,
    columns: steps) and its smooth version (sMPRT); eMPRT's complexity ratios; then random labels
    and the input shift side by side."""
    parts = [
        "# Sanity checks\n\n",
        "Median over test images of the Spearman rank correlation of |map| between each "
        "primary's maps and the maps of the changed model (1 = unchanged maps). A method "
        "*passes* a randomisation test when this falls towards 0, and the input-shift test when "
        "it stays at 1. Quartiles, signed Spearman and SSIM are in `sanity_checks.csv`.\n",
    ]
    is_ladder = summary["test"].str.startswith(("randomised", SMOOTH_PREFIX))
    for (primary, test), block in summary[is_ladder].groupby(["primary", "test"], sort=False):
        parts.append(_ladder_section(primary, test, block))
    parts.extend(_efficient_lines(summary))
    parts.extend(_undefined_lines(summary))
    others = summary[~is_ladder & (summary["test"] != EFFICIENT)]
    if len(others):
        parts.append("\n## Data randomisation and input invariance\n\n")
        matrix = others.pivot_table(
            index=["primary", "method"], columns="test", values="spearman_abs_median", sort=False
        )
        if "copy_train_accuracy" in others:
            copies = others[others["test"] == "random_labels"].drop_duplicates("primary")
            copies = copies.set_index("primary")
            primaries = matrix.index.get_level_values(0)
            reached = copies["copy_target_reached"].reindex(primaries)
            train = copies["copy_train_accuracy"].reindex(primaries)
            matrix["copy: train acc (permuted)"] = [
                "" if pd.isna(t) else f"{t:.3f}" + ("" if _reached(r) else " (not reached)")
                for t, r in zip(train, reached, strict=True)
            ]
            matrix["copy: test acc"] = copies["copy_test_accuracy"].reindex(primaries).to_numpy()
        matrix.index = [f"{p} {short_name(m)}" for p, m in matrix.index]
        matrix.columns = [c.replace("_", " ") for c in matrix.columns]
        parts.append(matrix.to_markdown(floatfmt=".3f") + "\n")
        parts.extend(_copy_lines(others))
    return "".join(parts)


def combine_sanity_tables(
    *,
    parts: list[str | Path],
    out_csv: str | Path,
    out_md: str | Path,
    random_label_metrics: list[str | Path] = (),
) -> pd.DataFrame:
    """Every (primary, method) table summarised in one CSV and one markdown report, with what
    each random-label copy reached (from its ``metrics.json``) beside its rows."""
    copies = random_label_summary([json.loads(Path(p).read_text()) for p in random_label_metrics])
    summary = summarise([pd.read_csv(p) for p in parts], copies)
    prov = Provenance(
        "combine_sanity_tables",
        {
            "parts": [str(p) for p in parts],
            "random_label_metrics": [str(p) for p in random_label_metrics],
        },
    )
    write_table(summary, out_csv, prov.finish(n_rows=len(summary)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_summary(summary))
    return summary
