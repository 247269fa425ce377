"""RFM scoring (plugins/scoring/rfm.py) and the rfm_group condition."""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.models import Score
from core.db.tables import EVENTS, PROFILES
from core.ingestion import ingest
from tests.conftest import require_shared

SCORES = Score.__table__
AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
EARLIER = datetime(2026, 2, 15, tzinfo=UTC)


@pytest.fixture
def rfm():
    """The plugin module, registered for the test unless DEFAULT_PLUGINS has it already."""
    import plugins.scoring.rfm as module
    from core.plugins import get_manager

    pm = get_manager()
    added = not pm.is_registered(module)
    if added:
        pm.register(module, name="plugins.scoring.rfm")
    yield module
    if added:
        pm.unregister(module)


def _e(user, type_, ts, value=None, **properties):
    record = {"type": type_, "user_id": user, "ts": ts, "properties": properties}
    if value is not None:
        record["value"] = value
    return record


# Hand-made history; expected figures at AS_OF in the comments.
EVENTS_DATA = [
    # a: 2 orders, 150 bought, 30 refunded; last purchase 12h before AS_OF.
    _e("a", "purchase", "2026-02-20T10:00:00Z", 50, order_id="A2"),
    _e("a", "purchase", "2026-02-28T12:00:00Z", 100, order_id="A1"),
    _e("a", "refund", "2026-02-25T09:00:00Z", 30, order_id="A2"),
    # b: no ids -> orders are days: 2026-02-10 (two events) and 2026-01-05.
    _e("b", "purchase", "2026-01-05T08:00:00Z", 5),
    _e("b", "purchase", "2026-02-10T10:00:00Z", 10),
    _e("b", "purchase", "2026-02-10T15:00:00Z", 20),
    # c: invoice lines (Online Retail style): 2 invoices, one day.
    _e("c", "purchase", "2026-01-15T08:00:00Z", 1, invoice="536365", line=1),
    _e("c", "purchase", "2026-01-15T08:00:00Z", 2, invoice="536365", line=2),
    _e("c", "purchase", "2026-01-15T08:00:00Z", 3, invoice="536365", line=3),
    _e("c", "purchase", "2026-01-15T08:00:00Z", 4, invoice="536366", line=1),
    # d: one big old purchase, a partial refund.
    _e("d", "purchase", "2025-06-01T00:00:00Z", 500),
    _e("d", "refund", "2025-07-01T00:00:00Z", 100),
    # e: a refund and a page view, no purchase: not scored.
    _e("e", "refund", "2026-02-01T00:00:00Z", 10),
    _e("e", "page_view", "2026-02-01T00:00:00Z"),
    # f: buys only after AS_OF: not scored.
    _e("f", "purchase", "2026-03-05T00:00:00Z", 99),
    # g: two lines of order G1; order_id wins over invoice.
    _e("g", "purchase", "2026-02-01T00:00:00Z", 5, order_id="G1"),
    _e("g", "purchase", "2026-02-01T00:00:00Z", 5, order_id="G1", invoice="999"),
]

# user -> (recency_days, frequency, monetary, R, F, M, group) at AS_OF.
EXPECTED = {
    "a": (0, 2, 120.0, 5, 4, 4, "champions"),
    "b": (18, 2, 35.0, 4, 4, 3, "loyal"),
    "c": (44, 2, 10.0, 2, 4, 2, "at_risk"),
    "d": (273, 1, 400.0, 1, 2, 5, "hibernating"),
    "g": (28, 1, 10.0, 3, 2, 2, "about_to_sleep"),
}
# At EARLIER (2026-02-15): a has not bought yet.
EXPECTED_EARLIER = {
    "b": (4, 2, 35.0, 5, 4, 4, "champions"),
    "c": (30, 2, 10.0, 2, 4, 2, "at_risk"),
    "d": (259, 1, 400.0, 1, 2, 5, "hibernating"),
    "g": (14, 1, 10.0, 4, 2, 2, "potential_loyalist"),
}


def _load(url: str):
    engine = open_db(url)
    report = ingest(engine, EVENTS_DATA)
    assert report.accepted == len(EVENTS_DATA), report.rejected
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(PROFILES.c.user_id, PROFILES.c.id)).all())
    return engine, ids


