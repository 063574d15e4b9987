"""Statistics of the cross-evaluation tables: Wilson intervals, binomial tests, Holm."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from saliency_fingerprints.evaluate import chance_note, holm, p_above_chance, wilson_interval


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
    own = table[(table["variant"] == "original") & (table["train_method"] == table["test_method"])]
    assert (own["p_holm"] < 0.05).all(), own
    text = (tiny_run / "results/tables/cross_evaluation.md").read_text()
    assert "Holm-adjusted" in text
