"""BG/NBD and Gamma-Gamma (``plugins.scoring.predictive``): fitting, scoring, storing."""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import (
    EVENT_TYPE_MAX_LENGTH,
    EVENTS,
    SCORES,
    ScoreError,
    ScoreValue,
    ScoringModel,
    is_snake_name,
    store_scores,
)


class _OnFirstUse:
    """A module imported when first used: numpy and scipy take longer to import
    than most commands to run, and every ``segflow`` command that lists commands
    or scoring models loads this plugin (it adds ``scores fit``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


np = _OnFirstUse("numpy")
integrate = _OnFirstUse("scipy.integrate")
optimize = _OnFirstUse("scipy.optimize")
special = _OnFirstUse("scipy.special")

# Stored score names must fit scores.model; the longest suffix added is this.
LONGEST_SUFFIX = "_p_alive"
MAX_SCORE_NAME: int = SCORES.c.model.type.length
# Log-parameters are kept in [-LOG_BOUND, LOG_BOUND] (e^30 ~ 1e13): wide enough for
# any real data set, narrow enough that gammaln/exp never overflow. A parameter at
# the bound means the data push it to 0 or infinity (e.g. nobody ever drops out);
# the predictions stay finite and meaningful then.
LOG_BOUND = 30.0
# After L-BFGS-B stops without "success" (it often does right at the optimum, when
# the line search cannot improve in double precision), the fit is still accepted
# when the mean log-likelihood's gradient (in log-parameters) is this small.
GRADIENT_TOLERANCE = 1e-5
# Restarts of L-BFGS-B after an abnormal stop (see _minimize).
MAX_RESTARTS = 5


# -- summary -----------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Per-customer recency/frequency/monetary arrays, aligned with ``profile_ids``."""

    profile_ids: np.ndarray  # int64
    x: np.ndarray  # repeat purchase days (float, integral values)
    t_x: np.ndarray  # units from the first to the last purchase day
    T: np.ndarray  # units from the first purchase day to the as_of day
    monetary: np.ndarray  # mean repeat-day value; 0 where x == 0; NaN if a value is missing
    as_of: datetime
    unit_days: float

    def __len__(self) -> int:
        return int(self.profile_ids.size)


def _check_as_of(as_of: datetime) -> None:
    if not isinstance(as_of, datetime) or as_of.tzinfo is None:
        raise ScoreError(f"as_of must be a timezone-aware datetime, got {as_of!r}")


def _check_unit(unit_days: float, what: str = "unit_days") -> float:
    if isinstance(unit_days, bool) or not isinstance(unit_days, int | float):
        raise ScoreError(f"{what} must be a number of days, got {unit_days!r}")
    if not math.isfinite(unit_days) or unit_days <= 0:
        raise ScoreError(f"{what} must be a positive number of days, got {unit_days!r}")
    return float(unit_days)


def _day_expression(conn: Connection) -> sa.ColumnElement | None:
    """The UTC calendar date of ``events.ts`` in SQL, or None to compute it in Python.

    Grouping by day in the database returns one row per customer-day instead of
    one per event, which matters on big stores (Online Retail: 400k lines).
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        # segflow stores SQLite times as fixed-width naive UTC text: "YYYY-MM-DD HH:..."
        return sa.func.substr(sa.type_coerce(EVENTS.c.ts, sa.String), 1, 10)
    if dialect == "postgresql":
        return sa.cast(sa.func.timezone("UTC", EVENTS.c.ts), sa.Date)
    return None


def _day_rows(
    conn: Connection, event: str, as_of: datetime
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(profile id, day number since 1970-01-01, summed value or NaN) per customer-day."""
    where = (EVENTS.c.type == event, EVENTS.c.ts <= as_of)
    day = _day_expression(conn)
    if day is not None:
        day = day.label("day")
        # COUNT(value) < COUNT(*) means some purchase that day has no value: the
        # day's value is unknown (NaN), not the sum of the known part.
        stmt = (
            sa.select(
                EVENTS.c.profile_id,
                day,
                sa.func.sum(EVENTS.c.value),
                sa.func.count(EVENTS.c.value) == sa.func.count(),
            )
            .where(*where)
            .group_by(EVENTS.c.profile_id, day)
            .order_by(EVENTS.c.profile_id, day)
        )
        rows = conn.execute(stmt).all()
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        pids, days, values, complete = zip(*rows, strict=True)
        day_numbers = np.array(
            [d.isoformat() if isinstance(d, date) else d for d in days], dtype="datetime64[D]"
        ).astype(np.int64)
        value = np.array([np.nan if v is None else v for v in values], dtype=float)
        value[~np.array(complete, dtype=bool)] = np.nan
        return np.array(pids, dtype=np.int64), day_numbers, value
    # Any other backend: per event, grouped here.
    stmt = sa.select(EVENTS.c.profile_id, EVENTS.c.ts, EVENTS.c.value).where(*where)
    per_day: dict[tuple[int, int], float] = {}
    epoch = date(1970, 1, 1)
    for pid, ts, value in conn.execute(stmt):
        key = (pid, (ts.astimezone(UTC).date() - epoch).days)
        v = np.nan if value is None else float(value)
        per_day[key] = per_day.get(key, 0.0) + v
    keys = sorted(per_day)
    return (
        np.array([k[0] for k in keys], dtype=np.int64),
        np.array([k[1] for k in keys], dtype=np.int64),
        np.array([per_day[k] for k in keys], dtype=float),
    )


