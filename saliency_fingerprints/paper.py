"""The paper's numbers, as data, and their comparison with ours.

Source: Widdicombe, Julier & Kim (2022), "Saliency maps contain network 'fingerprints'"
(``../shared/papers/widdicombe-2022-...``; transcribed in ``../shared/NOTES.md``):

* Table 1 - secondary test accuracy; rows: the method whose test maps were classified, columns:
  the method the secondary was trained on - for two 2-layer CNNs (Grad, SG, IG, MP), two ResNets
  and ten ResNets (Grad, SG, IG).
* Section 2.3, "Are we identifying the networks using unstructured statistics?" - the
  pixel-shuffled control for two ResNets: Grad 0.60, SG 0.54, IG 0.54 (each secondary trained and
  tested on its own method's shuffled maps).
* Section 2.3, first experiment - two primaries of *different* architectures (a 2-layer CNN and a
  ResNet), Grad: "over 90%" (a lower bound, ``relation ">"``).

The paper's "ResNet" is its MiniResNet. Config key ``paper_comparison.tables`` says which of our
experiments stands for which table; :func:`compare` joins them with our ``cross_evaluation.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .method_names import short_name

# Light imports only: rules/paper.smk imports this module while Snakemake parses the workflow.
# The map-store and saliency modules (torch, zarr) are imported where they are needed.

SOURCE = (
    "Widdicombe, Julier & Kim (2022), Saliency maps contain network 'fingerprints', "
    "Table 1 and Section 2.3"
)
GRAD, SG, IG, MP = "grad", "smoothgrad", "integrated_gradients", "meaningful_perturbation"


@dataclass(frozen=True)
class PaperTable:
    """One block of the paper's results: ``cells[(train_method, test_method)] = accuracy``."""

    title: str
    n_primaries: int
    shuffled: bool
    cells: dict[tuple[str, str], float]
    source: str
    relation: str = "="  # "=": reported value; ">": the paper gives a lower bound
    methods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        methods = list(dict.fromkeys(m for pair in self.cells for m in pair))
        object.__setattr__(self, "methods", methods)


def _matrix(methods: list[str], rows: list[list[float]]) -> dict[tuple[str, str], float]:
    """Table 1 layout (row = test method, column = train method) -> {(train, test): value}."""
    return {
        (train, test): rows[i][j]
        for i, test in enumerate(methods)
        for j, train in enumerate(methods)
    }


TABLES: dict[str, PaperTable] = {
    "two_cnn2": PaperTable(
        "Two 2-layer CNNs",
        2,
        False,
        _matrix(
            [GRAD, SG, IG, MP],
            [
                [0.89, 0.54, 0.79, 0.48],
                [0.76, 0.98, 0.64, 0.57],
                [0.77, 0.51, 0.92, 0.50],
                [0.51, 0.50, 0.49, 0.56],
            ],
        ),
        "Table 1, left",
    ),
    "two_resnets": PaperTable(
        "Two ResNets",
        2,
        False,
        _matrix([GRAD, SG, IG], [[0.95, 0.54, 0.99], [0.98, 0.99, 0.94], [0.96, 0.52, 0.99]]),
        "Table 1, middle",
    ),
    "ten_resnets": PaperTable(
        "Ten ResNets",
        10,
        False,
        _matrix([GRAD, SG, IG], [[0.85, 0.44, 0.77], [0.58, 0.95, 0.51], [0.73, 0.38, 0.85]]),
        "Table 1, right",
    ),
    "shuffled_two_resnets": PaperTable(
        "Two ResNets, pixel-shuffled maps",
        2,
        True,
        {(GRAD, GRAD): 0.60, (SG, SG): 0.54, (IG, IG): 0.54},
        "Section 2.3, pixel-shuffled control",
    ),
    "cnn2_vs_resnet": PaperTable(
        "A 2-layer CNN vs a ResNet",
        2,
        False,
        {(GRAD, GRAD): 0.90},
        "Section 2.3, across architectures ('over 90%')",
        relation=">",
    ),
}

