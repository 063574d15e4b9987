"""The cross-evaluation tables: the per-replicate rows summarised per cell (mean, spread, the
interval over replicates and test samples, the tests against chance and the class cue, Holm
over each block), the combined CSVs and the markdown report beside them.

Torch-free, like every module a table or figure job imports (tests/test_jobs.py): those jobs
start in ~2 s instead of ~5 s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .method_names import short_name
from .provenance import Provenance, as_attr
from .replicates import format_p, mcnemar_variance, paired_difference, replicate_interval
from .store import atomic_output

# One row per (replicate, train method, test method): tables/cross_evaluation_replicates.csv
REPLICATE_COLUMNS = [
    "experiment",
    "variant",
    "replicate",
    "seed",
    "primaries",
    "train_method",
    "test_method",
    "secondary_learning_rate",  # chosen on validation maps where candidates were given
    "secondary_epoch",  # the kept epoch, chosen on validation maps
    "accuracy",
    "n_test",
    "chance",
    "n_primaries",
    "class_cue",
    "only_secondary",
    "only_cue",
    "same_class_accuracy",
    "n_same_class",
    "same_class_fraction",
    "p_value",
]
# One row per cell, over its replicates: tables/cross_evaluation.csv
COLUMNS = [
    "experiment",
    "variant",
    "train_method",
    "test_method",
    "n_replicates",
    "accuracy",
    "accuracy_sd",
    "ci_low",
    "ci_high",
    "chance",
    "n_test",
    "n_primaries",
    "p_value",
    "p_holm",
    "above_chance",
    "class_cue",
    "class_cue_sd",
    "vs_cue",
    "vs_cue_low",
    "vs_cue_high",
    "p_vs_cue",
    "p_holm_vs_cue",
    "above_cue",
    "same_class_accuracy",
    "same_class_sd",
    "same_class_low",
    "same_class_high",
    "p_same_class",
    "p_holm_same_class",
    "same_class_above_chance",
    "n_same_class",
    "same_class_fraction",
]
SIGNIFICANCE = 0.05


def p_above_chance(successes: int, n: int, chance: float) -> float:
    """One-sided exact binomial test of "accuracy > chance": the probability of at least
    ``successes`` correct out of ``n`` if the secondary guessed (each test map counted as an
    independent trial)."""
    if n == 0:
        return float("nan")
    from scipy.stats import binomtest  # lazily: ~1-2 s to import, and figure jobs never call it

    return float(binomtest(successes, n, chance, alternative="greater").pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the given tests)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved near 0 and 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


CELL = ["experiment", "variant", "train_method", "test_method"]


def cell_means(replicates: pd.DataFrame) -> pd.DataFrame:
    """The accuracy per cell averaged over its replicates, with the cell's chance, smallest test
    set and replicate count: what a heatmap shows, without :func:`summarise`'s intervals and
    tests (and the ~1-2 s import of scipy.stats they need)."""
    grouped = replicates.groupby(CELL, sort=False)
    table = grouped.agg(
        accuracy=("accuracy", "mean"),
        chance=("chance", "first"),
        n_test=("n_test", "min"),
        n_replicates=("accuracy", "size"),
    )
    return table.reset_index()


def summarise(replicates: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (experiment, variant, train method, test method) over its replicates:
    mean, spread and the replicate-and-test-sample interval (:mod:`.replicates`) of the
    accuracy and of its difference from the class cue, one-sided tests against chance and the
    cue (Holm-adjusted over the cells of each (experiment, variant) block), and the accuracy
    on same-class images."""
    rows = []
    for cell, group in replicates.groupby(CELL, sort=False):
        chance = float(group["chance"].iloc[0])
        acc = replicate_interval(group["accuracy"], group["n_test"])
        diff = paired_difference(
            group["accuracy"] - group["class_cue"],
            [
                mcnemar_variance(int(a), int(b), int(n))
                for a, b, n in zip(
                    group["only_secondary"], group["only_cue"], group["n_test"], strict=True
                )
            ],
        )
        same = group["same_class_accuracy"].dropna()
        # on same-class images the class cue is exactly at chance (it guesses one primary for
        # all the maps of an image): accuracy there above chance is a fingerprint beyond the cue
        same_est = replicate_interval(same, group.loc[same.index, "n_same_class"])
        rows.append(
            {
                **dict(zip(CELL, cell, strict=True)),
                "n_replicates": acc.n_replicates,
                "accuracy": acc.mean,
                "accuracy_sd": acc.sd,
                "ci_low": acc.low,
                "ci_high": acc.high,
                "chance": chance,
                "n_test": int(round(group["n_test"].mean())),
                "n_primaries": int(group["n_primaries"].iloc[0]),
                "p_value": acc.p_above(chance),
                "class_cue": float(group["class_cue"].mean()),
                "class_cue_sd": float(group["class_cue"].std(ddof=1)) if len(group) > 1 else 0.0,
                "vs_cue": diff.mean,
                "vs_cue_low": diff.low,
                "vs_cue_high": diff.high,
                "p_vs_cue": diff.p_above(0.0),
                "same_class_accuracy": float(same.mean()) if len(same) else float("nan"),
                "same_class_sd": float(same.std(ddof=1)) if len(same) > 1 else float("nan"),
                "same_class_low": same_est.low,
                "same_class_high": same_est.high,
                "p_same_class": same_est.p_above(chance),
                "n_same_class": int(round(group["n_same_class"].mean())),
                "same_class_fraction": float(group["same_class_fraction"].mean()),
            }
        )
    table = pd.DataFrame(rows)
    adjust = (("p_value", "p_holm"), ("p_vs_cue", "p_holm_vs_cue"))
    adjust += (("p_same_class", "p_holm_same_class"),)
    for column, adjusted in adjust:
        table[adjusted] = np.nan
        for _, block in table.groupby(["experiment", "variant"], sort=False):
            table.loc[block.index, adjusted] = holm(block[column].fillna(1.0).tolist())
    table["above_chance"] = table["p_holm"] < SIGNIFICANCE
    table["above_cue"] = table["p_holm_vs_cue"] < SIGNIFICANCE
    table["same_class_above_chance"] = table["p_holm_same_class"] < SIGNIFICANCE
    return table.reindex(columns=COLUMNS)


