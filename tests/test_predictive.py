"""BG/NBD, Gamma-Gamma and CLV scores against the published CDNOW figures.

The CDNOW data go in through segflow's own ingestion, so the summary, the fit
and the scores are checked end to end:

- summary at the end of 1997-09-30 == cdnow_customers_summary.csv, all 2,357
  customers (any instant of 1997-09-30 reproduces it: the file's purchases are
  stamped 00:00 UTC and the period ends on the as_of's UTC date);
- BG/NBD: r, alpha, a, b, LL and the 39-week forecast of Fader, Hardie, Lee
  (2005, Marketing Science), as listed in ../shared/data/README.md;
- Gamma-Gamma: p = 6.25, q = 3.74, gamma = 15.44 from Fader and Hardie (2013,
  "The Gamma-Gamma model of monetary value", 946 repeat customers), the
  log-likelihood -4055.9177 that CLVTools' correctness test asserts for the same
  data, and the population mean 35.17 that lifetimes' documentation prints for
  one-time buyers (lifetimes prints v = 15.45: its optimiser stops earlier).
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from scipy import optimize

from core.db import open_db
from core.db.tables import PROFILES
from core.ingestion import ingest
from core.scoring import parse_definition, run_scores, store_scores
from core.types import ScoreError
from plugins.scoring import predictive as pred
from tests.conftest import require_shared
from tests.helpers import cdnow_events

# The end of the CDNOW calibration period (39 weeks from 1997-01-01).
CDNOW_AS_OF = datetime(1997, 9, 30, 23, 59, 59, 999999, tzinfo=UTC)
PUBLISHED = pred.BgnbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=-9582.4)


def user_ids(conn: sa.Connection) -> dict[int, str]:
    return dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.user_id)).all())


@pytest.fixture(scope="module")
def cdnow_sample(_migrated_sqlite, tmp_path_factory):
    """The 2,357-customer sample, ingested once for this module's tests."""
    path = require_shared("cdnow/CDNOW_sample.txt")
    target = tmp_path_factory.mktemp("cdnow") / "segflow.db"
    shutil.copy(_migrated_sqlite, target)
    engine = open_db(f"sqlite:///{target}")
    events = cdnow_events(path)
    report = ingest(engine, events)
    assert (report.accepted, report.duplicates, report.rejected) == (len(events), 0, [])
    return engine


# -- CDNOW: the published figures --------------------------------------------------


def test_cdnow_summary_reproduces_the_published_file(cdnow_sample):
    sample = require_shared("cdnow/CDNOW_sample.txt")
    published = require_shared("cdnow/cdnow_customers_summary.csv")
    sample_id = {}  # master customer id -> the summary file's ID
    for line in sample.read_text().splitlines():
        customer, sid, *_ = line.split()
        sample_id[str(int(customer))] = int(sid)
    with published.open() as fh:
        expected = {int(r["ID"]): r for r in csv.DictReader(fh)}

    with cdnow_sample.connect() as conn:
        ids = user_ids(conn)
        s = pred.summary(conn, "purchase", as_of=CDNOW_AS_OF)
        # The first instant of the day gives the same period: the cut is by day.
        early = pred.summary(conn, as_of=datetime(1997, 9, 30, tzinfo=UTC))
        # One day later differs: T grows and purchases of 1997-10-01 join.
        later = pred.summary(conn, as_of=datetime(1997, 10, 1, tzinfo=UTC))

    assert len(s) == len(expected) == 2357
    rows = [expected[sample_id[ids[pid]]] for pid in s.profile_ids.tolist()]
    np.testing.assert_array_equal(s.x, [int(r["frequency"]) for r in rows])
    np.testing.assert_allclose(np.round(s.t_x, 2), [float(r["recency"]) for r in rows], atol=1e-9)
    np.testing.assert_allclose(np.round(s.T, 2), [float(r["T"]) for r in rows], atol=1e-9)
    for field in ("profile_ids", "x", "t_x", "T", "monetary"):
        np.testing.assert_array_equal(getattr(early, field), getattr(s, field))
    np.testing.assert_allclose(later.T, s.T + 1 / 7)
    assert later.x.sum() > s.x.sum()
    # Monetary: mean of the repeat days' totals (Fader/Hardie's zbar), 0 for one-time buyers.
    assert np.all(s.monetary[s.x == 0] == 0)
    first = ids_to_index(s, ids)["4"]  # ID 1 in the file: $29.33, then 29.73 and 14.96
    assert (s.x[first], s.monetary[first]) == (2, pytest.approx((29.73 + 14.96) / 2))


