"""Cross-evaluation: every secondary of an experiment on every method's test maps."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from .provenance import Provenance, as_attr
from .runtime import describe_device, set_determinism
from .saliency import SHORT_NAMES
from .secondary import load_mapset, split_ids, to_tensors
from .store import atomic_output
from .training import accuracy, load_model

log = logging.getLogger(__name__)

COLUMNS = [
    "experiment",
    "variant",
    "train_method",
    "test_method",
    "accuracy",
    "ci_low",
    "ci_high",
    "chance",
    "n_test",
    "n_primaries",
    "p_value",
    "p_holm",
]
SIGNIFICANCE = 0.05


def p_above_chance(successes: int, n: int, chance: float) -> float:
    """One-sided exact binomial test of "accuracy > chance": the probability of at least
    ``successes`` correct out of ``n`` if the secondary guessed (each test map counted as an
    independent trial)."""
    if n == 0:
        return float("nan")
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


def cross_evaluate(
    experiment: str,
    variant: str,
    primaries: list[str],
    secondaries: dict[str, str | Path],
    maps: dict[str, list[str | Path]],
    cfg: dict,
    out_csv: str | Path,
    device: torch.device,
    threads: int | None = None,
) -> pd.DataFrame:
    """``secondaries``: train method -> weights; ``maps``: test method -> store per primary."""
    prov = Provenance(
        "cross_evaluate",
        {"experiment": experiment, "variant": variant, "primaries": primaries, **cfg},
        describe_device(device),
    )
    set_determinism(int(cfg["seed"]), threads)
    rows = []
    test_sets = {}
    for test_method, paths in maps.items():
        _, test_ids = split_ids(paths, cfg)
        test_sets[test_method] = to_tensors(
            load_mapset(paths, primaries, test_ids, cfg, variant), device
        )
    for train_method, weights in secondaries.items():
        model = load_model(weights, device)
        for test_method, (x, y) in test_sets.items():
            acc = accuracy(model, x, y)
            n = len(y)
            low, high = wilson_interval(round(acc * n), n)
            rows.append(
                {
                    "experiment": experiment,
                    "variant": variant,
                    "train_method": train_method,
                    "test_method": test_method,
                    "accuracy": acc,
                    "ci_low": low,
                    "ci_high": high,
                    "chance": 1.0 / len(primaries),
                    "n_test": n,
                    "n_primaries": len(primaries),
                    "p_value": p_above_chance(round(acc * n), n, 1.0 / len(primaries)),
                }
            )
            log.info(
                "%s/%s: trained on %s, tested on %s: accuracy %.4f (n=%d)",
                experiment,
                variant,
                train_method,
                test_method,
                acc,
                n,
            )
    # one family per (experiment, variant): every cell of this table
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_table(table, out_csv, prov.finish())
    return table


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
    matrix.index = [SHORT_NAMES.get(m, m) for m in matrix.index]
    matrix.columns = [SHORT_NAMES.get(m, m) for m in matrix.columns]
    return matrix


def markdown_report(table: pd.DataFrame) -> str:
    """One Table-1-style block per (experiment, variant)."""
    parts = [
        "# Cross-evaluation\n",
        "Secondary test accuracy. Rows: the method whose test maps were classified; "
        "columns: the method the secondary was trained on. The 95% Wilson interval, "
        "n_test and the p-value of an exact one-sided binomial test against chance (raw and "
        "Holm-adjusted over the block's cells) for every cell are in `cross_evaluation.csv`.\n",
    ]
    for (experiment, variant), block in table.groupby(["experiment", "variant"], sort=False):
        chance = block["chance"].iloc[0]
        n = int(block["n_primaries"].iloc[0])
        parts.append(f"\n## {experiment} - {variant} ({n} primaries, chance {chance:.2f})\n")
        matrix = as_matrix(block)
        matrix.index.name = "test on \\ trained on"
        parts.append(matrix.to_markdown(floatfmt=".3f") + "\n")
        parts.append(chance_note(block))
    return "".join(parts)


def chance_note(block: pd.DataFrame) -> str:
    """One line on which cells of a block are not significantly above chance."""
    if "p_holm" not in block or block["p_holm"].isna().all():
        return ""  # a table from before the p-values were added
    weak = block[~(block["p_holm"] < SIGNIFICANCE)]
    if weak.empty:
        return f"\nEvery cell is above chance (Holm-adjusted p < {SIGNIFICANCE}).\n"
    if len(weak) == len(block):
        return f"\nNo cell is above chance (Holm-adjusted p >= {SIGNIFICANCE} in every cell).\n"
    cells = ", ".join(
        f"{SHORT_NAMES.get(r.test_method, r.test_method)} maps by the "
        f"{SHORT_NAMES.get(r.train_method, r.train_method)} secondary"
        for r in weak.itertuples()
    )
    return f"\nNot above chance (Holm-adjusted p >= {SIGNIFICANCE}): {cells}.\n"


def combine_tables(
    parts: list[str | Path], out_csv: str | Path, out_md: str | Path
) -> pd.DataFrame:
    """All cross-evaluation tables in one CSV and one markdown report; their shared sidecar
    records the config of every part (from the parts' own sidecars)."""
    configs = {}
    for part in parts:
        sidecar = provenance_path(part)
        configs[str(part)] = json.loads(sidecar.read_text())["config"] if sidecar.exists() else None
    prov = Provenance("combine_tables", {"parts": configs})
    table = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    write_table(table, out_csv, prov.finish(n_rows=len(table)))
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown_report(table))
    return table
