"""Few-run statistics (rl_vf/stats.py) against hand-computed numbers and synthetic data."""
import math

import numpy as np
import pytest

from rl_vf import stats
from rl_vf.stats import (
    aggregate,
    bootstrap_ci,
    curve_band,
    first_crossing,
    interpolate_curve,
    iqm,
    performance_profile,
    performance_profile_ci,
    probability_of_improvement,
    probability_of_improvement_ci,
    threshold_ratio,
)


def trim_mean_25(x):
    """scipy.stats.trim_mean(x, 0.25, axis=None), re-implemented from scipy's source."""
    a = np.asarray(x, dtype=float).ravel()
    n = a.size
    lowercut = int(0.25 * n)
    uppercut = n - lowercut
    part = np.partition(a, (lowercut, uppercut - 1))
    return float(np.mean(part[lowercut:uppercut]))


# ------------------------------------------------------------------------------------------ IQM


def test_iqm_hand_computed():
    assert iqm(np.arange(8)) == pytest.approx(3.5)  # keeps 2, 3, 4, 5
    assert iqm([1, 2, 10, 100]) == pytest.approx(6.0)  # keeps 2, 10
    assert iqm([[0, 1], [2, 3], [4, 5], [6, 7]]) == pytest.approx(3.5)  # flattened


def test_iqm_non_divisible_n_trims_int_quarter_from_each_end():
    # n=5: int(1.25)=1 cut per end -> keeps 1, 2, 10 (no fractional weighting).
    assert iqm([50, 0, 10, 2, 1]) == pytest.approx(13 / 3)
    # n=6: 1 cut per end -> keeps 1, 2, 3, 4.
    assert iqm([0, 1, 2, 3, 4, 100]) == pytest.approx(2.5)
    # n=7: 1 cut per end -> keeps 1..5.
    assert iqm([0, 1, 2, 3, 4, 5, 100]) == pytest.approx(3.0)
    # n<=3: nothing is cut -> plain mean.
    assert iqm([0, 1, 8]) == pytest.approx(3.0)
    assert iqm([7.0]) == 7.0


def test_iqm_ignores_outliers():
    base = np.arange(8.0)
    extreme = base.copy()
    extreme[0], extreme[-1] = -1e9, 1e12  # replaced values are trimmed away
    assert iqm(extreme) == pytest.approx(iqm(base))
    padded = np.concatenate([[-1e9, -1e9], base, [1e9, 1e9]])  # symmetric additions
    assert iqm(padded) == pytest.approx(iqm(base))
    assert np.mean(padded) != pytest.approx(iqm(base))  # the mean is not robust to them


@pytest.mark.parametrize("n", list(range(1, 42)))
def test_iqm_matches_scipy_trim_mean_semantics(n):
    x = np.random.default_rng(n).standard_cauchy(n)
    assert iqm(x) == pytest.approx(trim_mean_25(x), rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_coverage_of_the_mean():
    # 2000 synthetic experiments of 10 normal runs. Measured (20000 experiments): coverage of the
    # nominal 95% percentile interval is 0.898 +- 0.002 (plug-in variance, z not t quantiles).
    # With 2000 experiments the standard error is ~0.007, so [0.87, 0.93] is ~4 SE either side;
    # a 90% interval (~0.84) or a 99% one (~0.96) would fail.
    true_mean = 3.0
    data = np.random.default_rng(12345).normal(true_mean, 2.0, size=(2000, 10))
    hits = []
    for i, runs in enumerate(data):
        point, lo, hi = bootstrap_ci(runs, np.mean, reps=500, seed=i)
        assert lo <= point <= hi
        hits.append(lo <= true_mean <= hi)
    coverage = float(np.mean(hits))
    assert 0.87 <= coverage <= 0.93, coverage


def test_bootstrap_ci_point_estimate_is_statistic_of_original_data():
    x = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 45.0]])
    point, lo, hi = bootstrap_ci(x, iqm, reps=200)
    assert point == pytest.approx(iqm(x.ravel()))
    assert lo <= point <= hi
    # Deterministic for a seed, different for another.
    assert bootstrap_ci(x, iqm, reps=200, seed=3) == bootstrap_ci(x, iqm, reps=200, seed=3)
    assert bootstrap_ci(x, iqm, reps=200, seed=3) != bootstrap_ci(x, iqm, reps=200, seed=4)


