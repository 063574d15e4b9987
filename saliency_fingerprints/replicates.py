"""Replicate statistics: one accuracy per cell from several replicates, with an honest interval.

A *replicate* of an experiment is one secondary per (method, variant) trained with its own seed
and, with ``replicates.disjoint_primaries``, on the maps of its own set of primaries. A cell's
accuracy then varies for two reasons: the replicate (secondary initialisation and batch order,
which primaries were drawn) and the test sample (which maps happened to be held out). A Wilson
interval covers only the second; the spread across replicates only the first (and, with shared
test maps, none of the second). :func:`replicate_interval` combines both:

    se^2 = s^2 / R  +  p~(1 - p~) / (n + 4)

``s`` the standard deviation of the R replicate accuracies, ``n`` their mean number of test maps
and ``p~ = (mean * n + 2) / (n + 4)`` the Agresti-Coull-adjusted mean, which keeps the test-sample
term positive at 0 and 1. The test-sample term is counted as if every replicate were scored on the
same maps (true for secondary-seed replicates, conservative for disjoint primary sets, whose test
maps differ). The interval is ``mean +- t * se`` with Welch-Satterthwaite degrees of freedom
(R - 1 when the replicate term dominates, infinite when the replicates agree exactly), clipped to
[0, 1]. The one-sided p-value of "accuracy > reference" uses the same ``t`` and ``se``, so the
verdict and the interval agree.

:func:`paired_difference` does the same for the difference between a secondary and a baseline
scored on the same test maps (the class cue): per replicate the test-sample variance of the paired
difference is McNemar's, from the discordant maps (each count plus 0.5, so that two perfect
predictors do not give a zero variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over replicates, its spread, and an interval and test that include both sources
    of variation."""

    mean: float
    sd: float  # across replicates (0 for one replicate)
    se: float  # standard error of the mean, replicate and test-sample terms combined
    df: float  # Welch-Satterthwaite degrees of freedom (inf: the test-sample term alone)
    low: float
    high: float
    n_replicates: int

    def p_above(self, reference: float) -> float:
        """One-sided p-value of "the true mean exceeds ``reference``"."""
        if not np.isfinite(self.mean):
            return float("nan")
        if self.se <= 0:
            return 0.0 if self.mean > reference else 1.0
        from scipy import stats  # lazily: ~1-2 s to import, and figure jobs never call it

        return float(stats.t.sf((self.mean - reference) / self.se, self.df))


def _combine(values: np.ndarray, test_variance: float, lower: float, upper: float) -> Estimate:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    r = len(values)
    if r == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, nan, nan, nan, 0)
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if r > 1 else 0.0
    replicate_variance = sd * sd / r
    variance = replicate_variance + test_variance
    se = math.sqrt(variance)
    if r > 1 and replicate_variance > 0:
        df = variance**2 / (replicate_variance**2 / (r - 1))
    else:
        df = math.inf
    from scipy import stats  # lazily, as above

    q = float(stats.t.ppf(0.5 + LEVEL / 2, df)) if np.isfinite(df) else stats.norm.ppf(0.975)
    low = max(lower, mean - q * se)
    high = min(upper, mean + q * se)
    return Estimate(mean, sd, se, df, low, high, r)


def replicate_interval(accuracies, n_tests) -> Estimate:
    """Mean accuracy over replicates with an interval for replicate and test-sample variation.

    ``accuracies``: one per replicate; ``n_tests``: the number of test maps behind each."""
    accuracies = np.asarray(accuracies, dtype=float)
    n = float(np.mean(n_tests)) if len(np.atleast_1d(n_tests)) else 0.0
    if n <= 0 or not np.isfinite(accuracies).any():
        return _combine(np.array([]), 0.0, 0.0, 1.0)
    adjusted = (float(np.nanmean(accuracies)) * n + 2) / (n + 4)
    return _combine(accuracies, adjusted * (1 - adjusted) / (n + 4), 0.0, 1.0)


def mcnemar_variance(only_first: int, only_second: int, n: int) -> float:
    """Test-sample variance of a paired accuracy difference on ``n`` maps, from the maps only
    the first (``only_first``) or only the second predictor got right (each plus 0.5)."""
    if n <= 0:
        return float("nan")
    b, c = only_first + 0.5, only_second + 0.5
    return (b + c - (b - c) ** 2 / (n + 1)) / (n * n)


def paired_difference(differences, variances) -> Estimate:
    """Mean over replicates of a paired accuracy difference (secondary minus baseline), with
    an interval for replicate and test-sample variation (``variances``: per replicate, from
    :func:`mcnemar_variance`)."""
    variances = np.asarray(variances, dtype=float)
    test_variance = float(np.nanmean(variances)) if np.isfinite(variances).any() else 0.0
    return _combine(np.asarray(differences, dtype=float), test_variance, -1.0, 1.0)


def format_p(p: float) -> str:
    """A p-value for people: ``< 1e-300`` below the float range, three significant digits."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 1e-300:
        return "< 1e-300"
    return f"{p:.3g}"