def ids_to_index(s: pred.Summary, ids: dict[int, str]) -> dict[str, int]:
    return {ids[pid]: i for i, pid in enumerate(s.profile_ids.tolist())}


def test_cdnow_bgnbd_fit_matches_fader_hardie_lee(cdnow_sample):
    with cdnow_sample.connect() as conn:
        s = pred.summary(conn, as_of=CDNOW_AS_OF)
    fit = pred.fit_bgnbd(s.x, s.t_x, s.T)
    got = tuple(round(v, 3) for v in (fit.r, fit.alpha, fit.a, fit.b))
    assert got == (0.243, 4.414, 0.793, 2.426)
    assert round(fit.log_likelihood, 1) == -9582.4
    # The paper's worked example, with the fitted and with the published parameters.
    for params in (fit, PUBLISHED):
        e = pred.expected_purchases(params, 39, 2, 30.43, 38.86)
        assert round(float(e), 3) == 1.226
    # The published parameters are not better than the optimum.
    assert pred.bgnbd_log_likelihood(PUBLISHED, s.x, s.t_x, s.T) <= fit.log_likelihood


def test_cdnow_gamma_gamma_matches_fader_hardie(cdnow_sample):
    with cdnow_sample.connect() as conn:
        s = pred.summary(conn, as_of=CDNOW_AS_OF)
    repeat = s.x > 0
    assert repeat.sum() == 946
    gg = pred.fit_gamma_gamma(s.x[repeat], s.monetary[repeat])
    p, q, v = gg
    assert (round(p, 2), round(q, 2), round(v, 2)) == (6.25, 3.74, 15.44)
    assert round(gg.log_likelihood, 4) == -4055.9177
    population = pred.expected_average_value(gg, 0, 0)
    assert round(float(population), 2) == 35.17 == round(p * v / (q - 1), 2)
    # More repeat purchases pull the estimate from the population mean to the own mean.
    shrunk = pred.expected_average_value(gg, [1, 10, 1000], [100.0, 100.0, 100.0])
    assert population < shrunk[0] < shrunk[1] < shrunk[2] < 100.0
    assert shrunk[2] == pytest.approx(100.0, rel=1e-2)


def test_cdnow_fit_and_score_end_to_end(cdnow_sample):
    with cdnow_sample.begin() as conn:
        fit, values = pred.fit_and_score(conn, as_of=CDNOW_AS_OF, name="bgnbd")
        counts = store_scores(conn, values, CDNOW_AS_OF)
        ids = user_ids(conn)
        s = pred.summary(conn, as_of=CDNOW_AS_OF)
    assert (fit.profiles, fit.repeat_buyers, fit.gamma_gamma_profiles) == (2357, 946, 946)
    assert (round(fit.p, 2), round(fit.q, 2), round(fit.v, 2)) == (6.25, 3.74, 15.44)
    assert fit.gamma_gamma_error is None
    assert counts == {"bgnbd": 2357, "bgnbd_p_alive": 2357, "bgnbd_clv": 2357}
    # The paper's example customer is ID 1 (master id 4): x = 2, t_x = 30.43, T = 38.86.
    pid = next(p for p, u in ids.items() if u == "4")
    e, alive, clv = (values[k][pid] for k in ("bgnbd", "bgnbd_p_alive", "bgnbd_clv"))
    assert round(e.value, 2) == 1.23  # 1.226 at the rounded t_x/T of the paper
    assert e.components["x"] == 2 and e.components["p_alive"] == alive.value
    assert clv.value == pytest.approx(e.value * clv.components["expected_average_value"])
    assert round(clv.components["expected_average_value"], 2) == 24.65  # lifetimes: 24.66
    for name in counts:
        vals = np.array([sv.value for sv in values[name].values()])
        assert np.all(np.isfinite(vals)) and np.all(vals >= 0)
    alive_all = np.array([sv.value for sv in values["bgnbd_p_alive"].values()])
    assert np.all(alive_all <= 1) and np.all(alive_all[s.x == 0] == 1)