def _score(rfm, engine, as_of, params=None, name="rfm"):
    with engine.connect() as conn:
        return rfm.score_all(conn, rfm.validate(params or {}), as_of, name)


def _check(values, ids, expected, name="rfm"):
    user_of = {pid: user for user, pid in ids.items()}
    assert set(values) == {name, f"{name}_r", f"{name}_f", f"{name}_m"}
    for score in values.values():
        assert {user_of[pid] for pid in score} == set(expected)
    for user, (days, freq, money, r, f, m, group) in expected.items():
        pid = ids[user]
        components = {"recency_days": days, "frequency": freq, "monetary": money, "group": group}
        assert values[f"{name}_r"][pid].value == r, user
        assert values[f"{name}_f"][pid].value == f, user
        assert values[f"{name}_m"][pid].value == m, user
        assert values[name][pid].value == r * 100 + f * 10 + m, user
        for score in values.values():
            assert score[pid].components == components, user


def test_rfm_figures_quintiles_and_groups(rfm, db_url):
    engine, ids = _load(db_url)
    _check(_score(rfm, engine, AS_OF), ids, EXPECTED)
    _check(_score(rfm, engine, EARLIER), ids, EXPECTED_EARLIER)


def test_window_limits_purchases_and_refunds(rfm, db_url):
    engine, ids = _load(db_url)
    # Events with ts > 2026-01-30: c and d drop out, b keeps one day (2 events).
    values = _score(rfm, engine, AS_OF, {"window": "30d"})
    user_of = {pid: user for user, pid in ids.items()}
    got = {user_of[pid]: v.components for pid, v in values["rfm"].items()}
    assert got == {
        "a": {"recency_days": 0, "frequency": 2, "monetary": 120.0, "group": "champions"},
        "b": {"recency_days": 18, "frequency": 1, "monetary": 30.0, "group": "about_to_sleep"},
        "g": {"recency_days": 28, "frequency": 1, "monetary": 10.0, "group": "hibernating"},
    }
    # R: g < b < a; F: 1, 1 tie below 2 -> mid-rank (1+2)/2 of 3 = 0.33 -> 2, a: 0.83 -> 5.
    assert {user_of[p]: v.value for p, v in values["rfm"].items()} == {
        "a": 555.0,
        "b": 323.0,
        "g": 121.0,
    }


def test_refund_type_and_purchase_type_params(rfm, db_url):
    engine, ids = _load(db_url)
    # Without refunds a's monetary is the gross 150 and d's 500.
    values = _score(rfm, engine, AS_OF, {"refund": None})
    assert values["rfm"][ids["a"]].components["monetary"] == 150.0
    assert values["rfm"][ids["d"]].components["monetary"] == 500.0
    # Another purchase type: nobody bought "subscription".
    assert _score(rfm, engine, AS_OF, {"purchase": "subscription"})["rfm"] == {}


def test_quintiles_mid_rank_with_ties(rfm):
    q = rfm.quintiles
    assert q([]) == []
    assert q([7.0]) == [3]  # one customer: the middle
    assert q([1, 1, 1, 1]) == [3, 3, 3, 3]  # no information: the middle
    assert q([5, 4, 3, 2, 1]) == [5, 4, 3, 2, 1]
    assert q(list(range(10))) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Three tied at the bottom of ten sit at positions 1-3: p = 0.15 -> 1.
    assert q([1, 1, 1, 2, 3, 4, 5, 6, 7, 8]) == [1, 1, 1, 2, 3, 3, 4, 4, 5, 5]
    # Six tied of ten: p = 0.3 -> 2; the rest follow.
    assert q([0, 0, 0, 0, 0, 0, 1, 2, 3, 4]) == [2] * 6 + [4, 4, 5, 5]
    # Equal values, equal scores, whatever the input order.
    values = [3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 9]
    scores = q(values)
    for v in set(values):
        assert len({s for x, s in zip(values, scores, strict=True) if x == v}) == 1
    assert scores == q(values[::-1])[::-1]