COLUMNS = [
    "paper_table",
    "title",
    "experiment",
    "variant",
    "train_method",
    "test_method",
    "paper",
    "paper_relation",
    "ours",
    "difference",
    "ci_low",
    "ci_high",
    "paper_in_ci",
    "n_test",
    "n_primaries",
    "paper_n_primaries",
    "chance",
    "paper_source",
    # beyond a single number (present when the cross-evaluation has replicates and the cue)
    "n_replicates",
    "ours_sd",
    "above_chance",
    "class_cue",
    "vs_cue",
    "above_cue",
    "same_class_accuracy",
    "same_class_above_chance",
]
OPTIONAL = {
    "n_replicates": "n_replicates",
    "ours_sd": "accuracy_sd",
    "above_chance": "above_chance",
    "class_cue": "class_cue",
    "vs_cue": "vs_cue",
    "above_cue": "above_cue",
    "same_class_accuracy": "same_class_accuracy",
    "same_class_above_chance": "same_class_above_chance",
}


def table_variant(key: str, cfg: dict) -> str:
    """Our variant that stands for a paper table."""
    if TABLES[key].shuffled:
        return cfg["shuffled_variant"]
    return "original"


def check_paper_comparison(config: dict) -> None:
    """Cross-key checks of ``paper_comparison`` against ``experiments`` (names the key)."""
    cfg = config.get("paper_comparison")
    if not cfg:
        return
    experiments = config.get("experiments", {})
    for key, experiment in cfg.get("tables", {}).items():
        where = f"paper_comparison.tables.{key}"
        if key not in TABLES:
            raise ConfigError(f"{where}: unknown paper table; expected one of {sorted(TABLES)}")
        if experiment not in experiments:
            raise ConfigError(
                f"{where}: experiment {experiment!r} is not in 'experiments' "
                f"(known: {', '.join(sorted(experiments))})"
            )
        spec = experiments[experiment]
        missing = [m for m in TABLES[key].methods if m not in spec.get("methods", [])]
        if missing:
            raise ConfigError(
                f"{where}: experiment {experiment!r} lacks method(s) {missing} that the paper's "
                f"{TABLES[key].source} reports"
            )
        variant = table_variant(key, cfg)
        if variant not in spec.get("variants", ["original"]):
            raise ConfigError(
                f"{where}: experiment {experiment!r} lacks variant {variant!r} "
                f"(add it to experiments.{experiment}.variants)"
            )