def test_registered_model_validates_and_runs(cdnow_sample):
    from core.plugins import get_manager, scoring_models

    pm = get_manager()
    added = None
    if not any(p is pred for p in pm.get_plugins()):
        added = pm.register(pred, name="plugins.scoring.predictive")
    try:
        models = scoring_models(pm)
        d = parse_definition(
            {"name": "ltv", "model": "bgnbd", "params": {"horizon": 52}}, models=models
        )
        assert d.params == {"event": "purchase", "horizon": 52.0, "unit_days": 7.0}
        for params, message in [
            ({"horizon": 0}, "horizon: must be a positive number"),
            ({"horizon": "soon"}, "horizon: must be a number"),
            ({"unit_days": float("nan")}, "unit_days: must be a positive number"),
            ({"event": "Purchase!"}, "event: 'Purchase!' is not an event type"),
            ({"horizn": 3}, "unknown param(s) horizn"),
        ]:
            with pytest.raises(ScoreError, match=re.escape(f"score 'ltv': params: {message}")):
                parse_definition({"name": "ltv", "model": "bgnbd", "params": params}, models=models)
        counts = run_scores(cdnow_sample, {"ltv": d}, CDNOW_AS_OF)
        assert counts == {"ltv": 2357, "ltv_p_alive": 2357, "ltv_clv": 2357}
    finally:
        if added is not None:
            pm.unregister(name="plugins.scoring.predictive")


# -- the maths, without a database -------------------------------------------------


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 12, 300).astype(float)
    T = rng.uniform(1, 40, 300)
    t_x = np.where(x > 0, rng.uniform(0.1, 1, 300) * T, 0.0)
    theta = np.log([0.4, 3.0, 0.7, 2.2])
    _, grad = pred._bgnbd_terms(theta, x, t_x, T)
    numeric = optimize.approx_fprime(theta, lambda t: pred._bgnbd_terms(t, x, t_x, T)[0].sum())
    np.testing.assert_allclose(grad.sum(axis=1), numeric, rtol=1e-4)

    m = rng.gamma(5, 8, 300)
    xr = x + 1
    theta = np.log([6.0, 3.5, 15.0])
    _, grad = pred._gg_terms(theta, xr, m)
    numeric = optimize.approx_fprime(theta, lambda t: pred._gg_terms(t, xr, m)[0].sum())
    np.testing.assert_allclose(grad.sum(axis=1), numeric, rtol=1e-4)


def log_hyp2f1_series(A: float, B: float, C: float, z: float) -> float:
    """ln 2F1(A, B; C; z) summed term by term (positive terms, so no cancellation)."""
    logs, log_term, k = [0.0], 0.0, 0
    while k < 100_000:
        k += 1
        log_term += math.log((A + k - 1) * (B + k - 1) / ((C + k - 1) * k)) + math.log(z)
        logs.append(log_term)
        if k > 20 and log_term < max(logs) - 40:
            break
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs))