def test_group_map_is_total_and_matches_the_cited_table(rfm):
    assert set(rfm.GROUP_OF) == {(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert set(rfm.GROUP_OF.values()) == set(rfm.GROUPS)  # no group is empty
    # The seg_map cells: 11 hibernating, 14 at_risk, 25 cant_lose, 32 about_to_sleep,
    # 33 need_attention, 34/45 loyal, 41 promising, 51 new_customers,
    # 42/53 potential_loyalist, 54/55 champions.
    cells = {
        (1, 1): "hibernating",
        (2, 2): "hibernating",
        (1, 4): "at_risk",
        (2, 3): "at_risk",
        (2, 5): "cant_lose",
        (3, 2): "about_to_sleep",
        (3, 3): "need_attention",
        (3, 4): "loyal",
        (4, 5): "loyal",
        (4, 1): "promising",
        (5, 1): "new_customers",
        (4, 2): "potential_loyalist",
        (5, 3): "potential_loyalist",
        (5, 4): "champions",
        (5, 5): "champions",
    }
    for (r, f), group in cells.items():
        assert rfm.group_of(r, f) == group, (r, f)


def test_params_are_validated(rfm):
    from core.plugins import scoring_models
    from core.scoring import parse_definition
    from core.types import ScoreError

    models = scoring_models()

    definition = parse_definition({"name": "rfm", "model": "rfm"}, models=models)
    assert definition.params == rfm.RfmParams("purchase", "refund", None)
    definition = parse_definition(
        {"name": "rfm", "model": "rfm", "params": {"purchase": "order", "window": "52w"}},
        models=models,
    )
    assert definition.params.purchase == "order"
    assert definition.params.window.days == 364
    bad = [
        ({"window": "a year"}, "params: window: 'a year' is not a duration"),
        ({"window": "0d"}, "params: window: duration '0d' must be positive"),
        ({"purchase": ""}, "params: purchase: expected an event type name"),
        ({"refund": 3}, "params: refund: expected an event type name or null"),
        ({"refund": "purchase"}, "params: refund: must differ from purchase"),
        ({"windw": "30d"}, r"params: unknown key\(s\) windw \(rfm takes purchase, refund"),
        (["purchase"], "params: rfm params are a mapping"),
    ]
    for params, message in bad:
        with pytest.raises(ScoreError, match=message):
            parse_definition({"name": "rfm", "model": "rfm", "params": params}, models=models)
    # Quintiles need the whole population: no real-time scorer.
    assert models["rfm"].score_one is None


def test_scores_are_stored_with_history(rfm, db_url):
    from core.plugins import scoring_models
    from core.scoring import latest_scores, parse_definition, run_scores

    engine, ids = _load(db_url)
    definition = parse_definition({"name": "rfm", "model": "rfm"}, models=scoring_models())
    assert run_scores(engine, {"rfm": definition}, EARLIER) == dict.fromkeys(
        ["rfm", "rfm_r", "rfm_f", "rfm_m"], 4
    )
    assert run_scores(engine, {"rfm": definition}, AS_OF)["rfm"] == 5
    run_scores(engine, {"rfm": definition}, AS_OF)  # a rerun replaces, no third row
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SCORES.c.model, SCORES.c.as_of, SCORES.c.value, SCORES.c.components)
            .where(SCORES.c.profile_id == ids["b"])
            .order_by(SCORES.c.model, SCORES.c.as_of)
        ).all()
        latest = {s["score"]: s for s in latest_scores(conn, ids["b"])}
    by_model = defaultdict(list)
    for model, as_of, value, components in rows:
        by_model[model].append((as_of, value, components["group"]))
    assert by_model["rfm"] == [(EARLIER, 544.0, "champions"), (AS_OF, 443.0, "loyal")]
    assert by_model["rfm_r"] == [(EARLIER, 5.0, "champions"), (AS_OF, 4.0, "loyal")]
    assert [v for _, v, _ in by_model["rfm_m"]] == [4.0, 3.0]
    assert latest["rfm"]["history"] == 2 and latest["rfm"]["value"] == 443.0
    assert latest["rfm_f"]["components"]["frequency"] == 2


def test_long_score_names_are_refused(rfm, db_url):
    engine, _ = _load(db_url)
    with pytest.raises(ValueError, match="too long"):
        _score(rfm, engine, AS_OF, name="x" * 63)


# -- the rfm_group condition ------------------------------------------------------------


