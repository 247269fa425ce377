"""Lift of a campaign arm against its holdout, with confidence intervals.

Pure functions of counts and per-person values (no database):

* ``diff_proportions``: difference of two rates (visit, conversion, click)
  with Newcombe's hybrid score interval, built from each group's Wilson
  interval. Campaign rates are often below one per cent, where the Wald
  interval's coverage falls well short of its level and its ends can leave
  [-1, 1]; Newcombe's stays close to its level for small rates and counts
  and needs no iteration.
* ``diff_means``: difference of two means (revenue per person) with Welch's
  interval (unequal variances, Welch-Satterthwaite degrees of freedom, the
  t quantile computed here, not from scipy).
* ``bootstrap_diff_means``: a seeded percentile bootstrap of the same
  difference, vectorised with numpy. Revenue per person is mostly zeros with
  a long tail, where the t interval leans on a normality the sample mean of
  a few hundred buyers does not yet have.
* ``mean_lift``: both intervals, and the one to read (``calls_for_bootstrap``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 2000
# Draws per vectorised bootstrap chunk, so memory stays bounded for big arms.
_CHUNK_DRAWS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A difference (arm minus holdout) with its interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    method: str
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``k / n``."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"count {k} is not between 0 and n = {n}")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def diff_proportions(
    k1: int, n1: int, k0: int, n0: int, confidence: float = CONFIDENCE
) -> Interval:
    """``k1/n1 - k0/n0`` with Newcombe's hybrid score interval (his method 10)."""
    p1, p0 = k1 / n1 if n1 else math.nan, k0 / n0 if n0 else math.nan
    l1, u1 = wilson_interval(k1, n1, confidence)
    l0, u0 = wilson_interval(k0, n0, confidence)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return Interval(d, low, high, "newcombe", confidence)


# -- Student's t, for Welch ----------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``)."""
    if not 0 < p < 1:
        raise ValueError(f"probability {p} must be between 0 and 1")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# -- means ---------------------------------------------------------------------------


def _values(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size < 2:
        raise ValueError(f"{name}: a mean's interval needs at least 2 values, got {arr.size}")
    return arr


def diff_means(x1: ArrayLike, x0: ArrayLike, confidence: float = CONFIDENCE) -> Interval:
    """``mean(x1) - mean(x0)`` with Welch's t interval."""
    a, b = _values(x1, "arm"), _values(x0, "holdout")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    d = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, "welch", confidence)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Interval(d, d - half, d + half, "welch", confidence)


def bootstrap_means(
    x: ArrayLike, reps: int = BOOTSTRAP_REPS, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``reps`` bootstrap means of ``x`` (resampled with replacement).

    Exactly the ordinary bootstrap, drawn cheaply: how many of a resample's n
    draws hit a non-zero value is Binomial(n, nonzero / n), and only those
    draws are made, so a mostly-zero sample costs its non-zero values, not n.
    """
    rng = rng or np.random.default_rng(0)
    arr = np.asarray(x, dtype=float).ravel()
    n = arr.size
    nonzero = arr[arr != 0]
    m = nonzero.size
    if m == 0:
        return np.zeros(reps)
    hits = rng.binomial(n, m / n, size=reps) if m < n else np.full(reps, n)
    sums = np.empty(reps)
    start = 0
    per_rep = max(1, int(hits.mean()) or 1)
    step = max(1, _CHUNK_DRAWS // per_rep)
    while start < reps:
        k = hits[start : start + step]
        draws = nonzero[rng.integers(0, m, size=int(k.sum()))]
        cum = np.concatenate(([0.0], np.cumsum(draws)))
        ends = np.cumsum(k)
        sums[start : start + step] = cum[ends] - cum[ends - k]
        start += step
    return sums / n


def bootstrap_diff_means(
    x1: ArrayLike,
    x0: ArrayLike,
    confidence: float = CONFIDENCE,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
) -> Interval:
    """``mean(x1) - mean(x0)`` with a percentile bootstrap interval (seeded)."""
    a, b = _values(x1, "arm"), _values(x0, "holdout")
    rng = np.random.default_rng(seed)
    diffs = bootstrap_means(a, reps, rng) - bootstrap_means(b, reps, rng)
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return Interval(float(a.mean() - b.mean()), float(low), float(high), "bootstrap", confidence)


def calls_for_bootstrap(x: ArrayLike) -> bool:
    """Whether a sample is too far from normal for its mean's t interval: mostly
    zeros, or strongly right-skewed (sample skewness above 2)."""
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size < 3:
        return False
    if np.mean(arr == 0) >= 0.5:
        return True
    sd = arr.std()
    return bool(sd > 0 and np.mean(((arr - arr.mean()) / sd) ** 3) > 2)


def mean_lift(
    x1: ArrayLike,
    x0: ArrayLike,
    confidence: float = CONFIDENCE,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Welch's and the bootstrap interval of ``mean(x1) - mean(x0)``, and which
    one to read (``interval``): the bootstrap when either sample calls for it."""
    welch = diff_means(x1, x0, confidence)
    boot = bootstrap_diff_means(x1, x0, confidence, reps, seed)
    chosen = boot if calls_for_bootstrap(x1) or calls_for_bootstrap(x0) else welch
    return {"interval": chosen, "welch": welch, "bootstrap": boot}


def relative(arm: float, holdout: float) -> float | None:
    """The arm's rate or mean relative to the holdout's, minus one (None if it is 0)."""
    return arm / holdout - 1 if holdout else None
