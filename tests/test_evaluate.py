"""Statistics of the cross-evaluation tables: Wilson intervals, binomial tests, Holm."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from saliency_fingerprints.tables import chance_note, holm, p_above_chance, wilson_interval


def test_binomial_test_against_chance():
    # P(X >= 50) for X ~ Binomial(100, 0.5)
    assert p_above_chance(50, 100, 0.5) == pytest.approx(0.539795, abs=1e-6)
    assert p_above_chance(100, 100, 0.5) == pytest.approx(0.5**100)
    assert p_above_chance(0, 30, 0.1) == pytest.approx(1.0)
    assert math.isnan(p_above_chance(0, 0, 0.5))
    # ten primaries: 20 of 100 right is already unlikely by guessing
    assert p_above_chance(20, 100, 0.1) < 0.01 < p_above_chance(13, 100, 0.1)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.6]) == [1.0, 1.0]  # capped at 1
    raw = [0.001, 0.2, 0.01, 0.04]
    adjusted = holm(raw)
    assert all(a >= r for a, r in zip(adjusted, raw, strict=True))


def test_wilson_interval_contains_the_estimate():
    low, high = wilson_interval(90, 100)
    assert low < 0.9 < high and high - low < 0.13
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def block(p_holm):
    return pd.DataFrame(
        {
            "train_method": ["grad", "grad"],
            "test_method": ["grad", "smoothgrad"],
            "p_holm": p_holm,
        }
    )


def test_chance_note_names_the_weak_cells():
    assert "Every cell is above chance" in chance_note(block([1e-9, 1e-4]))
    note = chance_note(block([1e-9, 0.3]))
    assert "Not above chance" in note and "SG maps by the Grad secondary" in note
    assert "No cell is above chance" in chance_note(block([0.2, 0.3]))
    assert chance_note(block([float("nan"), float("nan")])) == ""


def test_workflow_table_has_p_values(tiny_run):
    table = pd.read_csv(tiny_run / "results/tables/cross_evaluation.csv")
    assert table["p_value"].between(0, 1).all() and table["p_holm"].between(0, 1).all()
    assert (table["p_holm"] >= table["p_value"]).all()
    assert (table["p_holm_vs_cue"] >= table["p_vs_cue"]).all()
    assert (table["above_chance"] == (table["p_holm"] < 0.05)).all()
    own = table[(table["variant"] == "original") & (table["train_method"] == table["test_method"])]
    assert (own["accuracy"] > 0.7).all(), own
    # two replicates: the interval has one degree of freedom when they disagree, so only the
    # strongest fingerprint is sure to be above chance
    assert own[own["train_method"] == "grad"]["above_chance"].all(), own
    text = (tiny_run / "results/tables/cross_evaluation.md").read_text()
    assert "Holm-adjusted" in text
    # each replicate's secondary says its learning rate and the epoch kept on validation
    rows = pd.read_csv(tiny_run / "results/tables/cross_evaluation_replicates.csv")
    assert (rows["secondary_learning_rate"] == 3e-4).all()
    assert rows["secondary_epoch"].between(1, 10).all()
    assert "Grad 0.0003 (epoch " in text


def replicate_rows(accuracies, cue=0.6, n=200, experiment="e"):
    rows = []
    for r, acc in enumerate(accuracies):
        right = round(acc * n)
        cue_right = round(cue * n)
        rows.append(
            {
                "experiment": experiment,
                "variant": "original",
                "replicate": r,
                "seed": r,
                "primaries": f"a{r},b{r}",
                "train_method": "grad",
                "test_method": "grad",
                "accuracy": right / n,
                "n_test": n,
                "chance": 0.5,
                "n_primaries": 2,
                "class_cue": cue_right / n,
                "only_secondary": max(0, right - cue_right),
                "only_cue": max(0, cue_right - right),
                "same_class_accuracy": acc - 0.05,
                "n_same_class": n // 2,
                "same_class_fraction": 0.5,
                "p_value": 0.0,
            }  # fmt: skip
        )
    return pd.DataFrame(rows)


def test_summary_uses_the_replicate_interval_and_the_class_cue():
    from saliency_fingerprints.tables import markdown_report, summarise

    strong = summarise(replicate_rows([0.90, 0.92, 0.94]))
    row = strong.iloc[0]
    assert row.n_replicates == 3 and row.accuracy == pytest.approx(0.92)
    assert row.accuracy_sd == pytest.approx(0.02)
    assert row.ci_low < 0.92 < row.ci_high and row.above_chance and row.above_cue
    assert row.vs_cue == pytest.approx(0.32)
    # no better than the class cue: above chance, not above the cue
    cue_only = summarise(replicate_rows([0.62, 0.58, 0.60], cue=0.60)).iloc[0]
    assert cue_only.above_chance and not cue_only.above_cue
    # a wide spread across replicates: the verdict against chance falls
    unsteady = summarise(replicate_rows([0.45, 0.55, 0.80], cue=0.5)).iloc[0]
    assert unsteady.accuracy > 0.5 and not unsteady.above_chance
    text = markdown_report(strong, replicate_rows([0.90, 0.92, 0.94]), {"a0": 0.4, "b2": 0.3})
    assert "0.920 ± 0.020" in text and "Class cue: 0.600" in text
    assert "3 disjoint primary sets" in text and "test accuracy 0.30-0.40" in text


def test_cell_means_are_the_summarys_accuracy_without_its_statistics():
    """The heatmap's cheap per-cell mean agrees with :func:`summarise`."""
    from saliency_fingerprints.tables import cell_means, summarise

    rows = pd.concat(
        [replicate_rows([0.90, 0.92, 0.97]), replicate_rows([0.5, 0.6], cue=0.5)], ignore_index=True
    )
    rows.loc[rows.index[3:], "test_method"] = "other"
    means, full = cell_means(rows), summarise(rows)
    assert list(means["test_method"]) == list(full["test_method"])
    assert means["accuracy"].tolist() == pytest.approx(full["accuracy"].tolist())
    assert means["n_replicates"].tolist() == [3, 2]
    assert set(means.columns) >= {"chance", "n_test"}


def test_report_names_each_secondarys_learning_rate_and_kept_epoch():
    from saliency_fingerprints.tables import markdown_report, summarise

    rows = replicate_rows([0.90, 0.92, 0.94]).assign(
        secondary_learning_rate=[1e-4, 1e-3, 1e-3], secondary_epoch=[4, 6, 5]
    )
    text = markdown_report(summarise(rows), rows)
    assert "Grad 0.0001, 0.001, 0.001 (epoch 4, 6, 5)" in text
    same = rows.assign(secondary_learning_rate=3e-4)
    assert "Grad 0.0003 (epoch 4, 6, 5)" in markdown_report(summarise(same), same)
    # tables from weights written before the columns existed: no line
    old = rows.assign(secondary_learning_rate=None, secondary_epoch=None)
    assert "Secondaries' learning rate" not in markdown_report(summarise(old), old)


def test_chance_note_names_cells_not_above_the_cue():
    frame = block([1e-9, 1e-9]).assign(p_holm_vs_cue=[1e-3, 0.4])
    note = chance_note(frame)
    assert "Every cell is above chance" in note
    assert "Not above the class cue" in note and "SG maps by the Grad secondary" in note