@pytest.mark.parametrize("fast", [iqm, np.mean, np.median])
def test_vectorised_statistics_match_generic_path(fast):
    x = np.random.default_rng(0).normal(size=(12, 3))
    generic = bootstrap_ci(x, lambda v: fast(v), reps=300, seed=7)
    vectorised = bootstrap_ci(x, fast, reps=300, seed=7)
    np.testing.assert_allclose(vectorised, generic, rtol=1e-12, atol=1e-12)


def test_stratified_bootstrap_never_mixes_tasks():
    # Task 0 values are all < 500, task 1 values are all > 500 (and on a very different scale).
    # Each flattened replicate must contain exactly `runs` values from each task: pooling the
    # runs across tasks would make the count below vary from replicate to replicate.
    runs = 6
    x = np.stack([np.arange(runs, dtype=float), 1000.0 + 100 * np.arange(runs)], axis=1)
    count_task0 = lambda v: float(np.sum(v < 500))  # noqa: E731
    assert bootstrap_ci(x, count_task0, reps=500, seed=1) == (runs, runs, runs)

    boot = stats._stratified_bootstrap(x, 500, np.random.default_rng(1))
    assert boot.shape == (500, runs, 2)
    assert np.isin(boot[:, :, 0], x[:, 0]).all() and np.isin(boot[:, :, 1], x[:, 1]).all()
    # Columns are resampled independently: the same row indices in both columns would make
    # column 1 a function of column 0 in every replicate.
    same_rows = np.all((boot[:, :, 1] - 1000.0) / 100 == boot[:, :, 0], axis=1)
    assert same_rows.mean() < 0.01


def test_aggregate_keys_and_values():
    x = np.random.default_rng(2).normal(size=(10, 2))
    out = aggregate(x, reps=300, seed=5)
    assert set(out) == {"iqm", "mean", "median"}
    assert out["mean"] == bootstrap_ci(x, np.mean, reps=300, seed=5)
    assert out["median"][0] == pytest.approx(np.median(x))
    assert out["iqm"][0] == pytest.approx(iqm(x))
    for p, lo, hi in out.values():
        assert lo <= p <= hi


# ------------------------------------------------------------------------ probability of improvement


def test_probability_of_improvement_extremes():
    assert probability_of_improvement([5, 6, 7], [1, 2]) == 1.0
    assert probability_of_improvement([1, 2], [5, 6, 7]) == 0.0
    x = [0.3, 0.1, 0.7, 0.7]
    assert probability_of_improvement(x, x) == 0.5


def test_probability_of_improvement_hand_case_with_ties():
    # x=[1,2,3,3], y=[2,3]: pairs > : (3,2),(3,2) = 2; ties: (2,2),(3,3),(3,3) = 3; of 8.
    assert probability_of_improvement([1, 2, 3, 3], [2, 3]) == pytest.approx((2 + 0.5 * 3) / 8)


def test_probability_of_improvement_averages_tasks():
    x = np.array([[1.0, 0.0], [2.0, 0.0]])
    y = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert probability_of_improvement(x, y) == pytest.approx(0.5)  # task 0: 1.0, task 1: 0.0


def test_probability_of_improvement_ci():
    assert probability_of_improvement_ci([5, 6, 7], [1, 2], reps=100) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, size=(10, 2)), rng.normal(0.0, 1.0, size=(8, 2))
    p, lo, hi = probability_of_improvement_ci(x, y, reps=500)
    assert p == pytest.approx(probability_of_improvement(x, y))
    assert 0.0 <= lo <= p <= hi <= 1.0 and lo < hi


