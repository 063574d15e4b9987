"""Two runs side by side (:mod:`saliency_fingerprints.run_comparison`), on small made-up runs."""

from __future__ import annotations

import json

import pandas as pd

from saliency_fingerprints.run_comparison import compare, main


def write_run(root, cells, replicates, rates, searched=None):
    """``cells``: (train, test, accuracy, above chance, above cue); ``replicates``: per
    (train, test) the replicates' accuracies; ``rates``: per train method the rate each
    replicate kept."""
    (root / "tables").mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "experiment": "e", "variant": "original", "train_method": train,
                "test_method": test, "accuracy": acc, "accuracy_sd": 0.01, "ci_low": acc - 0.05,
                "ci_high": acc + 0.05, "above_chance": chance, "above_cue": cue,
            }
            for train, test, acc, chance, cue in cells
        ]
    ).to_csv(root / "tables" / "cross_evaluation.csv", index=False)  # fmt: skip
    pd.DataFrame(
        [
            {"experiment": "e", "variant": "original", "replicate": r, "train_method": train,
             "test_method": test, "accuracy": acc}
            for (train, test), accs in replicates.items()
            for r, acc in enumerate(accs)
        ]
    ).to_csv(root / "tables" / "cross_evaluation_replicates.csv", index=False)  # fmt: skip
    for method, kept in rates.items():
        records = [{"replicate": r, "learning_rate": rate} for r, rate in enumerate(kept)]
        for r, record in enumerate(records):
            if searched:
                record["learning_rate_search"] = [
                    {"learning_rate": rate, "validation_accuracy": acc}
                    for rate, acc in searched[method][r]
                ]
        out = root / "experiments" / "e" / "secondaries" / method / "original"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"replicates": records}))
    return root


def test_compare_counts_changed_verdicts_and_exact_replicates(tmp_path):
    fixed = write_run(
        tmp_path / "fixed",
        [("grad", "grad", 0.90, True, True), ("sg", "sg", 0.60, True, False),
         ("grad", "sg", 0.70, True, False)],
        {("grad", "grad"): [0.9, 0.9], ("grad", "sg"): [0.7, 0.7], ("sg", "sg"): [0.6, 0.6]},
        {"grad": [3e-4, 3e-4], "sg": [3e-4, 3e-4]},
    )  # fmt: skip
    chosen = write_run(
        tmp_path / "chosen",
        [("grad", "grad", 0.92, True, True), ("sg", "sg", 0.55, False, False),
         ("grad", "sg", 0.66, True, False)],
        # replicate 0 of grad kept the fixed rate and scores as before; replicate 1 did not
        {("grad", "grad"): [0.9, 0.94], ("grad", "sg"): [0.7, 0.62], ("sg", "sg"): [0.5, 0.6]},
        {"grad": [3e-4, 1e-3], "sg": [1e-4, 3e-4]},
        searched={
            "grad": [[(3e-4, 0.9), (1e-3, 0.8)], [(3e-4, 0.8), (1e-3, 0.9)]],
            "sg": [[(1e-4, 0.7), (3e-4, 0.6)], [(1e-4, 0.5), (3e-4, 0.6)]],
        },
    )  # fmt: skip
    table, summary = compare(fixed, chosen)
    assert list(table["method"]) == ["grad", "sg"]
    assert list(table["difference"]) == ["+0.020", "-0.050"]
    assert list(table["verdict (above chance, cue)"]) == ["chance+cue / chance+cue", "chance / -"]
    assert list(table["chosen: rates kept (replicates)"]) == ["0.0003, 0.001", "0.0001, 0.0003"]
    assert table["chosen: validation accuracy per candidate"].iloc[0] == "0.90/0.80, 0.80/0.90"
    assert (
        summary[0]
        == "2 own-method cells: verdicts changed in 1; |difference| median 0.035, max 0.050"
    )
    assert summary[1].startswith(
        "1 cross-method cells: verdicts changed in 0; |difference| median 0.040"
    )
    # grad rep 0 (exact) and sg rep 1 (its sg accuracy 0.6 as before) kept the fixed rate
    assert summary[2].startswith("2 replicate secondaries kept the first run's rate; 2 of them")


def test_command_line_writes_markdown(tmp_path, capsys):
    run = write_run(tmp_path / "a", [("grad", "grad", 0.9, True, True)],
                    {("grad", "grad"): [0.9]}, {"grad": [3e-4]})  # fmt: skip
    assert main([str(run), str(run), "--markdown", str(tmp_path / "out.md")]) == 0
    text = (tmp_path / "out.md").read_text()
    assert text == capsys.readouterr().out and "| e " in text
    assert "1 replicate secondaries kept the first run's rate; 1 of them scored exactly" in text