def expected_purchases_by_series(p: pred.BgnbdParams, t, x, t_x, T) -> float:
    """FHL 2005 eq. 10 as printed (no Euler transformation), in log space."""
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    z = t / (alpha + T + t)
    f = math.exp((r + x) * math.log(1 - z) + log_hyp2f1_series(r + x, b + x, a + b + x - 1, z))
    alive = 1 / (1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    return (a + b + x - 1) / (a - 1) * (1 - f) * alive


def test_predictions_are_vectorised_and_well_behaved():
    x = np.array([0, 1, 5, 300])
    t_x = np.array([0.0, 10.0, 30.0, 38.0])
    T = np.full(4, 38.86)
    alive = pred.p_alive(PUBLISHED, x, t_x, T)
    assert alive.shape == (4,) and alive[0] == 1 and np.all((alive > 0) & (alive <= 1))
    horizons = np.array([[0.0], [1.0], [39.0], [520.0]])
    e = pred.expected_purchases(PUBLISHED, horizons, x, t_x, T)
    assert e.shape == (4, 4) and np.all(np.isfinite(e))
    assert np.all(e[0] == 0) and np.all(np.diff(e, axis=0) > 0)
    # The Euler-transformed hypergeometric term equals the printed formula, also for a
    # heavy buyer, where scipy's hyp2f1 on the printed form overflows.
    for i, j in [(1, 0), (2, 1), (2, 3), (3, 3), (1, 2)]:
        by_series = expected_purchases_by_series(PUBLISHED, horizons[i, 0], x[j], t_x[j], T[j])
        assert e[i, j] == pytest.approx(by_series, rel=1e-9)


def test_numerical_fallback_agrees_and_covers_the_edge_cases():
    """The quadrature used where the hypergeometric form cannot be trusted."""
    x = np.array([0.0, 1.0, 2.0, 7.0, 40.0])
    t_x = np.array([0.0, 3.0, 30.43, 20.0, 38.0])
    T = np.full(5, 38.86)
    closed = pred.expected_purchases(PUBLISHED, 39.0, x, t_x, T)
    alive = pred.p_alive(PUBLISHED, x, t_x, T)
    by_quadrature = [
        alive[i] * pred._expected_by_quadrature(PUBLISHED, 39.0, x[i], T[i]) for i in range(5)
    ]
    np.testing.assert_allclose(closed, by_quadrature, rtol=1e-8)
    # a = 1 is 0/0 in the closed form; the value lies between its neighbours'.
    near = [
        pred.expected_purchases(pred.BgnbdParams(0.5, 3.0, a, 2.0, 0.0), 39.0, x, t_x, T)
        for a in (0.999, 1.0, 1.001)
    ]
    assert np.all(np.isfinite(near[1]))
    assert np.all((np.minimum(near[0], near[2]) <= near[1]) & (near[1] <= np.maximum(*near[::2])))


@pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [
        # Everyone bought on their last day: no sign of dropout heterogeneity.
        ([1, 2, 3, 1, 2, 0, 0], [5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 8, 9, 4, 3]),
        # Identical, regular buyers: the supremum lies at infinity (Poisson limit), where
        # L-BFGS-B stops abnormally on a flat ridge; the restart shows it is the maximum.
        ([4] * 6, [4] * 6, [4.5] * 6),
    ],
    ids=["last-day", "regular"],
)
def test_degenerate_data_still_give_finite_scores(x, t_x, T):
    x, t_x, T = (np.array(v, dtype=float) for v in (x, t_x, T))
    fit = pred.fit_bgnbd(x, t_x, T)
    assert all(math.isfinite(v) for v in (fit.r, fit.alpha, fit.a, fit.b, fit.log_likelihood))
    e = pred.expected_purchases(fit, 10.0, x, t_x, T)
    assert np.all(np.isfinite(e)) and np.all(e > 0)
    if np.all(x == 4):  # 4 purchases in 4.5 units each, nobody gone: ~0.89 a unit
        np.testing.assert_allclose(e, 10 * 4 / 4.5, rtol=1e-3)