# ------------------------------------------------------------------------------ performance profile


def test_performance_profile_hand_case():
    scores = np.array([[0.1, 0.5], [0.3, 0.9], [0.7, 0.2]])
    taus = [0.0, 0.3, 0.5, 1.0]
    # >0: all 6; >0.3 (strict): 0.5, 0.9, 0.7; >0.5: 0.9, 0.7; >1: none.
    np.testing.assert_allclose(performance_profile(scores, taus), [1.0, 3 / 6, 2 / 6, 0.0])


def test_performance_profile_ci():
    scores = np.random.default_rng(0).uniform(size=(10, 3))
    taus = np.linspace(0, 1, 11)
    p, lo, hi = performance_profile_ci(scores, taus, reps=300)
    assert p.shape == lo.shape == hi.shape == (11,)
    np.testing.assert_allclose(p, performance_profile(scores, taus))
    assert np.all(lo <= p) and np.all(p <= hi)
    assert np.any(hi - lo > 0)
    p, lo, hi = performance_profile_ci(np.full((5, 2), 0.4), [0.0, 0.5], reps=100)
    np.testing.assert_array_equal([p, lo, hi], [[1.0, 0.0]] * 3)


# ---------------------------------------------------------------------------------------- curves


def test_interpolate_curve_linear_step_and_nan_outside():
    x, y = [0, 10, 20], [0.0, 1.0, 3.0]
    grid = [-5, 0, 5, 10, 15, 20, 25]
    np.testing.assert_allclose(
        interpolate_curve(x, y, grid), [np.nan, 0, 0.5, 1, 2, 3, np.nan], equal_nan=True
    )
    np.testing.assert_allclose(
        interpolate_curve(x, y, grid, kind="step"), [np.nan, 0, 0, 1, 1, 3, np.nan], equal_nan=True
    )
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_curve([0, 10, 10], y, grid)
    with pytest.raises(ValueError, match="kind"):
        interpolate_curve(x, y, grid, kind="cubic")


def test_curve_band_constant_curves_zero_width():
    stat, lo, hi = curve_band(np.full((5, 7), 0.5), reps=200)
    for arr in (stat, lo, hi):
        np.testing.assert_allclose(arr, 0.5, rtol=0, atol=1e-12)


def test_curve_band_matches_bootstrap_per_point_and_skips_missing():
    rng = np.random.default_rng(3)
    curves = rng.normal(size=(8, 4))
    curves[2:, 3] = np.nan  # only 2 runs reach the last point
    curves[:, 1] = np.nan  # no run at point 1
    stat, lo, hi = curve_band(curves, reps=200, seed=9)
    for j in (0, 2):
        np.testing.assert_allclose(
            [stat[j], lo[j], hi[j]], bootstrap_ci(curves[:, j], iqm, reps=200, seed=9)
        )
    np.testing.assert_allclose(
        [stat[3], lo[3], hi[3]], bootstrap_ci(curves[:2, 3], iqm, reps=200, seed=9)
    )
    assert np.isnan([stat[1], lo[1], hi[1]]).all()


# ----------------------------------------------------------------------------- sample efficiency


def test_first_crossing():
    x, y = [0, 10, 20, 30], [0.1, 0.4, 0.8, 0.9]
    assert first_crossing(x, y, 0.5) == 20
    assert first_crossing(x, y, 0.4) == 10  # at/above counts
    assert first_crossing(x, y, 0.95) == math.inf
    assert first_crossing(x, [0.1, np.nan, 0.2, 0.6], 0.5) == 30  # NaN never counts


def test_threshold_ratio_hand_case():
    a = [10, 20, 30, 40, 50]  # median 30
    b = [150, 30, 90, 120, 60]  # median 90
    out = threshold_ratio(a, b, reps=500)
    assert out["ratio"] == pytest.approx(3.0)
    assert out["reached_a"] == 1.0 and out["reached_b"] == 1.0
    assert out["lo"] <= out["ratio"] <= out["hi"]
    assert out["lo"] < out["hi"]
    assert out["undefined_frac"] == 0.0