def test_rfm_group_params(rfm):
    from core.plugins import condition_kinds
    from core.segments.language import SegmentError, parse_segment

    kinds = condition_kinds()

    def params(value):
        return parse_segment({"name": "s", "rule": {"rfm_group": value}}, kinds=kinds).rule.params

    assert params("champions") == {"score": "rfm", "group": ["champions"]}
    assert params(["loyal", "champions", "loyal"]) == {
        "score": "rfm",
        "group": ["champions", "loyal"],
    }
    assert params({"score": "rfm90", "group": "at_risk"}) == {
        "score": "rfm90",
        "group": ["at_risk"],
    }
    bad = [
        ("lost", r"unknown rfm group 'lost'; valid groups: about_to_sleep, at_risk, "),
        ({"group": ["champions", "vip"]}, "unknown rfm group 'vip'"),
        ({"score": "rfm"}, "group: required"),
        ({"group": []}, "expected a group or a list of groups"),
        ({"score": "RFM!", "group": "loyal"}, "score: 'RFM!' is not an rfm score name"),
        ({"groups": "loyal"}, r"unknown key\(s\) groups"),
    ]
    for value, message in bad:
        with pytest.raises(SegmentError, match=rf"rule\.rfm_group: {message}"):
            params(value)


SEGMENTS = {
    "champions": {"rfm_group": "champions"},
    "slipping": {"rfm_group": {"score": "rfm", "group": ["at_risk", "hibernating"]}},
    "loyal_or_better": {"rfm_group": ["loyal", "champions"]},
    "not_champions": {"not": {"rfm_group": "champions"}},
    "other_score": {"rfm_group": {"score": "rfm30", "group": "champions"}},
    "big_recent": {
        "all": [{"rfm_group": ["champions", "loyal"]}, {"score": "rfm_m", "op": ">= 4"}]
    },
}


def test_rfm_group_same_members_in_sql_and_python(rfm, db_url):
    from core.plugins import condition_kinds, scoring_models
    from core.scoring import parse_definition, run_scores
    from core.segments.batch import evaluate_sql
    from core.segments.data import load_profile_data
    from core.segments.evaluate import evaluate
    from core.segments.language import parse_segment

    engine, ids = _load(db_url)
    models = scoring_models()
    definitions = {
        "rfm": parse_definition({"name": "rfm", "model": "rfm"}, models=models),
        "rfm30": parse_definition(
            {"name": "rfm30", "model": "rfm", "params": {"window": "30d"}}, models=models
        ),
    }
    run_scores(engine, definitions, EARLIER)
    run_scores(engine, definitions, AS_OF)
    kinds = condition_kinds()
    segments = {n: parse_segment({"name": n, "rule": r}, kinds=kinds) for n, r in SEGMENTS.items()}
    user_of = {pid: user for user, pid in ids.items()}
    seen = {}
    for as_of in (
        datetime(2026, 2, 1, tzinfo=UTC),  # before any run: no scores
        EARLIER,
        datetime(2026, 2, 20, tzinfo=UTC),  # the EARLIER run is the latest
        AS_OF,
        datetime(2027, 1, 1, tzinfo=UTC),
    ):
        with engine.connect() as conn:
            in_sql = evaluate_sql(conn, segments, as_of).members
            data = {pid: load_profile_data(conn, pid, as_of) for pid in ids.values()}
        for name, segment in segments.items():
            in_python = {pid for pid, d in data.items() if evaluate(segment.rule, d, as_of).member}
            assert in_sql[name] == in_python, (name, as_of)
            seen[(name, as_of)] = {user_of[p] for p in in_sql[name]}
    everyone = set(ids)
    assert seen[("champions", datetime(2026, 2, 1, tzinfo=UTC))] == set()
    assert seen[("not_champions", datetime(2026, 2, 1, tzinfo=UTC))] == everyone
    assert seen[("champions", EARLIER)] == {"b"}
    assert seen[("champions", datetime(2026, 2, 20, tzinfo=UTC))] == {"b"}
    assert seen[("champions", AS_OF)] == {"a"}
    assert seen[("not_champions", AS_OF)] == everyone - {"a"}
    assert seen[("slipping", AS_OF)] == {"c", "d"}
    assert seen[("loyal_or_better", AS_OF)] == {"a", "b"}
    assert seen[("big_recent", AS_OF)] == {"a"}  # b is loyal but M = 3
    assert seen[("other_score", AS_OF)] == {"a"}  # 30-day window: a is 555
    assert seen[("champions", datetime(2027, 1, 1, tzinfo=UTC))] == {"a"}