def summary(
    conn: Connection,
    event: str = "purchase",
    *,
    as_of: datetime,
    unit_days: float = 7.0,
) -> Summary:
    """Recency/frequency/monetary per customer from the events table (see module doc).

    Every profile with at least one ``event`` at or before ``as_of`` is a
    customer; refunds and other types are ignored (a refund does not undo a
    purchase day: BG/NBD models the purchase process, not net revenue).
    """
    _check_as_of(as_of)
    unit = _check_unit(unit_days)
    pids, days, values = _day_rows(conn, event, as_of)
    end_day = (as_of.astimezone(UTC).date() - date(1970, 1, 1)).days
    if pids.size == 0:
        empty = np.empty(0)
        return Summary(np.empty(0, np.int64), empty, empty, empty, empty, as_of, unit)
    # Rows are sorted by (profile, day): each profile is one contiguous run.
    starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
    ends = np.r_[starts[1:], pids.size]
    n_days = ends - starts
    first, last = days[starts], days[ends - 1]
    repeat = np.ones(pids.size, dtype=bool)
    repeat[starts] = False
    repeat_sum = np.add.reduceat(np.where(repeat, np.nan_to_num(values), 0.0), starts)
    repeat_missing = np.add.reduceat((repeat & np.isnan(values)).astype(np.int64), starts)
    x = (n_days - 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(x > 0, repeat_sum / np.maximum(x, 1.0), 0.0)
    monetary[repeat_missing > 0] = np.nan
    return Summary(
        profile_ids=pids[starts],
        x=x,
        t_x=(last - first) / unit,
        T=(end_day - first) / unit,
        monetary=monetary,
        as_of=as_of,
        unit_days=unit,
    )


# -- BG/NBD ------------------------------------------------------------------------


@dataclass(frozen=True)
class BgnbdParams:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float


def _as_arrays(*arrays: Any) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float) for a in arrays]
    shape = np.broadcast_shapes(*(a.shape for a in out))
    return [np.broadcast_to(a, shape) for a in out]


