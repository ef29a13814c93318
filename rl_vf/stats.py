"""Few-run statistics for comparing RL variants over seeds (pure numpy).

Follows Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (the ``rliable`` library):

* aggregate scores with the interquartile mean (IQM) rather than the mean or the median;
* report percentile confidence intervals from a *stratified* bootstrap: runs are resampled with
  replacement independently inside each task column, never across tasks;
* compare two variants with the probability of improvement P(X > Y) and performance profiles.

Added for sample efficiency: :func:`first_crossing` (episodes needed to reach a threshold, ``inf``
when never reached, i.e. right-censored) and :func:`threshold_ratio`, which compares medians of
those censored numbers without dropping the runs that never got there.

Conventions shared by every function:

* ``scores`` is ``(runs,)`` (one task) or ``(runs, tasks)``; ``(runs,)`` is treated as
  ``(runs, 1)``. Empty input, a wrong number of dimensions or mismatched shapes raise
  ``ValueError``. NaN is rejected (``ValueError``) everywhere except in :func:`curve_band`, where
  NaN means "this run has no value at this point" (see :func:`interpolate_curve`).
* Bootstraps draw every index array at once with ``np.random.default_rng(seed)``; the same
  ``seed`` gives the same resamples, so results are reproducible.
* Intervals are two-sided percentile intervals at level ``1 - alpha``: the ``alpha/2`` and
  ``1 - alpha/2`` quantiles of the bootstrap distribution.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "iqm",
    "bootstrap_ci",
    "aggregate",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "performance_profile",
    "performance_profile_ci",
    "curve_band",
    "interpolate_curve",
    "first_crossing",
    "threshold_ratio",
]

# Largest number of array elements one vectorised bootstrap chunk may materialise.
_CHUNK_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------------------ validation


def _check_no_nan(a: np.ndarray, name: str) -> None:
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    """``scores`` as a float ``(runs, tasks)`` array; ``(runs,)`` becomes ``(runs, 1)``."""
    a = np.asarray(scores, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (runs,) or (runs, tasks), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    _check_no_nan(a, name)
    return a


def _as_1d(x, name: str, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not allow_nan:
        _check_no_nan(a, name)
    return a


def _check_bootstrap_args(reps: int, alpha: float) -> None:
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _percentile_interval(values: np.ndarray, alpha: float, axis: int = 0):
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=axis)
    return lo, hi


# ------------------------------------------------------------------------------------ statistics


def iqm(x) -> float:
    """Interquartile mean of all values of ``x`` (flattened): the mean of the middle 50%.

    Matches ``scipy.stats.trim_mean(x, 0.25, axis=None)`` (what rliable uses) exactly: with
    ``n`` values, ``k = int(0.25 * n)`` values are cut from *each* end of the sorted array and
    the remaining ``n - 2k`` are averaged. When ``n`` is not divisible by 4 the cut rounds down,
    so slightly more than half of the values are kept (no fractional weighting): n = 5 keeps
    the middle 3, n = 7 the middle 5, n <= 3 keeps everything (plain mean).
    """
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("iqm of an empty array")
    _check_no_nan(a, "x")
    return float(_iqm_rows(a[None, :])[0])


def _iqm_rows(a: np.ndarray) -> np.ndarray:
    """IQM of every row of a 2-D array (same trimming rule as :func:`iqm`)."""
    n = a.shape[1]
    k = int(0.25 * n)
    return np.sort(a, axis=1)[:, k : n - k].mean(axis=1)


def _row_statistic(statistic: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """Turn a statistic of a 1-D array into one applied to every row of a 2-D array.

    ``iqm``, ``np.mean`` and ``np.median`` get a vectorised version; any other callable is
    applied row by row (correct, only slower).
    """
    if statistic is iqm:
        return _iqm_rows
    if statistic is np.mean:
        return lambda a: a.mean(axis=1)
    if statistic is np.median:
        return lambda a: np.median(a, axis=1)
    return lambda a: np.array([float(statistic(row)) for row in a])


def _stratified_bootstrap(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stratified resamples of a ``(runs, tasks)`` array: shape ``(reps, runs, tasks)``.

    Each task column is resampled with its own row indices (runs drawn with replacement), so a
    value never moves to another column and columns are resampled independently of each other.
    """
    runs, tasks = scores.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    return scores[idx, np.arange(tasks)]


