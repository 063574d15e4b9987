"""Replicate statistics: interval and tests that count replicate and test-sample variation."""

import math

import numpy as np
import pytest

from saliency_fingerprints.replicates import (
    format_p,
    mcnemar_variance,
    paired_difference,
    replicate_interval,
)


def test_one_replicate_is_a_binomial_interval():
    est = replicate_interval([0.9], [400])
    assert est.mean == 0.9 and est.sd == 0.0 and math.isinf(est.df)
    adjusted = (0.9 * 400 + 2) / 404
    assert est.se == pytest.approx(math.sqrt(adjusted * (1 - adjusted) / 404))
    assert est.low == pytest.approx(0.9 - 1.959964 * est.se, abs=1e-6)


def test_spread_across_replicates_widens_the_interval():
    tight = replicate_interval([0.80, 0.80, 0.80], [300] * 3)
    spread = replicate_interval([0.70, 0.80, 0.90], [300] * 3)
    assert spread.mean == pytest.approx(0.80) and spread.sd == pytest.approx(0.1)
    assert spread.high - spread.low > 3 * (tight.high - tight.low)
    # the replicate term dominates: few degrees of freedom, a t quantile well above 1.96
    assert 2 <= spread.df < 3
    assert spread.p_above(0.5) > tight.p_above(0.5)


def test_interval_covers_the_truth_at_its_level():
    # synthetic experiment: replicate accuracies vary around 0.7 (sd 0.03), then each is
    # measured on 300 shared test maps; the interval should cover 0.7 about 95% of the time
    rng = np.random.default_rng(0)
    covered = 0
    trials = 2000
    for _ in range(trials):
        test_noise = rng.normal(0, math.sqrt(0.7 * 0.3 / 300))  # shared by the replicates
        accs = 0.7 + rng.normal(0, 0.03, 3) + test_noise
        est = replicate_interval(accs, [300] * 3)
        covered += est.low <= 0.7 <= est.high
    assert 0.93 <= covered / trials <= 0.995


def test_perfect_replicates_still_have_an_interval():
    est = replicate_interval([1.0, 1.0, 1.0], [100] * 3)
    assert est.high == 1.0 and 0.9 < est.low < 1.0
    assert est.p_above(0.5) < 1e-10


def test_verdict_against_chance_flips_with_the_spread():
    # mean 0.6 on 300 maps: one replicate says above chance, a wide spread says not
    assert replicate_interval([0.6], [300]).p_above(0.5) < 0.01
    assert replicate_interval([0.45, 0.6, 0.75], [300] * 3).p_above(0.5) > 0.05


def test_paired_difference_and_mcnemar():
    # two perfect predictors: no discordant maps, a small positive variance all the same
    assert mcnemar_variance(0, 0, 100) > 0
    diff = paired_difference([0.2, 0.25, 0.3], [mcnemar_variance(30, 5, 200)] * 3)
    assert diff.mean == pytest.approx(0.25) and diff.low > 0 and diff.p_above(0.0) < 0.05
    null = paired_difference([0.0, -0.01, 0.01], [mcnemar_variance(20, 20, 200)] * 3)
    assert null.low < 0 < null.high and null.p_above(0.0) > 0.3


def test_no_replicates_is_nan():
    est = replicate_interval([], [])
    assert math.isnan(est.mean) and est.n_replicates == 0 and math.isnan(est.p_above(0.5))


def test_format_p():
    assert format_p(0.0) == "< 1e-300" and format_p(1e-320) == "< 1e-300"
    assert format_p(0.01234) == "0.0123" and format_p(float("nan")) == "n/a"