def _check_rft(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> None:
    for name, arr in (("x", x), ("t_x", t_x), ("T", T)):
        if not np.all(np.isfinite(arr)):
            raise ScoreError(f"BG/NBD: {name} has non-finite values")
        if np.any(arr < 0):
            raise ScoreError(f"BG/NBD: {name} has negative values")
    if np.any(x != np.round(x)):
        raise ScoreError("BG/NBD: x (repeat purchases) must be whole numbers")
    if np.any(t_x > T):
        raise ScoreError("BG/NBD: t_x (recency) is after T (the end of the period)")
    if np.any((x > 0) & (t_x <= 0)):
        raise ScoreError("BG/NBD: a customer with repeat purchases has recency t_x = 0")


def _bgnbd_terms(
    log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer log-likelihood and its gradient in log-parameters (4 x n).

    ln L = ln G(r+x) - ln G(r) + r ln(alpha) + ln B(a, b+x) - ln B(a, b)
           - (r+x) ln(alpha+T) + ln(1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))

    The last term is softplus(d) with d in log space, so it never overflows; for
    x = 0 it is 0 (b+x-1 may be negative there and is never used).
    """
    r, alpha, a, b = np.exp(log_params)
    buyer = x > 0
    log_aT = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    bx1 = np.where(buyer, b + x - 1.0, 1.0)
    d = np.where(buyer, np.log(a) - np.log(bx1) + (r + x) * (log_aT - log_atx), -np.inf)
    ll = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.gammaln(b + x)
        - special.gammaln(a + b + x)
        - special.gammaln(b)
        + special.gammaln(a + b)
        - (r + x) * log_aT
        + np.logaddexp(0.0, d)
    )
    s = special.expit(d)  # d softplus / dd; 0 for x = 0
    dg = special.digamma
    psi_abx, psi_ab = dg(a + b + x), dg(a + b)
    g_r = dg(r + x) - dg(r) + np.log(alpha) - log_aT + s * (log_aT - log_atx)
    g_alpha = (
        r / alpha - (r + x) / (alpha + T) + s * (r + x) * (1.0 / (alpha + T) - 1.0 / (alpha + t_x))
    )
    g_a = psi_ab - psi_abx + s / a
    g_b = dg(b + x) - psi_abx - dg(b) + psi_ab - np.where(buyer, s / bx1, 0.0)
    grad = np.stack([r * g_r, alpha * g_alpha, a * g_a, b * g_b])
    return ll, grad


def bgnbd_log_likelihood(
    params: BgnbdParams | tuple[float, float, float, float],
    x: Any,
    t_x: Any,
    T: Any,
) -> float:
    """Total log-likelihood of the data under the given (r, alpha, a, b)."""
    r, alpha, a, b = (
        (params.r, params.alpha, params.a, params.b) if isinstance(params, BgnbdParams) else params
    )
    x, t_x, T = _as_arrays(x, t_x, T)
    ll, _ = _bgnbd_terms(np.log([r, alpha, a, b]), x.ravel(), t_x.ravel(), T.ravel())
    return float(ll.sum())


def _compress(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct rows and how often each occurs.

    With whole days many customers share (x, t_x, T) (every one-time buyer of
    the same day is one row): CDNOW's 23,570 customers are 8,685 rows, so each
    likelihood evaluation does about a third of the work for the same total.
    """
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(float)


def _minimize(fun: Any, x0: np.ndarray, model: str) -> optimize.OptimizeResult:
    """L-BFGS-B with analytic gradient on the mean negative log-likelihood.

    Small or degenerate data often have their supremum at infinity along a ridge
    (r, alpha -> inf with r/alpha fixed: no rate heterogeneity; a, b -> inf: no
    dropout heterogeneity). The likelihood is flat there and L-BFGS-B's line
    search gives up ("ABNORMAL_TERMINATION_IN_LNSRCH") with a small but nonzero
    gradient. A restart from that point either makes progress or shows the
    likelihood cannot be improved any more; the latter is accepted, since the
    predictions are determined by the ridge, not by the position along it.
    """
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(x0)
    start, previous, iterations = np.asarray(x0, dtype=float), None, 0
    for _ in range(MAX_RESTARTS + 1):
        with np.errstate(all="ignore"):
            res = optimize.minimize(
                fun,
                start,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-9},
            )
        iterations += res.nit
        if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
            raise ScoreError(
                f"{model}: the optimiser ended on a non-finite likelihood ({res.message})"
            )
        if res.success:
            return res
        # Free parameters only: a gradient pushing against a bound is expected there.
        free = np.abs(res.x) < LOG_BOUND - 1e-6
        grad = np.asarray(res.jac)[free]
        if not grad.size or np.max(np.abs(grad)) <= GRADIENT_TOLERANCE:
            return res
        if previous is not None and previous.fun - res.fun <= 1e-12 * max(1.0, abs(res.fun)):
            return res  # a restart found nothing better: the likelihood's flat supremum
        previous, start = res, res.x
    raise ScoreError(
        f"{model}: maximum likelihood did not converge after {iterations} iterations "
        f"({res.message}); the data may be too few or degenerate"
    )