def compare(cross_evaluation: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per paper cell: the paper's value, ours, difference, our 95% CI and n_test."""
    needed = {"experiment", "variant", "train_method", "test_method", "accuracy", "n_test"}
    if not needed <= set(cross_evaluation.columns):
        raise DataError(
            f"cross-evaluation table lacks column(s) {sorted(needed - set(cross_evaluation))}"
        )
    index = cross_evaluation.set_index(["experiment", "variant", "train_method", "test_method"])
    rows = []
    # the paper's order, not the config's: the rule passes the config block with its keys sorted
    for key in [k for k in TABLES if k in cfg["tables"]]:
        experiment, table = cfg["tables"][key], TABLES[key]
        variant = table_variant(key, cfg)
        for (train, test), value in table.cells.items():
            where = (experiment, variant, train, test)
            if where not in index.index:
                raise DataError(
                    f"cross-evaluation table has no row for experiment {experiment!r}, variant "
                    f"{variant!r}, trained on {train}, tested on {test} (paper_comparison.tables."
                    f"{key})"
                )
            ours = index.loc[where]
            low, high = float(ours["ci_low"]), float(ours["ci_high"])
            in_ci = value <= high if table.relation == ">" else low <= value <= high
            rows.append(
                {
                    "paper_table": key,
                    "title": table.title,
                    "experiment": experiment,
                    "variant": variant,
                    "train_method": train,
                    "test_method": test,
                    "paper": value,
                    "paper_relation": table.relation,
                    "ours": float(ours["accuracy"]),
                    "difference": float(ours["accuracy"]) - value,
                    "ci_low": low,
                    "ci_high": high,
                    "paper_in_ci": bool(in_ci),
                    "n_test": int(ours["n_test"]),
                    "n_primaries": int(ours["n_primaries"]),
                    "paper_n_primaries": table.n_primaries,
                    "chance": float(ours["chance"]),
                    "paper_source": table.source,
                    **{k: ours[c] for k, c in OPTIONAL.items() if c in ours.index},
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(comparison: pd.DataFrame) -> str:
    """A block per paper table: every cell with paper value, ours, difference, CI and n_test,
    and (with replicates) the spread, the verdicts and the class-cue control."""
    replicated = "above_cue" in comparison and comparison["above_cue"].notna().any()
    parts = [
        "# Comparison with the paper\n\n",
        f"Paper: {SOURCE}. Ours: secondary test accuracy from `cross_evaluation.csv`"
        + (
            ", the mean over replicates ± their standard deviation, with a 95% interval that "
            "counts replicate and test-sample variation"
            if replicated
            else ", with its 95% Wilson interval"
        )
        + ". `difference` = ours - paper. A paper value marked `>` is a lower bound. `in CI`: "
        "the paper's value lies inside our interval (for `>`: our upper bound exceeds it).",
    ]
    if replicated:
        parts.append(
            " `> chance` and `> cue`: the cell is above chance, and above the class cue (the "
            "best guess of the primary from the class a map explains alone, on the same test "
            "maps), by one-sided tests on that interval, Holm-adjusted per block. `same class`: "
            "our accuracy on the test images every primary explains as the same class, where "
            "the class cue is exactly at chance, and whether it is above chance (the same test). "
            "The paper had no such controls: a fingerprint survives the class cue where `> cue` "
            "or `same class > chance` is `yes`."
        )
    parts.append("\n")
    for key, block in comparison.groupby("paper_table", sort=False):
        first = block.iloc[0]
        parts.append(
            f"\n## {first['title']} ({first['paper_source']})\n\n"
            f"Our experiment `{first['experiment']}`, variant `{first['variant']}`: "
            f"{int(first['n_primaries'])} primaries (paper: {int(first['paper_n_primaries'])}), "
            f"chance {first['chance']:.2f}, n_test {int(block['n_test'].min())}"
            + (
                f"-{int(block['n_test'].max())}"
                if block["n_test"].max() != block["n_test"].min()
                else ""
            )
            + " maps per cell.\n\n"
        )
        header = "| tested on | trained on | paper | ours | difference | 95% CI | n_test | in CI |"
        if replicated:
            header += " > chance | class cue | > cue | same class | same class > chance |"
        parts.append(header + "\n" + "|---" * header.count(" | ") + "|---|\n")
        for _, row in block.iterrows():
            paper = f"{row['paper_relation'] if row['paper_relation'] != '=' else ''}"
            ours = f"{row['ours']:.3f}"
            if replicated and row.get("n_replicates", 1) > 1:
                ours += f" ± {row['ours_sd']:.3f}"
            line = (
                f"| {short_name(row['test_method'])} | {short_name(row['train_method'])} "
                f"| {paper}{row['paper']:.2f} | {ours} | {row['difference']:+.3f} "
                f"| [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {int(row['n_test'])} "
                f"| {_yes(row['paper_in_ci'])} |"
            )
            if replicated:
                same = row["same_class_accuracy"]
                line += (
                    f" {_yes(row['above_chance'])} | {row['class_cue']:.3f} "
                    f"| {_yes(row['above_cue'])} | {'n/a' if pd.isna(same) else f'{same:.3f}'} "
                    f"| {'n/a' if pd.isna(same) else _yes(row['same_class_above_chance'])} |"
                )
            parts.append(line + "\n")
        if len(block) > 1 and key != "shuffled_two_resnets":
            parts.append("\n" + _ours_vs_paper_matrix(block) + "\n")
    return "".join(parts)


def _yes(value) -> str:
    if isinstance(value, str):
        value = value.strip().lower() == "true"
    return "yes" if bool(value) else "no"


def _ours_vs_paper_matrix(block: pd.DataFrame) -> str:
    """Table 1 layout with 'ours (paper)' in each cell."""
    tests = list(dict.fromkeys(block["test_method"]))
    trains = list(dict.fromkeys(block["train_method"]))
    cells = {(r.train_method, r.test_method): r for r in block.itertuples()}
    lines = [
        "| ours (paper): tested on \\ trained on | " + " | ".join(map(short_name, trains)) + " |",
        "|---" * (len(trains) + 1) + "|",
    ]
    for test in tests:
        values = []
        for train in trains:
            r = cells.get((train, test))
            values.append("" if r is None else f"{r.ours:.2f} ({r.paper:.2f})")
        lines.append(f"| {short_name(test)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(
    *, cross_evaluation_csv: str | Path, cfg: dict, out_csv: str | Path, out_md: str | Path
) -> pd.DataFrame:
    """The comparison as CSV and markdown, both written atomically."""
    from .store import atomic_output

    table = pd.read_csv(cross_evaluation_csv)
    comparison = compare(table, cfg)
    if comparison["ours"].isna().any() or not np.isfinite(comparison["ours"]).all():
        raise DataError(f"{cross_evaluation_csv}: some compared accuracies are missing")
    with atomic_output(out_csv) as tmp:
        comparison.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown(comparison))
    return comparison
