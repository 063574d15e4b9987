"""Study tables and figures (beyond the paper): one row per (level, method) of a study, from the
cross-evaluations of the experiments its levels expanded into (configuration.expand_studies).

A level's cell is the secondary of a method scored on the same method's test maps (the diagonal
of the experiment's cross-evaluation table) on original maps, summarised over replicates with
:func:`.evaluate.summarise` - the mean accuracy, the sd across replicates, the 95% interval of
:mod:`.replicates`, the tests against chance and against the class cue (Holm-adjusted over the
methods of a level) - as in ``tables/cross_evaluation.csv``, plus accuracy / chance and the
mean test accuracy of the level's primaries (what the fingerprint table is not: a measure of how
well the primaries classify; the training_length study reads the two together).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .method_names import short_name
from .provenance import Provenance
from .replicates import format_p
from .store import atomic_output
from .tables import provenance_path, summarise, write_table

# What a study's levels are, for column headers and axis labels.
LEVEL_NAMES = {
    "n_primaries": "primaries",
    "learning_curve": "fit_fraction",
    "init_vs_data": "primaries differ in",
    "training_length": "primary epochs",
}

COLUMNS = [
    "study",
    "level",
    "experiment",
    "method",
    "n_primaries",
    "primary_test_accuracy",
    "primary_test_accuracy_sd",
    "n_replicates",
    "accuracy",
    "accuracy_sd",
    "ci_low",
    "ci_high",
    "chance",
    "accuracy_over_chance",
    "class_cue",
    "class_cue_sd",
    "vs_cue",
    "vs_cue_low",
    "vs_cue_high",
    "p_holm",
    "above_chance",
    "p_holm_vs_cue",
    "above_cue",
    "n_test",
]


def level_replicates(*, levels: list[dict], parts: dict[str, str | Path]) -> pd.DataFrame:
    """The per-replicate rows of every level: each level's experiment's cross-evaluation
    (``parts``: experiment -> its ``original`` CSV) cut to its methods' own-method cells, with
    a ``level`` column. An experiment may serve several levels; each gets its own rows."""
    frames = []
    for index, level in enumerate(levels):
        rows = pd.read_csv(parts[level["experiment"]])
        keep = (
            (rows["variant"] == "original")
            & (rows["train_method"] == rows["test_method"])
            & rows["train_method"].isin(level["methods"])
        )
        rows = rows[keep].copy()
        if rows.empty:
            raise ValueError(
                f"{parts[level['experiment']]}: no original-map rows of methods "
                f"{level['methods']}; expected the cross-evaluation of level {level['level']}"
            )
        rows.insert(0, "level", level["level"])
        rows.insert(0, "_level_index", index)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def primary_accuracies(*, levels: list[dict], metrics: dict[str, float]) -> list[tuple]:
    """Per level, the mean and sd of its primaries' test accuracy (``metrics``: primary name ->
    final test accuracy); NaN where a level lists no primaries."""
    out = []
    for level in levels:
        names = level.get("primaries", []) if metrics else []
        missing = [name for name in names if name not in metrics]
        if missing:
            raise ValueError(
                f"level {level['level']}: no metrics.json of primaries {missing}; expected "
                "the metrics of every primary of the level's experiment"
            )
        values = np.array([metrics[name] for name in names], dtype=float)
        if len(values) == 0:
            out.append((float("nan"), float("nan")))
        else:
            out.append(
                (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
            )
    return out


def study_table(
    *, study: str, replicates: pd.DataFrame, primary_accuracy: list[tuple] | None = None
) -> pd.DataFrame:
    """One row per (level, method): :func:`.evaluate.summarise` of the level's replicates, in
    the order of the levels, then of the methods; ``primary_accuracy`` (per level, from
    :func:`primary_accuracies`) fills the primaries' test accuracy columns."""
    parts = []
    for index, rows in replicates.groupby("_level_index", sort=True):
        summary = summarise(rows.drop(columns=["_level_index", "level"]))
        summary.insert(0, "level", rows["level"].iloc[0])
        if primary_accuracy is not None:
            summary["primary_test_accuracy"], summary["primary_test_accuracy_sd"] = (
                primary_accuracy[int(index)]
            )
        parts.append(summary)
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "study", study)
    table["method"] = table["train_method"]
    table["accuracy_over_chance"] = table["accuracy"] / table["chance"]
    return table.reindex(columns=COLUMNS)


def _mean_sd(mean: float, sd: float) -> str:
    return "n/a" if pd.isna(mean) else f"{mean:.3f} ± {sd:.3f}"