# -- too little data -----------------------------------------------------------------

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def _purchases(engine, rows: list[tuple[str, int]]) -> None:
    events = [
        {
            "type": "purchase",
            "user_id": user,
            "ts": (DAY + timedelta(days=day)).isoformat(),
            "value": 10.0,
            "message_id": f"p{i}",
        }
        for i, (user, day) in enumerate(rows)
    ]
    report = ingest(engine, events)
    assert report.accepted == len(rows)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no 'purchase' events at or before 2026-03-01T00:00:00\\+00:00; nothing to fit"),
        (
            [("solo", 0), ("solo", 3), ("solo", 9)],
            "needs at least 2 customers with repeat purchases .* found 1 among 1 customers",
        ),
        (
            # Same-day purchases are one transaction: u1 and u2 are no repeat buyers.
            [("u1", 0), ("u1", 0), ("u2", 5), ("u3", 7), ("u1", 70)],
            "needs at least 2 customers with repeat purchases .* found 0 among 3 customers",
        ),
    ],
    ids=["empty", "one-buyer", "no-repeat-buyers"],
)
def test_too_little_data_is_a_clear_error(fresh_sqlite, rows, message):
    engine = open_db(fresh_sqlite())
    _purchases(engine, rows)
    with engine.connect() as conn, pytest.raises(ScoreError, match=message):
        pred.fit_and_score(conn, as_of=datetime(2026, 3, 1, tzinfo=UTC))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ScoreError, match="no customers"):
        pred.fit_bgnbd([], [], [])
    with pytest.raises(ScoreError, match="t_x .* is after T"):
        pred.fit_bgnbd([1, 2], [5.0, 3.0], [4.0, 4.0])
    with pytest.raises(ScoreError, match="x has non-finite"):
        pred.fit_bgnbd([1, np.nan], [1.0, 1.0], [4.0, 4.0])
    with pytest.raises(ScoreError, match="at least 2 repeat customers"):
        pred.fit_gamma_gamma([3], [20.0])
    with pytest.raises(ScoreError, match="positive mean spend"):
        pred.fit_gamma_gamma([3, 1], [20.0, 0.0])
    with pytest.raises(ScoreError, match="timezone-aware"):
        pred.fit_and_score(None, as_of=datetime(2026, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ScoreError, match="horizon must be a positive"):
        pred.fit_and_score(None, as_of=DAY, horizon=-1)  # type: ignore[arg-type]


def test_clv_is_left_out_when_spend_cannot_be_fitted(fresh_sqlite):
    """Purchases without values still give BG/NBD scores; CLV says why it is missing."""
    engine = open_db(fresh_sqlite())
    rng = np.random.default_rng(5)
    events = []
    for u in range(60):
        for d in sorted(set(rng.integers(0, 200, rng.integers(1, 6)).tolist())):
            events.append(
                {
                    "type": "purchase",
                    "user_id": f"u{u}",
                    "ts": (DAY + timedelta(days=d, hours=3)).isoformat(),
                    "message_id": f"u{u}-{d}",
                }
            )
    ingest(engine, events)
    with engine.connect() as conn:
        fit, values = pred.fit_and_score(conn, as_of=DAY + timedelta(days=200), name="churn")
    assert set(values) == {"churn", "churn_p_alive"}
    assert fit.p is None and "Gamma-Gamma: needs at least 2 repeat customers" in (
        fit.gamma_gamma_error or ""
    )
    assert all(math.isfinite(v.value) for v in values["churn"].values())


# -- day boundaries on both backends -----------------------------------------------


def test_days_are_utc_dates_and_as_of_is_an_instant(db_url, monkeypatch):
    engine = open_db(db_url)
    as_of = datetime(2026, 2, 10, 12, 0, tzinfo=UTC)
    rows = [
        # u1: 23:30 in New York on Jan 1 is Jan 2 in UTC; two purchases that day.
        ("u1", "2026-01-01T23:30:00-05:00", 10.0),
        ("u1", "2026-01-02T01:00:00Z", 5.0),
        ("u1", "2026-01-09T23:59:59.999999Z", 20.0),
        ("u1", "2026-02-10T12:00:00Z", 30.0),  # exactly as_of: counts
        ("u1", "2026-02-10T12:00:00.000001Z", 99.0),  # after as_of: ignored
        # u2: a value missing on a repeat day makes the mean spend unknown.
        ("u2", "2026-01-05T10:00:00+01:00", 10.0),
        ("u2", "2026-01-20T10:00:00Z", None),
        # u3: only a refund, and a later purchase: not a customer yet.
        ("u3", "2026-01-05T10:00:00Z", None),
        ("u3", "2026-03-01T10:00:00Z", 10.0),
    ]
    events = [
        {
            "type": "refund" if i == 7 else "purchase",
            "user_id": u,
            "ts": ts,
            "message_id": f"m{i}",
            **({"value": v} if v is not None else {}),
        }
        for i, (u, ts, v) in enumerate(rows)
    ]
    assert ingest(engine, events).accepted == len(rows)
    with engine.connect() as conn:
        s = pred.summary(conn, as_of=as_of, unit_days=1.0)
        ids = user_ids(conn)
    got = {
        ids[pid]: (x, t_x, T, m)
        for pid, x, t_x, T, m in zip(
            s.profile_ids.tolist(),
            s.x.tolist(),
            s.t_x.tolist(),
            s.T.tolist(),
            s.monetary.tolist(),
            strict=True,
        )
    }
    assert set(got) == {"u1", "u2"}
    # u1: days Jan 2 ($15, first), Jan 9 ($20), Feb 10 ($30, the as_of day).
    assert got["u1"] == (2.0, 39.0, 39.0, 25.0)
    x, t_x, T, m = got["u2"]
    assert (x, t_x, T) == (1.0, 15.0, 36.0) and math.isnan(m)

    # Backends without a SQL day expression group in Python, with the same result.
    monkeypatch.setattr(pred, "_day_expression", lambda conn: None)
    with engine.connect() as conn:
        by_python = pred.summary(conn, as_of=as_of, unit_days=1.0)
    for field in ("profile_ids", "x", "t_x", "T", "monetary"):
        np.testing.assert_array_equal(getattr(by_python, field), getattr(s, field))


# -- real data at scale -------------------------------------------------------------


@pytest.mark.slow
def test_online_retail_purchases_and_refunds(online_retail):
    """Import through the shipped mapping; refunds must not count as purchase days."""
    path = require_shared("online_retail/online_retail.csv.gz")
    report, make = online_retail
    engine = open_db(make())
    assert report.accepted > 400_000 and report.by_type.get("refund", 0) > 0

    # Independent expectation: distinct UTC dates of each customer's non-cancelled lines.
    import pandas as pd

    with gzip.open(path, "rt", newline="") as fh:
        df = pd.read_csv(fh, dtype={"InvoiceNo": str, "CustomerID": str})
    df = df[df.CustomerID.notna()]
    local = pd.to_datetime(df.InvoiceDate).dt.tz_localize("Europe/London")
    df = df.assign(day=local.dt.tz_convert("UTC").dt.date)
    bought = df[~df.InvoiceNo.str.startswith("C")]
    days_per_customer = bought.groupby("CustomerID").day.nunique()
    only_refunds = set(df.CustomerID) - set(bought.CustomerID)
    assert only_refunds  # the file has customers whose every line is a cancellation

    as_of = datetime(2011, 12, 9, 23, 59, 59, 999999, tzinfo=UTC)
    with engine.connect() as conn:
        fit, values = pred.fit_and_score(conn, as_of=as_of, name="bgnbd")
        s = pred.summary(conn, as_of=as_of)
        ids = user_ids(conn)
    got = {str(int(float(ids[pid]))): int(x) + 1 for pid, x in zip(s.profile_ids, s.x, strict=True)}
    assert got == {str(int(float(c))): n for c, n in days_per_customer.items()}
    assert not {str(int(float(c))) for c in only_refunds} & set(got)

    assert fit.profiles == len(days_per_customer)
    for v in (fit.r, fit.alpha, fit.a, fit.b, fit.log_likelihood, fit.p, fit.q, fit.v):
        assert v is not None and math.isfinite(v)
    assert set(values) == {"bgnbd", "bgnbd_p_alive", "bgnbd_clv"}
    for name, per_profile in values.items():
        vals = np.array([sv.value for sv in per_profile.values()])
        assert len(vals) == fit.profiles and np.all(np.isfinite(vals)), name
    alive = np.array([sv.value for sv in values["bgnbd_p_alive"].values()])
    assert np.all((alive >= 0) & (alive <= 1))


@pytest.mark.slow
def test_cdnow_master_fits(fresh_sqlite):
    """All 23,570 customers through ingestion; speed is measured in bench/fit_bgnbd.py."""
    path = require_shared("cdnow/CDNOW_master.txt")
    engine = open_db(fresh_sqlite())
    events = cdnow_events(path)
    assert ingest(engine, events).accepted == len(events) == 69_659
    with engine.connect() as conn:
        fit, values = pred.fit_and_score(conn, as_of=CDNOW_AS_OF)
    assert fit.profiles == 23_570
    for v in (fit.r, fit.alpha, fit.a, fit.b, fit.log_likelihood, fit.p, fit.q, fit.v):
        assert v is not None and math.isfinite(v) and v != 0
    # The sample is a 1-in-10 draw of this cohort: the estimates are close to its own.
    assert 0.2 < fit.r < 0.3 and 0.6 < fit.a < 1.0
    assert all(len(v) == 23_570 for v in values.values())


def test_cli_scores_fit_prints_the_published_figures_and_stores_scores(cdnow_sample, capsys):
    import json

    from core.cli import main

    db = str(cdnow_sample.url)
    as_of = "1997-09-30T23:59:59.999999+00:00"
    assert main(["--db", db, "scores", "fit", "bgnbd", "--as-of", as_of, "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert {k: round(fit[k], 3) for k in ("r", "alpha", "a", "b")} == {
        "r": 0.243,
        "alpha": 4.414,
        "a": 0.793,
        "b": 2.426,
    }
    assert round(fit["log_likelihood"], 1) == -9582.4 and fit["profiles"] == 2357
    customer = next(iter(user_ids_of(cdnow_sample)))
    assert main(["--db", db, "scores", "show", customer, "--json"]) == 0
    shown = {row["score"] for row in json.loads(capsys.readouterr().out)}
    assert {"bgnbd", "bgnbd_p_alive", "bgnbd_clv"} <= shown


def user_ids_of(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(user_ids(conn).values())