# ------------------------------------------------------------------------------------ aggregates


def bootstrap_ci(
    scores,
    statistic: Callable = iqm,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and stratified-bootstrap percentile interval of ``statistic``.

    ``scores`` is ``(runs,)`` or ``(runs, tasks)``. Each bootstrap replicate resamples the runs
    with replacement independently within each task column (rliable's stratified bootstrap);
    ``statistic`` (a function of a 1-D array returning a number) is applied to the flattened
    replicate. Returns ``(statistic(scores.ravel()), lo, hi)`` with ``lo``/``hi`` the
    ``alpha/2`` and ``1 - alpha/2`` percentiles of the ``reps`` replicates (linear
    interpolation between order statistics, numpy's default).

    Percentile intervals under-cover with few runs: measured coverage of a nominal 95%
    interval of the mean of 10 normal runs is about 90% (it uses the plug-in variance and
    normal rather than Student-t quantiles); use more runs rather than trusting the nominal level.
    """
    a = _as_scores(scores)
    _check_bootstrap_args(reps, alpha)
    point = float(statistic(a.ravel()))
    rng = np.random.default_rng(seed)
    boot = _stratified_bootstrap(a, int(reps), rng).reshape(int(reps), -1)
    values = _row_statistic(statistic)(boot)
    lo, hi = _percentile_interval(values, alpha)
    return point, float(lo), float(hi)


def aggregate(scores, reps: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """IQM, mean and median of ``scores`` with stratified-bootstrap intervals.

    Returns ``{"iqm": (point, lo, hi), "mean": (...), "median": (...)}``, each entry as
    :func:`bootstrap_ci` computes it with the same ``seed`` (hence the same resamples).
    """
    return {
        "iqm": bootstrap_ci(scores, iqm, reps, alpha, seed),
        "mean": bootstrap_ci(scores, np.mean, reps, alpha, seed),
        "median": bootstrap_ci(scores, np.median, reps, alpha, seed),
    }


# ----------------------------------------------------------------------- probability of improvement


def _check_paired_tasks(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of tasks, got x {x.shape} and y {y.shape}"
        )


def _poi_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) averaged over tasks, for batches ``(B, n, tasks)``, ``(B, m, tasks)``."""
    gt = (x[:, :, None, :] > y[:, None, :, :]).mean(axis=(1, 2))
    eq = (x[:, :, None, :] == y[:, None, :, :]).mean(axis=(1, 2))
    return (gt + 0.5 * eq).mean(axis=1)


def probability_of_improvement(x, y) -> float:
    """Probability that a run of variant X scores higher than a run of variant Y.

    ``P(X > Y) + 0.5 * P(X = Y)`` over all ``n * m`` pairs (the Mann-Whitney U statistic divided
    by ``n * m``). ``x`` is ``(n,)`` or ``(n, tasks)``, ``y`` is ``(m,)`` or ``(m, tasks)`` with the
    same number of tasks; with several tasks the per-task probabilities are averaged (rliable).
    ``inf`` is allowed and compares as usual (``inf == inf`` is a tie).
    """
    xa, ya = _as_scores(x, "x"), _as_scores(y, "y")
    _check_paired_tasks(xa, ya)
    return float(_poi_batched(xa[None], ya[None])[0])


def probability_of_improvement_ci(
    x, y, reps: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` with a percentile bootstrap interval.

    Runs of X and runs of Y are resampled independently of each other (each stratified per
    task, as in :func:`bootstrap_ci`). Returns ``(point, lo, hi)``.
    """
    xa, ya = _as_scores(x, "x"), _as_scores(y, "y")
    _check_paired_tasks(xa, ya)
    _check_bootstrap_args(reps, alpha)
    reps = int(reps)
    point = float(_poi_batched(xa[None], ya[None])[0])
    rng = np.random.default_rng(seed)
    xb = _stratified_bootstrap(xa, reps, rng)
    yb = _stratified_bootstrap(ya, reps, rng)
    # The pairwise comparison materialises (reps, n, m, tasks): do it in chunks of replicates.
    chunk = max(1, _CHUNK_ELEMENTS // (xa.shape[0] * ya.shape[0] * xa.shape[1]))
    values = np.concatenate(
        [_poi_batched(xb[i : i + chunk], yb[i : i + chunk]) for i in range(0, reps, chunk)]
    )
    lo, hi = _percentile_interval(values, alpha)
    return point, float(lo), float(hi)


# ------------------------------------------------------------------------------ performance profile


def _as_taus(taus) -> np.ndarray:
    t = np.atleast_1d(np.asarray(taus, dtype=float))
    if t.ndim != 1:
        raise ValueError(f"taus must be a scalar or one-dimensional, got shape {t.shape}")
    if t.size == 0:
        raise ValueError("taus is empty")
    _check_no_nan(t, "taus")
    return t


def performance_profile(scores, taus) -> np.ndarray:
    """Fraction of (run, task) scores strictly greater than each ``tau``.

    ``scores`` is ``(runs, tasks)`` (or ``(runs,)``); returns an array shaped like ``taus``
    (1-D). Every task has the same number of runs, so this equals rliable's average over tasks of
    the per-task fraction.
    """
    a = _as_scores(scores)
    t = _as_taus(taus)
    return (a.ravel()[None, :] > t[:, None]).mean(axis=1)


def performance_profile_ci(
    scores, taus, reps: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`performance_profile` with stratified-bootstrap percentile intervals per ``tau``.

    Returns ``(point, lo, hi)``, three arrays of ``len(taus)``. All ``taus`` share the same
    resamples, so the band is computed from whole resampled profiles.
    """
    a = _as_scores(scores)
    t = _as_taus(taus)
    _check_bootstrap_args(reps, alpha)
    point = performance_profile(a, t)
    rng = np.random.default_rng(seed)
    boot = _stratified_bootstrap(a, int(reps), rng).reshape(int(reps), -1)
    values = np.stack([(boot > tau).mean(axis=1) for tau in t], axis=1)  # (reps, len(taus))
    lo, hi = _percentile_interval(values, alpha, axis=0)
    return point, lo, hi


# ---------------------------------------------------------------------------------------- curves


def interpolate_curve(x, y, grid, kind: str = "linear") -> np.ndarray:
    """One run's curve ``(x, y)`` evaluated on a common ``grid``.

    ``x`` must be strictly increasing and finite; ``y`` (same length) must not contain NaN.
    ``kind="linear"`` interpolates linearly between logged points; ``kind="step"`` holds the
    last logged value (the value at the largest ``x <= grid point``).

    Grid points outside ``[x[0], x[-1]]`` get NaN: the run has no data there and we do not
    extrapolate (beyond the last x the run had ended; before the first x it had not been
    evaluated yet). :func:`curve_band` treats those NaNs as missing runs.
    """
    xa, ya = _as_1d(x, "x"), _as_1d(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if not np.isfinite(xa).all():
        raise ValueError("x must be finite")
    if np.any(np.diff(xa) <= 0):
        raise ValueError("x must be strictly increasing")
    g = np.asarray(grid, dtype=float)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty one-dimensional array, got shape {g.shape}")
    _check_no_nan(g, "grid")
    if kind == "linear":
        out = np.interp(g, xa, ya)
    elif kind == "step":
        out = ya[np.clip(np.searchsorted(xa, g, side="right") - 1, 0, None)]
    else:
        raise ValueError(f"kind must be 'linear' or 'step', got {kind!r}")
    out = np.asarray(out, dtype=float)
    out[(g < xa[0]) | (g > xa[-1])] = np.nan
    return out


def curve_band(
    curves,
    reps: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    statistic: Callable = iqm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise ``statistic`` over runs of a set of curves, with a bootstrap band.

    ``curves`` is ``(runs, points)``, e.g. rows from :func:`interpolate_curve` on a shared grid.
    For each point, the runs with a value there (non-NaN) are bootstrapped with
    :func:`bootstrap_ci`. Returns ``(stat, lo, hi)``, three arrays of length ``points``; a
    point where no run has a value is NaN in all three.

    Every point uses the same ``seed``, so when no value is missing this is exactly the band of
    whole resampled curves. Caveat: where some runs are missing (ended early) the statistic is
    over the remaining runs only; cut the grid at the shortest run if that matters.
    """
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"curves must have shape (runs, points), got shape {c.shape}")
    if c.size == 0:
        raise ValueError(f"curves is empty (shape {c.shape})")
    _check_bootstrap_args(reps, alpha)
    out = np.full((3, c.shape[1]), np.nan)
    for j in range(c.shape[1]):
        col = c[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            out[:, j] = bootstrap_ci(col, statistic, reps, alpha, seed)
    return out[0], out[1], out[2]


# ----------------------------------------------------------------------------- sample efficiency


def first_crossing(x, y, threshold) -> float:
    """Smallest ``x`` at which ``y >= threshold``; ``math.inf`` if it never happens (censored).

    No interpolation: the answer is the ``x`` of a logged point. ``x`` need not be sorted (the
    minimum over qualifying points is taken) but must not contain NaN. A NaN in ``y`` never
    counts as reaching the threshold.
    """
    xa = _as_1d(x, "x")
    ya = _as_1d(y, "y", allow_nan=True)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    with np.errstate(invalid="ignore"):
        hit = ya >= threshold
    return float(xa[hit].min()) if hit.any() else math.inf


def _median_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row, exact with ``inf``: the mean of the two middle order statistics for
    even length, so it is ``inf`` as soon as the upper middle value is ``inf``."""
    n = a.shape[1]
    s = np.sort(a, axis=1)
    lo, hi = s[:, (n - 1) // 2], s[:, n // 2]
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(hi), hi, (lo + hi) / 2)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` for non-negative numbers that may be ``inf``, with explicit rules:
    inf/inf -> NaN, inf/finite -> inf, finite/inf -> 0, 0/0 -> NaN, positive/0 -> inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # IEEE division already follows these rules: inf/inf and 0/0 give NaN, c/0 gives inf,
        # c/inf gives 0 (num and den are never negative).
        return np.asarray(num, dtype=float) / np.asarray(den, dtype=float)


def _as_crossings(a, name: str) -> np.ndarray:
    v = _as_1d(a, name)
    if (v < 0).any():
        raise ValueError(f"{name} must be non-negative first-crossing x values (inf = never)")
    return v


def threshold_ratio(a, b, reps: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """How many times more episodes variant b needs than variant a to reach a threshold.

    ``a`` and ``b`` hold one :func:`first_crossing` value per seed (``inf`` = never reached,
    i.e. right-censored). Censored runs are kept, not dropped: the statistic is
    ``median(b) / median(a)`` where the medians include the ``inf`` values. A median is ``inf``
    when the upper middle order statistic is ``inf``: more than half of the runs censored for
    an odd count, at least half for an even count.

    Ratio rules (also applied in each bootstrap replicate): ``inf`` when b's median is ``inf``
    and a's finite, or when a's median is 0 and b's positive; ``0`` when a's median is ``inf``
    and b's finite; NaN (undefined) when both are ``inf`` or both are 0.

    The interval bootstraps the runs of a and of b independently. Replicates whose ratio is
    NaN (both medians ``inf``) are left out of the interval and counted in
    ``"undefined_frac"``; ``lo``/``hi`` are NaN if every replicate is undefined. Because
    replicates may be ``inf``, ``lo`` and ``hi`` are order statistics of the replicates
    (numpy's ``"lower"``/``"higher"`` percentile methods, slightly conservative) rather than
    interpolations between them.

    Returns ``{"ratio", "lo", "hi", "reached_a", "reached_b", "undefined_frac"}`` where
    ``reached_*`` is the fraction of runs with a finite crossing.
    """
    av, bv = _as_crossings(a, "a"), _as_crossings(b, "b")
    _check_bootstrap_args(reps, alpha)
    reps = int(reps)
    ratio = float(_ratio(_median_rows(bv[None]), _median_rows(av[None]))[0])
    rng = np.random.default_rng(seed)
    ab = av[rng.integers(0, av.size, size=(reps, av.size))]
    bb = bv[rng.integers(0, bv.size, size=(reps, bv.size))]
    values = _ratio(_median_rows(bb), _median_rows(ab))
    defined = values[~np.isnan(values)]
    if defined.size:
        lo = float(np.percentile(defined, 100 * alpha / 2, method="lower"))
        hi = float(np.percentile(defined, 100 * (1 - alpha / 2), method="higher"))
    else:
        lo = hi = math.nan
    return {
        "ratio": ratio,
        "lo": lo,
        "hi": hi,
        "reached_a": float(np.isfinite(av).mean()),
        "reached_b": float(np.isfinite(bv).mean()),
        "undefined_frac": float(1.0 - defined.size / reps),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate from ``successes`` of ``n`` trials (one run's
    evaluation: the uncertainty of the rate from a finite number of episodes, not across seeds)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