# -- the real Online Retail data -------------------------------------------------------


def _straddle_ok(values: list[float], scores: list[int]) -> None:
    """Cumulative counts hit k/5 of n within half the tie group at the boundary."""
    n = len(values)
    ordered = sorted(values)
    sizes = Counter(values)
    for k in range(1, 5):
        boundary = k * n / 5
        below = sum(1 for s in scores if s <= k)
        # The value at the boundary position; its tie group may go either way.
        at = ordered[min(n - 1, int(boundary))]
        assert abs(below - boundary) <= max(sizes[at], 1) / 2 + 0.5, (k, below, boundary)


@pytest.mark.slow
def test_online_retail(rfm, online_retail):
    path = require_shared("online_retail/online_retail.csv.gz")
    engine = open_db(online_retail[1]())  # imported through the shipped mapping

    # Independent figures from the file: distinct lines (exact repeats are dropped
    # on import), purchases and refunds (C invoices) per customer.
    gross: dict[str, float] = defaultdict(float)
    refunds: dict[str, float] = defaultdict(float)
    invoices: dict[str, set[str]] = defaultdict(set)
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        lines = {tuple(r) for r in reader if r[6]}
    for invoice, _, _, quantity, _, price, customer, _ in lines:
        user = str(int(float(customer)))
        value = abs(int(quantity) * float(price))
        if invoice.startswith("C"):
            refunds[user] += value
        else:
            gross[user] += value
            invoices[user].add(invoice)

    as_of = datetime(2011, 12, 10, tzinfo=UTC)  # after the last invoice
    with engine.connect() as conn:
        values = rfm.score_all(conn, rfm.validate({}), as_of, "rfm")
        user_of = dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.user_id)).all())
        buyers = set(
            conn.execute(
                sa.select(EVENTS.c.profile_id).where(EVENTS.c.type == "purchase").distinct()
            ).scalars()
        )
    scored = values["rfm"]
    assert set(scored) == buyers == {pid for pid, u in user_of.items() if u in gross}
    n = len(scored)
    assert n > 4000
    for suffix in ("_r", "_f", "_m"):
        assert set(values[f"rfm{suffix}"]) == buyers
        assert {v.value for v in values[f"rfm{suffix}"].values()} <= {1.0, 2.0, 3.0, 4.0, 5.0}

    pids = sorted(scored)
    comps = [scored[p].components for p in pids]
    dims = {
        "_r": [-c["recency_days"] for c in comps],
        "_f": [c["frequency"] for c in comps],
        "_m": [c["monetary"] for c in comps],
    }
    for suffix, raw in dims.items():
        scores = [int(values[f"rfm{suffix}"][p].value) for p in pids]
        _straddle_ok(raw, scores)
        # Higher raw value, never a lower score.
        pairs = sorted(zip(raw, scores, strict=True))
        assert all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:], strict=False))
    # Recency and monetary have small tie groups: each quintile holds a fifth,
    # give or take 2%. Frequency is one order for a third of the customers: that
    # tie group is quintile 1 and quintile 2 stays empty (checked above).
    for suffix in ("_r", "_m"):
        counts = Counter(int(values[f"rfm{suffix}"][p].value) for p in pids)
        assert set(counts) == {1, 2, 3, 4, 5}
        assert all(abs(c - n / 5) <= 0.02 * n for c in counts.values()), (suffix, counts)
    counts = Counter(int(values["rfm_f"][p].value) for p in pids)
    assert counts[1] == sum(1 for c in comps if c["frequency"] == 1) > n / 5
    assert 2 not in counts

    with_refunds = 0
    for pid, c in zip(pids, comps, strict=True):
        user = user_of[pid]
        assert c["frequency"] == len(invoices[user])
        assert c["monetary"] == pytest.approx(gross[user] - refunds[user], abs=0.011)
        assert c["group"] == rfm.group_of(
            int(values["rfm_r"][pid].value), int(values["rfm_f"][pid].value)
        )
        if refunds[user] > 0.01:
            with_refunds += 1
            assert c["monetary"] < gross[user]
    assert with_refunds > 1000  # refunds are common and all of them reduce monetary