def _level_text(study: str, level) -> str:
    return f"{level:g}" if isinstance(level, float) else str(level)


def markdown_study(*, study: str, table: pd.DataFrame) -> str:
    """The study as a markdown table: per level and method, accuracy ± sd over replicates, the
    95% interval, chance, accuracy / chance, the class cue and the verdicts."""
    level = LEVEL_NAMES.get(study, "level")
    rows = []
    for r in table.itertuples():
        rows.append(
            {
                level: _level_text(study, r.level),
                "method": short_name(r.method),
                "experiment": r.experiment,
                "accuracy (± sd)": f"{r.accuracy:.3f} ± {r.accuracy_sd:.3f}",
                "95% interval": f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
                "chance": f"{r.chance:.3f}",
                "accuracy / chance": f"{r.accuracy_over_chance:.2f}",
                "primaries' test accuracy (± sd)": _mean_sd(
                    r.primary_test_accuracy, r.primary_test_accuracy_sd
                ),
                "class cue (± sd)": f"{r.class_cue:.3f} ± {r.class_cue_sd:.3f}",
                "p above chance; above cue": f"{format_p(r.p_holm)}; {format_p(r.p_holm_vs_cue)}",
                "replicates": int(r.n_replicates),
                "test maps": int(r.n_test),
            }
        )
    intro = {
        "n_primaries": "Accuracy of the secondary against the number of primaries k it tells "
        "apart (k primaries of one architecture, seeds 0..k-1; chance 1/k).",
        "learning_curve": "Accuracy of the secondary against the fraction of its fitting images "
        "(by source image) it was fitted on; validation and test maps are the same at every "
        "level.",
        "init_vs_data": "Which carries the fingerprint, a primary's initialisation or its data "
        "(training subset and batch order)? init: the primaries differ only in their initial "
        "weights (same data); data: only in their data (same initial weights); both: in both "
        "(the ordinary primaries).",
        "training_length": "Fingerprint strength as the same primaries learn: their maps after "
        "e epochs of training (0: untrained), beside the primaries' mean test accuracy. A "
        "secondary above chance at 0 epochs finds a fingerprint of the initialisation alone.",
    }.get(study, "")
    return (
        f"# Study: {study}\n\n{intro} A row is a secondary scored on its own method's test maps "
        "(original maps): the mean over replicates ± their sd, the 95% interval over replicate "
        "and test-sample variation, and one-sided Holm-adjusted p-values (over the methods of a "
        "level) against chance and against the class cue (the best guess of the primary from "
        "the class a map explains). Per replicate: the experiments' "
        "`experiments/<experiment>/cross_evaluation/original.csv`.\n\n"
        + pd.DataFrame(rows).to_markdown(index=False)
        + "\n"
    )


def write_study(
    *,
    study: str,
    levels: list[dict],
    parts: list[str | Path],
    out_csv: str | Path,
    primary_metrics: list[str | Path] = (),
    out_md: str | Path,
    out_png: str | Path | None = None,
    dpi: int = 150,
) -> pd.DataFrame:
    """A study's table (CSV with a provenance sidecar, markdown) and figure from the
    cross-evaluation CSVs ``parts`` (``.../experiments/<experiment>/cross_evaluation/
    original.csv``) of its ``levels`` (``[{level, experiment, methods, primaries}, ...]``) and
    the ``metrics.json`` of their primaries."""
    by_experiment = {Path(p).parts[-3]: p for p in parts}
    configs = {}
    for part in parts:
        sidecar = provenance_path(part)
        configs[str(part)] = json.loads(sidecar.read_text())["config"] if sidecar.exists() else None
    prov = Provenance("study_table", {"study": study, "levels": levels, "parts": configs})
    replicates = level_replicates(levels=levels, parts=by_experiment)
    accuracy = {}
    for path in primary_metrics:
        metrics = json.loads(Path(path).read_text())
        accuracy[metrics["primary"]] = metrics["final_test_accuracy"]
    table = study_table(
        study=study,
        replicates=replicates,
        primary_accuracy=primary_accuracies(levels=levels, metrics=accuracy),
    )
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_study(study=study, table=table))
    if out_png is not None:
        from .plots import plot_study  # matplotlib only where a figure is drawn

        plot_study(
            study=study,
            table=table,
            replicates=replicates,
            out=out_png,
            level_name=LEVEL_NAMES.get(study, "level"),
            dpi=dpi,
        )
    return table
