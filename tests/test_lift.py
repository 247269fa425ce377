"""Lift intervals (core.monitoring.lift) against published and independently computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.monitoring.lift import (
    bootstrap_diff_means,
    bootstrap_means,
    calls_for_bootstrap,
    diff_means,
    diff_proportions,
    mean_lift,
    t_quantile,
    wilson_interval,
)


def test_wilson_and_newcombe_match_newcombes_worked_examples():
    # Newcombe (1998), Statistics in Medicine 17: 857-872, tables I and II.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    iv = diff_proportions(56, 70, 48, 80)
    assert (iv.low, iv.high) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    iv = diff_proportions(9, 10, 3, 10)
    assert (iv.low, iv.high) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    assert iv.estimate == pytest.approx(0.6) and iv.method == "newcombe"


@pytest.mark.parametrize("df", [1, 2.5, 4, 9.3, 30, 500, 20000])
@pytest.mark.parametrize("p", [0.6, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    assert t_quantile(1 - p, df) == pytest.approx(stats.t.ppf(1 - p, df), rel=1e-9)


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 3.0, 40), rng.normal(0.0, 1.0, 90)
    iv = diff_means(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert iv.estimate == pytest.approx(a.mean() - b.mean())


def zero_inflated(rng, n, rate):
    return np.where(rng.random(n) < rate, rng.lognormal(4.0, 1.0, n), 0.0)


def test_the_zero_aware_bootstrap_resamples_like_the_ordinary_one():
    rng = np.random.default_rng(5)
    x = zero_inflated(rng, 3000, 0.02)
    fast = bootstrap_means(x, 4000, np.random.default_rng(1))
    naive = x[np.random.default_rng(2).integers(0, x.size, size=(4000, x.size))].mean(axis=1)
    se = x.std() / np.sqrt(x.size)
    assert fast.mean() == pytest.approx(x.mean(), abs=4 * se / np.sqrt(4000))
    assert fast.std() == pytest.approx(se, rel=0.08)
    assert fast.std() == pytest.approx(naive.std(), rel=0.1)
    dense = rng.normal(5, 1, 500)  # no zeros: every draw is made
    assert bootstrap_means(dense, 3000).std() == pytest.approx(1 / np.sqrt(500), rel=0.08)
    assert not bootstrap_means(np.zeros(10), 5).any()


def test_bootstrap_is_seeded_and_brackets_a_real_difference():
    rng = np.random.default_rng(7)
    arm, hold = zero_inflated(rng, 20000, 0.012), zero_inflated(rng, 20000, 0.006)
    one, two = bootstrap_diff_means(arm, hold, seed=4), bootstrap_diff_means(arm, hold, seed=4)
    assert one == two
    assert one.low < one.estimate < one.high and one.low > 0
    welch = diff_means(arm, hold)
    assert one.high - one.low == pytest.approx(welch.high - welch.low, rel=0.15)


def test_revenue_calls_for_the_bootstrap_and_symmetric_data_does_not():
    rng = np.random.default_rng(9)
    revenue, normal = zero_inflated(rng, 1000, 0.05), rng.normal(10, 1, 1000)
    assert calls_for_bootstrap(revenue) and not calls_for_bootstrap(normal)
    assert mean_lift(revenue, revenue[::-1])["interval"].method == "bootstrap"
    assert mean_lift(normal, normal + 1)["interval"].method == "welch"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="count 5 is not between 0 and n = 3"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="needs at least 2 values"):
        diff_means([1.0], [1.0, 2.0])
