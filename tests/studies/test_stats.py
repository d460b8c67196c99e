"""The summary's statistics against known cases: the Student-t interval against a printed t table and against
scipy, its coverage on normal samples with known mean (where a normal-quantile interval visibly undercovers), paired
differences, and the bootstrap against scipy.stats.bootstrap."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from zoo.studies.stats import bootstrap_mean, describe, paired_difference, t_interval


def test_t_interval_matches_the_t_table_and_scipy():
    # 1, 2, 3: mean 2, s = 1; t_{0.975, 2 df} = 4.303 (any printed t table)
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (high - low) / 2 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert (low + high) / 2 == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.normal(3.0, 2.0, size=n)
        for confidence in (0.9, 0.95, 0.99):
            want = stats.t.interval(confidence, df=n - 1, loc=x.mean(), scale=stats.sem(x))
            assert t_interval(x, confidence) == pytest.approx(want, rel=1e-12)


def _coverage(half_width, trials=4000, n=3, mean=5.0, std=2.0):
    rng = np.random.default_rng(1234)
    hits = 0
    for _ in range(trials):
        x = rng.normal(mean, std, size=n)
        low, high = half_width(x)
        hits += low <= mean <= high
    return hits / trials


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    covered = _coverage(t_interval)
    assert abs(covered - 0.95) < 0.012  # 3.5 binomial standard errors at 4000 trials
    # the normal quantile (1.96) with 3 seeds covers far less: the test tells the two apart
    z = _coverage(lambda x: (x.mean() - 1.96 * x.std(ddof=1) / math.sqrt(x.size),
                             x.mean() + 1.96 * x.std(ddof=1) / math.sqrt(x.size)))
    assert z < 0.87


def test_describe_edge_cases():
    one = describe([4.0])
    assert one == {"n": 1, "mean": 4.0, "std": None, "ci_low": None, "ci_high": None}
    assert describe([])["n"] == 0 and describe([])["mean"] is None
    same = describe([2.0, 2.0, 2.0])
    assert same["std"] == 0.0 and same["ci_low"] == same["ci_high"] == 2.0
    assert describe([1.0, 3.0])["std"] == pytest.approx(math.sqrt(2.0))  # ddof=1
    with pytest.raises(ValueError, match="finite"):
        describe([1.0, float("nan")])


def test_paired_difference_pairs_by_seed_and_counts_by_direction():
    method = {0: 0.50, 1: 0.40, 2: 0.45, 5: 9.9}
    baseline = {0: 0.60, 1: 0.30, 2: 0.50, 3: 0.1}
    out = paired_difference(method, baseline, higher_is_better=False)  # e.g. an error rate
    assert out["seeds"] == [0, 1, 2] and out["n"] == 3
    assert out["differences"] == pytest.approx([-0.10, 0.10, -0.05])
    assert out["mean"] == pytest.approx(-0.05 / 3)
    assert (out["seeds_better"], out["seeds_worse"], out["seeds_tied"]) == (2, 1, 0)
    assert out["seeds_agree"] == 2  # two negative differences, mean negative
    want = stats.t.interval(0.95, df=2, loc=np.mean(out["differences"]), scale=stats.sem(out["differences"]))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(want)
    higher = paired_difference(method, baseline, higher_is_better=True)
    assert (higher["seeds_better"], higher["seeds_worse"]) == (1, 2)


def test_bootstrap_matches_scipy_percentile_bootstrap_and_is_seeded():
    x = np.random.default_rng(7).normal(0.3, 1.0, size=500)
    ours = bootstrap_mean(x, 0.95, resamples=3000, seed=11)
    ref = stats.bootstrap((x,), np.mean, n_resamples=3000, method="percentile", random_state=np.random.default_rng(11))
    assert (ours["ci_low"], ours["ci_high"]) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-9)
    chunked = bootstrap_mean(x, 0.95, resamples=3000, seed=11, max_elements=1234)
    assert chunked == ours  # memory chunking does not change the draws
    assert bootstrap_mean(x, 0.95, resamples=3000, seed=12) != ours
    assert ours["mean"] == pytest.approx(x.mean()) and ours["n_examples"] == 500


def test_bootstrap_covers_a_known_mean():
    rng = np.random.default_rng(5)
    trials, hits = 200, 0
    for i in range(trials):
        out = bootstrap_mean(rng.normal(1.0, 3.0, size=200), resamples=1000, seed=i)
        hits += out["ci_low"] <= 1.0 <= out["ci_high"]
    assert 0.89 <= hits / trials <= 0.99


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_mean(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=95)