def test_threshold_ratio_censored():
    a = [10, 20, 30, 40, 50]
    b = [100, 200, math.inf, math.inf, math.inf]  # 3 of 5 never reach -> median inf
    out = threshold_ratio(a, b, reps=500)
    assert out["ratio"] == math.inf
    assert out["reached_b"] == pytest.approx(0.4) and out["reached_a"] == 1.0
    assert out["hi"] == math.inf and out["lo"] <= out["ratio"]
    # Censored runs are counted, not dropped: with 2 of 5 censored the median is finite, 300
    # (dropping them would give median(100, 200, 300) = 200 and a ratio of 6.7 instead of 10).
    assert threshold_ratio(a, [100, 200, 300, math.inf, math.inf], reps=50)["ratio"] == (
        pytest.approx(300 / 30)
    )
    # Even count: half censored already makes the median inf.
    assert threshold_ratio([1, 2, 3, 4], [1, 2, math.inf, math.inf], reps=50)["ratio"] == math.inf
    # a never (median inf), b reaches: b needs 0 times as many.
    assert threshold_ratio(b, a, reps=50)["ratio"] == 0.0


def test_threshold_ratio_both_censored_is_nan():
    a = [10, math.inf, math.inf]
    b = [math.inf, 5, math.inf]
    out = threshold_ratio(a, b, reps=200)
    assert math.isnan(out["ratio"])
    assert out["reached_a"] == pytest.approx(1 / 3) and out["reached_b"] == pytest.approx(1 / 3)
    assert 0.0 < out["undefined_frac"] < 1.0
    out = threshold_ratio([math.inf] * 3, [math.inf] * 4, reps=50)
    assert math.isnan(out["ratio"]) and math.isnan(out["lo"]) and math.isnan(out["hi"])
    assert out["undefined_frac"] == 1.0


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: iqm([]),
        lambda: bootstrap_ci([]),
        lambda: bootstrap_ci(np.zeros((0, 3))),
        lambda: bootstrap_ci(np.zeros((2, 2, 2))),
        lambda: bootstrap_ci([1.0, np.nan]),
        lambda: bootstrap_ci([1.0, 2.0], alpha=0.0),
        lambda: bootstrap_ci([1.0, 2.0], reps=0),
        lambda: aggregate([]),
        lambda: probability_of_improvement([], [1.0]),
        lambda: probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 3))),
        lambda: probability_of_improvement_ci(np.zeros((3, 2)), np.zeros(3)),
        lambda: performance_profile([], [0.5]),
        lambda: performance_profile([1.0], []),
        lambda: performance_profile_ci(np.zeros((3, 2)), []),
        lambda: curve_band(np.zeros(4)),
        lambda: curve_band(np.zeros((0, 4))),
        lambda: interpolate_curve([0, 1], [0, 1, 2], [0.5]),
        lambda: interpolate_curve([], [], [0.5]),
        lambda: interpolate_curve([0, 1], [0, 1], []),
        lambda: first_crossing([0, 1, 2], [0, 1], 0.5),
        lambda: first_crossing([], [], 0.5),
        lambda: threshold_ratio([], [1.0]),
        lambda: threshold_ratio([1.0, np.nan], [1.0]),
        lambda: threshold_ratio([-1.0], [1.0]),
        lambda: threshold_ratio(np.ones((2, 2)), [1.0]),
    ],
)
def test_invalid_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_wilson_interval_known_values():
    # Hand-checked against the closed form: 15 of 1000 -> [0.00911, 0.02462]; 0 of 10 -> [0, 0.2775].
    lo, hi = stats.wilson_interval(15, 1000)
    assert abs(lo - 0.00911) < 1e-4 and abs(hi - 0.02462) < 1e-4
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-3
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
