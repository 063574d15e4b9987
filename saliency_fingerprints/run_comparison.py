"""Two runs of one preset side by side: did a change (e.g. secondaries choosing their learning
rate on validation maps, ``config/overlays/cifar10-cpu-lr-search.yaml``) move any number or
verdict of the cross-evaluation?

Reads each run's ``tables/cross_evaluation.csv`` (cells over replicates),
``tables/cross_evaluation_replicates.csv`` (per replicate) and the secondaries'
``metrics.json`` (the learning rate each replicate kept and, with candidates, each candidate's
validation accuracy). Writes one markdown table of the own-method cells (trained and tested on
the same method) and a summary of every cell: how many verdicts changed, the size of the
differences, and whether the replicates that kept the first run's rate scored exactly as in it.

    python -m saliency_fingerprints.run_comparison results/cifar10-cpu results/cifar10-cpu-lr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .tables import CELL


def verdict(row: pd.Series) -> str:
    """``chance+cue``: above chance and above the class cue; ``chance``: above chance only."""
    if not row["above_chance"]:
        return "-"
    return "chance+cue" if row["above_cue"] else "chance"


def secondary_records(results: Path, experiment: str, variant: str, method: str) -> list[dict]:
    """The replicates' records of one secondary's ``metrics.json`` (empty if it is absent)."""
    path = results / "experiments" / experiment / "secondaries" / method / variant / "metrics.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["replicates"]


def _estimate(row: pd.Series, prefix: str) -> str:
    return (
        f"{row[f'accuracy_{prefix}']:.3f} ± {row[f'accuracy_sd_{prefix}']:.3f} "
        f"[{row[f'ci_low_{prefix}']:.2f}, {row[f'ci_high_{prefix}']:.2f}]"
    )


def _rates(records: list[dict]) -> tuple[str, str]:
    """The rates the replicates kept, and per replicate each candidate's validation accuracy."""
    kept = ", ".join(f"{r['learning_rate']:g}" for r in records) or "n/a"
    searched = [
        "/".join(f"{c['validation_accuracy']:.2f}" for c in r["learning_rate_search"])
        for r in records
        if "learning_rate_search" in r
    ]
    return kept, ", ".join(searched) or "-"


def compare(first: Path, second: Path) -> tuple[pd.DataFrame, list[str]]:
    """The own-method cells' table (markdown-ready strings) and the summary lines."""
    a = pd.read_csv(first / "tables" / "cross_evaluation.csv")
    b = pd.read_csv(second / "tables" / "cross_evaluation.csv")
    cells = a.merge(b, on=CELL, suffixes=("_a", "_b"))
    if cells.empty:
        raise SystemExit(f"{first} and {second}: no cross-evaluation cell in common")
    cells["difference"] = cells["accuracy_b"] - cells["accuracy_a"]
    cells["verdict_a"] = [verdict(r) for _, r in cells.rename(columns=_side("a")).iterrows()]
    cells["verdict_b"] = [verdict(r) for _, r in cells.rename(columns=_side("b")).iterrows()]
    own = cells[cells["train_method"] == cells["test_method"]]
    rows = []
    for _, cell in own.iterrows():
        key = (cell["experiment"], cell["variant"], cell["train_method"])
        kept, searched = _rates(secondary_records(second, *key))
        rows.append(
            {
                "experiment": key[0],
                "variant": key[1],
                "method": key[2],
                f"{first.name}: accuracy ± sd [95% interval]": _estimate(cell, "a"),
                f"{second.name}: accuracy ± sd [95% interval]": _estimate(cell, "b"),
                "difference": f"{cell['difference']:+.3f}",
                f"{second.name}: rates kept (replicates)": kept,
                f"{second.name}: validation accuracy per candidate": searched,
                "verdict (above chance, cue)": f"{cell['verdict_a']} / {cell['verdict_b']}",
            }
        )
    cross = cells[cells["train_method"] != cells["test_method"]]
    summary = [_summary_line(own, "own-method"), _summary_line(cross, "cross-method")]
    summary.append(_same_rate_line(first, second))
    return pd.DataFrame(rows), summary


def _side(suffix: str) -> dict[str, str]:
    return {f"above_chance_{suffix}": "above_chance", f"above_cue_{suffix}": "above_cue"}


def _summary_line(cells: pd.DataFrame, what: str) -> str:
    if cells.empty:
        return f"0 {what} cells"
    diff = cells["difference"].abs()
    changed = int((cells["verdict_a"] != cells["verdict_b"]).sum())
    return (
        f"{len(cells)} {what} cells: verdicts changed in {changed}; |difference| median "
        f"{np.median(diff):.3f}, max {diff.max():.3f}"
    )


def _same_rate_line(first: Path, second: Path) -> str:
    """Replicate secondaries that kept the first run's learning rate: do they score exactly as
    there (the same training, so they should)?"""
    a = pd.read_csv(first / "tables" / "cross_evaluation_replicates.csv")
    b = pd.read_csv(second / "tables" / "cross_evaluation_replicates.csv")
    same, exact = 0, 0
    for (experiment, variant, method), rows_b in b.groupby(CELL[:3], sort=False):
        records_a = secondary_records(first, experiment, variant, method)
        records_b = secondary_records(second, experiment, variant, method)
        rate_a = {r["replicate"]: r["learning_rate"] for r in records_a}
        for record in records_b:
            r = record["replicate"]
            if rate_a.get(r) != record["learning_rate"]:
                continue
            same += 1
            mine = rows_b[rows_b["replicate"] == r].sort_values("test_method")
            theirs = a[
                (a["experiment"] == experiment)
                & (a["variant"] == variant)
                & (a["train_method"] == method)
                & (a["replicate"] == r)
            ].sort_values("test_method")
            exact += bool(
                len(mine) == len(theirs)
                and np.array_equal(mine["accuracy"].to_numpy(), theirs["accuracy"].to_numpy())
            )
    return (
        f"{same} replicate secondaries kept the first run's rate; {exact} of them scored exactly "
        "as in the first run on every test method"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="results directory of the reference run")
    parser.add_argument("second", type=Path, help="results directory of the changed run")
    parser.add_argument("--markdown", type=Path, help="write the table and summary here too")
    args = parser.parse_args(argv)
    table, summary = compare(args.first, args.second)
    text = table.to_markdown(index=False) + "\n\n" + "\n".join(summary) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