def fit_bgnbd(x: Any, t_x: Any, T: Any) -> BgnbdParams:
    """BG/NBD maximum-likelihood estimates for customers' (x, t_x, T).

    Optimised in log-parameters (every parameter is positive, and their scales
    differ by orders of magnitude), from r = a = b = 1 and alpha set so that
    r/alpha is the pooled purchase rate sum(x)/sum(T).
    """
    x, t_x, T = (a.ravel() for a in _as_arrays(x, t_x, T))
    if x.size == 0:
        raise ScoreError("BG/NBD: no customers to fit")
    _check_rft(x, t_x, T)
    repeaters = int(np.count_nonzero(x > 0))
    if repeaters < 2:
        raise ScoreError(
            f"BG/NBD: needs at least 2 customers with repeat purchases (on different days), "
            f"found {repeaters} among {x.size:,} customers"
        )
    if not np.any(T > 0):
        raise ScoreError("BG/NBD: every customer's period is empty (T = 0)")
    (ux, utx, uT), w = _compress(x, t_x, T)
    n = w.sum()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        ll, grad = _bgnbd_terms(theta, ux, utx, uT)
        return -float(w @ ll) / n, -(grad @ w) / n

    alpha0 = float(np.clip(T.sum() / max(x.sum(), 1.0), 1e-6, 1e6))
    res = _minimize(objective, np.log([1.0, alpha0, 1.0, 1.0]), "BG/NBD")
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    ll = -float(res.fun) * float(n)
    params = BgnbdParams(r, alpha, a, b, ll)
    if not all(math.isfinite(v) for v in (r, alpha, a, b, ll)):
        raise ScoreError(f"BG/NBD: the fit gave non-finite estimates {params}")
    return params