def write_table(table: pd.DataFrame, out_csv: str | Path, provenance: dict | None = None) -> None:
    """CSV atomically; provenance goes to a ``.provenance.json`` sidecar so the CSV itself is
    bitwise reproducible. The sidecar is written first: a CSV never exists without its own."""
    if provenance is not None:
        with atomic_output(provenance_path(out_csv)) as tmp:
            tmp.write_text(as_attr(provenance) + "\n")
    with atomic_output(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def provenance_path(table: str | Path) -> Path:
    """The ``.provenance.json`` sidecar of a table (``x.csv`` and ``x.md`` share one)."""
    return Path(table).with_suffix(".provenance.json")


def as_matrix(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Rows: test method; columns: training method (the paper's Table 1 layout)."""
    order = list(dict.fromkeys(table["train_method"]).keys())
    tests = list(dict.fromkeys(table["test_method"]).keys())
    matrix = table.pivot(index="test_method", columns="train_method", values=value)
    matrix = matrix.reindex(index=tests, columns=order)
    matrix.index = [short_name(m) for m in matrix.index]
    matrix.columns = [short_name(m) for m in matrix.columns]
    return matrix


def _cell(mean: float, sd: float, n_replicates: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if n_replicates > 1 else f"{mean:.3f}"


def _matrix_text(block: pd.DataFrame, text) -> pd.DataFrame:
    cells = block.assign(_text=[text(r) for r in block.itertuples()])
    matrix = as_matrix(cells, "_text")
    matrix.index.name = "test on \\ trained on"
    return matrix


def _primaries_line(block_replicates: pd.DataFrame, primary_accuracy: dict[str, float]) -> str:
    names = list(dict.fromkeys(n for ps in block_replicates["primaries"] for n in ps.split(",")))
    known = [primary_accuracy[n] for n in names if n in primary_accuracy]
    if not known:
        return ""
    return (
        f"Primaries ({len(names)} in all): test accuracy {min(known):.2f}-{max(known):.2f} "
        f"(mean {np.mean(known):.2f}) on the dataset's test split. A fingerprint table says "
        "which of *these* networks made a map, not how good they are.\n\n"
    )


def _replicates_line(block_replicates: pd.DataFrame) -> str:
    reps = block_replicates.drop_duplicates("replicate").sort_values("replicate")
    seeds = ", ".join(str(s) for s in reps["seed"])
    sets = reps["primaries"].unique()
    primaries = (
        "one primary set"
        if len(sets) == 1
        else f"{len(sets)} disjoint primary sets ({' | '.join(sets)})"
    )
    return f"{len(reps)} replicate(s): secondary seeds {seeds}; {primaries}"


def _training_line(block_replicates: pd.DataFrame) -> str:
    """Each secondary's learning rate and kept epoch per replicate: e.g. ``Grad 0.0003 (epoch
    4, 6, 5)``, or ``Grad 0.0001, 0.001, 0.001 (epoch 4, 6, 5)`` where the replicates chose
    different rates."""
    if (
        "secondary_epoch" not in block_replicates
        or block_replicates["secondary_epoch"].isna().all()
    ):
        return ""
    parts = []
    one_per_secondary = block_replicates.drop_duplicates(["train_method", "replicate"])
    for method, group in one_per_secondary.groupby("train_method", sort=False):
        group = group.sort_values("replicate")
        rates = [f"{r:g}" for r in group["secondary_learning_rate"]]
        rates = rates[0] if len(set(rates)) == 1 else ", ".join(rates)
        epochs = ", ".join(str(int(e)) for e in group["secondary_epoch"].dropna())
        parts.append(f"{short_name(method)} {rates} (epoch {epochs})")
    return (
        "Secondaries' learning rate (chosen on validation maps where `secondary.learning_rate` "
        "lists candidates, else fixed) and kept epoch (chosen on validation maps), by replicate: "
        f"{'; '.join(parts)}.\n\n"
    )


def markdown_report(
    table: pd.DataFrame,
    replicates: pd.DataFrame | None = None,
    primary_accuracy: dict[str, float] | None = None,
) -> str:
    """One Table-1-style block per (experiment, variant): accuracy over replicates, its
    difference from the class cue, the accuracy on same-class images, and what fails."""
    primary_accuracy = primary_accuracy or {}
    parts = [
        "# Cross-evaluation\n\n",
        "Secondary test accuracy: rows, the method whose test maps were classified; columns, "
        "the method the secondary was trained on. Each test map is scored once, after training "
        "(the kept epoch was chosen on validation maps). A cell is the mean over replicates "
        "± their standard deviation; its 95% interval (in `cross_evaluation.csv`: `ci_low`, "
        "`ci_high`) counts both the spread across replicates and test-sample noise, and the "
        "verdicts below use it (one-sided tests, Holm-adjusted over the block's cells). "
        "The **class cue** is the accuracy of the best guess of the primary from the class a "
        "map explains alone (fitted on the secondary's training maps, scored on the same test "
        "maps); a secondary is credited with a fingerprint beyond it only where it beats it. "
        "**Same-class images** are the test images that every primary explains as the same "
        "class: there the class says nothing about the primary. Per replicate: "
        "`cross_evaluation_replicates.csv`.\n",
    ]
    for (experiment, variant), block in table.groupby(["experiment", "variant"], sort=False):
        chance = block["chance"].iloc[0]
        n = int(block["n_primaries"].iloc[0])
        parts.append(f"\n## {experiment} - {variant} ({n} primaries, chance {chance:.2f})\n\n")
        if replicates is not None:
            mine = replicates[
                (replicates["experiment"] == experiment) & (replicates["variant"] == variant)
            ]
            parts.append(
                f"{_replicates_line(mine)}; {int(block['n_test'].iloc[0])} test maps per "
                "replicate.\n\n"
            )
            parts.append(_training_line(mine))
            parts.append(_primaries_line(mine, primary_accuracy))
        cue = block.drop_duplicates("test_method")
        parts.append(
            f"Class cue: {cue['class_cue'].mean():.3f} (chance {chance:.2f}); all primaries "
            f"explain the same class on {cue['same_class_fraction'].mean():.0%} of test "
            "images.\n\n"
        )
        parts.append("Accuracy (mean ± sd over replicates):\n\n")
        matrix = _matrix_text(block, lambda r: _cell(r.accuracy, r.accuracy_sd, r.n_replicates))
        parts.append(matrix.to_markdown() + "\n\n")
        parts.append("Accuracy minus the class cue (mean, 95% interval):\n\n")
        matrix = _matrix_text(
            block,
            lambda r: (
                f"{r.vs_cue:+.3f} [{r.vs_cue_low:+.2f}, {r.vs_cue_high:+.2f}]"
                if np.isfinite(r.vs_cue)
                else "n/a"
            ),
        )
        parts.append(matrix.to_markdown() + "\n\n")
        parts.append("Holm-adjusted one-sided p-values, above chance; above the class cue:\n\n")
        matrix = _matrix_text(block, lambda r: f"{format_p(r.p_holm)}; {format_p(r.p_holm_vs_cue)}")
        parts.append(matrix.to_markdown() + "\n\n")
        if block["n_same_class"].max() > 0:
            parts.append(
                f"Accuracy on same-class images only ({int(block['n_same_class'].iloc[0])} test "
                "maps per replicate):\n\n"
            )
            matrix = _matrix_text(
                block, lambda r: _cell(r.same_class_accuracy, r.same_class_sd, r.n_replicates)
            )
            parts.append(matrix.to_markdown() + "\n\n")
        else:
            parts.append("No test image is explained as the same class by every primary.\n\n")
        parts.append(chance_note(block))
    return "".join(parts)


def _cells(rows: pd.DataFrame) -> str:
    return ", ".join(
        f"{short_name(r.test_method)} maps by the {short_name(r.train_method)} secondary"
        for r in rows.itertuples()
    )


def chance_note(block: pd.DataFrame) -> str:
    """Which cells of a block are not above chance, and which not above the class cue."""
    lines = []
    checks = (("p_holm", "chance"), ("p_holm_vs_cue", "the class cue"))
    checks += (("p_holm_same_class", "chance on same-class images"),)
    for column, what in checks:
        if column not in block or block[column].isna().all():
            continue
        if column == "p_holm_same_class":
            block = block[block["n_same_class"] > 0]
            if block.empty:  # no image that every primary explains as the same class
                continue
        weak = block[~(block[column] < SIGNIFICANCE)]
        test = f"Holm-adjusted p >= {SIGNIFICANCE}"
        if weak.empty:
            lines.append(f"Every cell is above {what} ({test.replace('>=', '<')}).")
        elif len(weak) == len(block):
            lines.append(f"No cell is above {what} ({test} in every cell).")
        else:
            lines.append(f"Not above {what} ({test}): {_cells(weak)}.")
    return "".join(f"\n{line}\n" for line in lines)


def primary_test_accuracy(metrics: list[str | Path]) -> dict[str, float]:
    """``{primary name: final test accuracy}`` from primaries' ``metrics.json`` files."""
    found = {}
    for path in metrics:
        record = json.loads(Path(path).read_text())
        found[record["primary"]] = float(record["final_test_accuracy"])
    return found


def combine_tables(
    *,
    parts: list[str | Path],
    out_csv: str | Path,
    out_md: str | Path,
    out_replicates: str | Path | None = None,
    primary_metrics: list[str | Path] = (),
) -> pd.DataFrame:
    """All per-replicate cross-evaluations in one CSV, summarised per cell in another, and a
    markdown report; their shared sidecar records the config of every part."""
    configs = {}
    for part in parts:
        sidecar = provenance_path(part)
        configs[str(part)] = json.loads(sidecar.read_text())["config"] if sidecar.exists() else None
    prov = Provenance("combine_tables", {"parts": configs})
    replicates = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    table = summarise(replicates)
    if out_replicates is not None:
        write_table(replicates, out_replicates, prov.finish(n_rows=len(replicates)))
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_report(table, replicates, primary_test_accuracy(primary_metrics)))
    return table