def _log_denominator(
    params: BgnbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """ln(1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)) = -ln P(alive)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    buyer = x > 0
    bx1 = np.where(buyer, b + x - 1.0, 1.0)
    d = np.where(
        buyer,
        math.log(a) - np.log(bx1) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)),
        -np.inf,
    )
    return np.logaddexp(0.0, d)


def p_alive(params: BgnbdParams, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """P(still active at T | x, t_x, T).

    1 for x = 0: in BG/NBD a customer can only drop out right after a purchase,
    so one who never came back is assumed alive (a known property of the model).
    """
    x, t_x, T = _as_arrays(x, t_x, T)
    with np.errstate(over="ignore"):
        return np.exp(-_log_denominator(params, x, t_x, T))


def expected_purchases(params: BgnbdParams, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T] (FHL 2005, eq. 10), vectorised.

    E = (a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)]
        / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)),   z = t/(alpha+T+t).

    The hypergeometric part uses Euler's transformation, 2F1(A,B;C;z) =
    (1-z)^(C-A-B) 2F1(C-A, C-B; C; z), which turns (1-z)^(r+x) 2F1(r+x, b+x; C; z)
    into (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z): the upper parameters no
    longer grow with x, so the series stays well conditioned for heavy buyers
    (the printed form overflows in scipy at x ~ 300).

    Where that is still unusable (a ~ 1, a 0/0; or the huge r of a fit that
    found no heterogeneity) or gives an impossible value, the same expectation
    is integrated numerically instead (``_expected_by_quadrature``).
    """
    t, x, t_x, T = _as_arrays(t, x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    alive = np.exp(-_log_denominator(params, x, t_x, T))
    with np.errstate(all="ignore"):
        f = (1.0 - z) ** (a - 1.0) * special.hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
        out = c / (a - 1.0) * (1.0 - f) * alive
    # (1 - e^(-lambda p t)) / p <= lambda t, and E[lambda | alive] = (r+x)/(alpha+T).
    ceiling = alive * t * (r + x) / (alpha + T)
    suspect = ~np.isfinite(out) | (out < 0) | (out > ceiling * (1 + 1e-9) + 1e-300)
    if abs(a - 1.0) < 1e-4:
        suspect = np.ones_like(suspect)
    suspect &= t > 0
    if suspect.any():
        out = np.array(out, dtype=float)  # writable, whatever the broadcasting
        for i in zip(*np.nonzero(suspect), strict=True):
            out[i] = alive[i] * _expected_by_quadrature(params, t[i], x[i], T[i])
    return np.where(t > 0, out, 0.0)


def _expected_by_quadrature(params: BgnbdParams, t: float, x: float, T: float) -> float:
    """E[purchases in the next t | alive, x, T], by integrating over the dropout p.

    Given alive, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x); a customer
    with (lambda, p) makes (1 - e^(-lambda p t)) / p purchases in t on average, and
    the lambda-expectation of that, g(p) = (1 - (1 + p t/(alpha+T))^-(r+x)) / p,
    is smooth and bounded by (r+x) t/(alpha+T). Integrating g over the Beta's
    quantiles u in (0, 1) (p = F^-1(u)) needs no density at all, so neither the
    density's endpoint singularities (a < 1) nor a Beta concentrated on a point
    (a, b ~ 1e6, a fit without heterogeneity) can break it.
    """
    n, k = params.r + x, t / (params.alpha + T)
    a, bx = params.a, params.b + x

    def g_of_quantile(u: float) -> float:
        p = float(special.betaincinv(a, bx, u))
        if p <= 0.0:
            return n * k
        return -math.expm1(-n * math.log1p(p * k)) / p

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        value, _ = integrate.quad(g_of_quantile, 0.0, 1.0, limit=200, epsabs=0.0, epsrel=1e-10)
    return value


# -- Gamma-Gamma -------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    v: float
    log_likelihood: float

    def __iter__(self) -> Iterator[float]:  # p, q, v = fit_gamma_gamma(...)
        return iter((self.p, self.q, self.v))


def _gg_terms(
    log_params: np.ndarray, x: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer log density of the mean spend m over x transactions, and gradient.

    ln f = ln G(px+q) - ln G(px) - ln G(q) + q ln v + (px-1) ln m + px ln x
           - (px+q) ln(v + x m)
    """
    p, q, v = np.exp(log_params)
    px = p * x
    log_m, log_x, log_vxm = np.log(m), np.log(x), np.log(v + x * m)
    ll = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * math.log(v)
        + (px - 1.0) * log_m
        + px * log_x
        - (px + q) * log_vxm
    )
    dg = special.digamma
    psi = dg(px + q)
    g_p = x * (psi - dg(px) + log_m + log_x - log_vxm)
    g_q = psi - dg(q) + math.log(v) - log_vxm
    g_v = q / v - (px + q) / (v + x * m)
    return ll, np.stack([p * g_p, q * g_q, v * g_v])


def fit_gamma_gamma(frequency: Any, monetary: Any) -> GammaGammaParams:
    """Gamma-Gamma ML estimates from repeat customers' x (> 0) and mean spend (> 0).

    Returns GammaGammaParams, which unpacks as (p, q, v). Requires q > 1:
    otherwise the population mean spend p v / (q - 1) is infinite.
    """
    x, m = (a.ravel() for a in _as_arrays(frequency, monetary))
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(m))):
        raise ScoreError("Gamma-Gamma: frequency or monetary value has non-finite values")
    if np.any(x <= 0) or np.any(m <= 0):
        raise ScoreError(
            "Gamma-Gamma: fit only customers with repeat purchases (x > 0) and a positive "
            "mean spend"
        )
    if x.size < 2:
        raise ScoreError(
            f"Gamma-Gamma: needs at least 2 repeat customers with a known spend, found {x.size}"
        )
    if np.ptp(m) == 0:
        raise ScoreError("Gamma-Gamma: every customer has the same mean spend; nothing to fit")
    (ux, um), w = _compress(x, m)
    n = w.sum()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        ll, grad = _gg_terms(theta, ux, um)
        return -float(w @ ll) / n, -(grad @ w) / n

    # p = 1, q = 2 and v so that the population mean p v / (q - 1) is the sample mean.
    res = _minimize(objective, np.log([1.0, 2.0, float(np.average(m))]), "Gamma-Gamma")
    p, q, v = (float(t) for t in np.exp(res.x))
    params = GammaGammaParams(p, q, v, -float(res.fun) * float(n))
    if not all(math.isfinite(t) for t in (p, q, v, params.log_likelihood)):
        raise ScoreError(f"Gamma-Gamma: the fit gave non-finite estimates {params}")
    if q <= 1.0:
        raise ScoreError(
            f"Gamma-Gamma: q = {q:.4g} <= 1, so the mean spend is infinite; the spend data "
            "are too heavy-tailed for this model"
        )
    return params


def expected_average_value(params: GammaGammaParams, frequency: Any, monetary: Any) -> np.ndarray:
    """E[mean transaction value | x, m_x] = p (v + x m_x) / (p x + q - 1).

    A weighted average of the population mean p v / (q - 1) and the customer's
    own mean m_x; x = 0 (or an unknown m_x, pass x = 0) gives the population mean.
    """
    x, m = _as_arrays(frequency, monetary)
    m = np.where(x > 0, m, 0.0)
    return params.p * (params.v + x * m) / (params.p * x + params.q - 1.0)


# -- fit and score -----------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """What ``fit_and_score`` fitted; p, q, v are None when Gamma-Gamma was not fitted."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    profiles: int  # customers in the BG/NBD fit
    repeat_buyers: int
    as_of: datetime
    horizon: float  # in units
    unit_days: float
    p: float | None = None
    q: float | None = None
    v: float | None = None
    gamma_gamma_profiles: int = 0
    gamma_gamma_log_likelihood: float | None = None
    # Why there is no CLV (Gamma-Gamma could not be fitted), else None.
    gamma_gamma_error: str | None = None

    @property
    def bgnbd(self) -> BgnbdParams:
        return BgnbdParams(self.r, self.alpha, self.a, self.b, self.log_likelihood)


def _finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ScoreError(f"score '{name}': {bad} profile(s) got a non-finite value")


def fit_and_score(
    conn: Connection,
    *,
    event: str = "purchase",
    as_of: datetime,
    horizon: float = 39.0,
    unit_days: float = 7.0,
    name: str = "bgnbd",
) -> tuple[FitResult, dict[str, dict[int, ScoreValue]]]:
    """Fit BG/NBD (and Gamma-Gamma when possible) as of ``as_of`` and score every customer.

    Scores (``horizon`` in units of ``unit_days``; the defaults are 39 weeks):

    - ``name``: expected purchase days in the next ``horizon`` units
      (components x, t_x, T, p_alive);
    - ``{name}_p_alive``: probability the customer is still active;
    - ``{name}_clv``: expected purchases over the horizon x expected average
      transaction value (Gamma-Gamma), undiscounted and in the events' value
      units; only when Gamma-Gamma could be fitted (else ``gamma_gamma_error``).

    Customers are the profiles with at least one ``event`` at or before as_of;
    profiles without one get no score (the model says nothing about them).
    """
    _check_as_of(as_of)
    horizon = _check_unit(horizon, "horizon")
    if len(name) + len(LONGEST_SUFFIX) > MAX_SCORE_NAME:
        raise ScoreError(
            f"score name {name!r} is too long: '{name}{LONGEST_SUFFIX}' must fit in "
            f"{MAX_SCORE_NAME} characters"
        )
    s = summary(conn, event, as_of=as_of, unit_days=unit_days)
    if len(s) == 0:
        raise ScoreError(
            f"BG/NBD: no {event!r} events at or before {as_of.isoformat()}; nothing to fit"
        )
    params = fit_bgnbd(s.x, s.t_x, s.T)
    alive = p_alive(params, s.x, s.t_x, s.T)
    purchases = expected_purchases(params, horizon, s.x, s.t_x, s.T)
    _finite(name, purchases)
    _finite(f"{name}_p_alive", alive)

    gg: GammaGammaParams | None = None
    gg_error: str | None = None
    known = (s.x > 0) & np.isfinite(s.monetary) & (s.monetary > 0)
    try:
        gg = fit_gamma_gamma(s.x[known], s.monetary[known])
    except ScoreError as exc:
        gg_error = str(exc)

    values: dict[str, dict[int, ScoreValue]] = {name: {}, f"{name}_p_alive": {}}
    pids = s.profile_ids.tolist()
    xs, txs, Ts = s.x.tolist(), s.t_x.tolist(), s.T.tolist()
    alive_l, purchases_l = alive.tolist(), purchases.tolist()
    for i, pid in enumerate(pids):
        rft = {"x": int(xs[i]), "t_x": txs[i], "T": Ts[i]}
        values[name][pid] = ScoreValue(purchases_l[i], {**rft, "p_alive": alive_l[i]})
        values[f"{name}_p_alive"][pid] = ScoreValue(alive_l[i], rft)
    if gg is not None:
        # Customers without a usable spend (one-time buyers, missing or zero values)
        # get the population mean, exactly as x = 0 does in the model.
        spend = expected_average_value(gg, np.where(known, s.x, 0.0), s.monetary)
        clv = purchases * spend
        _finite(f"{name}_clv", clv)
        spend_l, clv_l = spend.tolist(), clv.tolist()
        values[f"{name}_clv"] = {
            pid: ScoreValue(
                clv_l[i],
                {"expected_purchases": purchases_l[i], "expected_average_value": spend_l[i]},
            )
            for i, pid in enumerate(pids)
        }
    fit = FitResult(
        r=params.r,
        alpha=params.alpha,
        a=params.a,
        b=params.b,
        log_likelihood=params.log_likelihood,
        profiles=len(s),
        repeat_buyers=int(np.count_nonzero(s.x > 0)),
        as_of=as_of,
        horizon=horizon,
        unit_days=s.unit_days,
        p=gg.p if gg else None,
        q=gg.q if gg else None,
        v=gg.v if gg else None,
        gamma_gamma_profiles=int(np.count_nonzero(known)) if gg else 0,
        gamma_gamma_log_likelihood=gg.log_likelihood if gg else None,
        gamma_gamma_error=gg_error,
    )
    return fit, values


# -- plugin ------------------------------------------------------------------------

DEFAULT_PARAMS: dict[str, Any] = {"event": "purchase", "horizon": 39, "unit_days": 7}


def validate(params: Any) -> dict[str, Any]:
    """{event, horizon, unit_days} with defaults; ValueError says which value is wrong."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a mapping of event, horizon, unit_days, got {params!r}")
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown param(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(DEFAULT_PARAMS)})"
        )
    out = {**DEFAULT_PARAMS, **params}
    event = out["event"]
    if not is_snake_name(event, EVENT_TYPE_MAX_LENGTH):
        raise ValueError(f"event: {event!r} is not an event type (snake_case, e.g. purchase)")
    for key, what in (("horizon", "units (weeks by default)"), ("unit_days", "days")):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: must be a number of {what}, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{key}: must be a positive number of {what}, got {value!r}")
        out[key] = float(value)
    return out


def score_all(
    conn: Connection, params: dict[str, Any], as_of: datetime, name: str
) -> dict[str, dict[int, ScoreValue]]:
    _, values = fit_and_score(
        conn,
        event=params["event"],
        as_of=as_of,
        horizon=params["horizon"],
        unit_days=params["unit_days"],
        name=name,
    )
    return values


FIT_FIGURES = ("r", "alpha", "a", "b", "log_likelihood", "profiles", "p", "q", "v")


def fit_and_store(
    engine: Engine,
    *,
    event: str = "purchase",
    as_of: datetime,
    horizon: float = 39.0,
    name: str = "bgnbd",
) -> tuple[dict[str, Any], dict[str, int]]:
    """Fit and score as ``fit_and_score``, store the scores in one transaction.

    Returns the fitted figures (BG/NBD r, alpha, a, b, log-likelihood,
    profiles; Gamma-Gamma p, q, v when fitted) and the profiles stored per score.
    """
    with engine.begin() as conn:
        fit, values = fit_and_score(conn, event=event, as_of=as_of, horizon=horizon, name=name)
        stored = store_scores(conn, values, as_of)
    figures = {k: getattr(fit, k) for k in FIT_FIGURES if getattr(fit, k, None) is not None}
    return figures, stored


BGNBD = ScoringModel(
    kind="bgnbd",
    description=(
        "BG/NBD expected purchases and P(alive), with Gamma-Gamma CLV, fitted by maximum likelihood"
    ),
    score_all=score_all,
    validate=validate,
)
