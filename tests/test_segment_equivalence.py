"""SQL (SQLite, PostgreSQL) and Python evaluators give the same answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import models, open_db
from core.ingestion import ingest
from core.maintenance import delete_all_data
from core.segments.batch import evaluate_sql
from core.segments.data import load_profile_data
from core.segments.evaluate import evaluate
from core.segments.kinds import ConditionKinds
from core.segments.language import parse_segment
from core.segments.sql import PLANS
from tests.helpers import live_profiles

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KINDS = ConditionKinds()  # the built-in kinds
# Offsets before as_of, bunched around the window edges the rules use.
OFFSETS = [
    timedelta(0),
    timedelta(seconds=1),
    timedelta(minutes=59, seconds=59),
    timedelta(hours=1),
    timedelta(hours=1, seconds=1),
    timedelta(hours=23, minutes=59, seconds=59),
    timedelta(hours=24),
    timedelta(hours=24, seconds=1),
    timedelta(hours=48),
    timedelta(days=3),
    timedelta(hours=-1),  # after as_of: never seen
]
# Exactly on an edge is where off-by-one mistakes live: weight those up.
EDGES = [timedelta(hours=1), timedelta(hours=24), timedelta(hours=48)]
offsets = st.one_of(st.sampled_from(EDGES), st.sampled_from(OFFSETS))
TYPES = ["view", "cart", "buy"]
USERS = ["u1", "u2", "u3"]

prop_values = st.one_of(
    st.none(), st.integers(-2, 9), st.sampled_from(["5", "a", "b", True, False, 2.5])
)


@st.composite
def events(draw):
    out = []
    for i in range(draw(st.integers(0, 14))):
        props = {}
        for key in ("price", "cat"):
            value = draw(prop_values)
            if value is not None or draw(st.booleans()):
                props[key] = value
        event = {
            "type": draw(st.sampled_from(TYPES)),
            "user_id": draw(st.sampled_from(USERS)),
            "ts": (AS_OF - draw(offsets)).isoformat(),
            "session_id": draw(st.sampled_from(["s1", "s2", None])),
            "product_id": draw(st.sampled_from(["P1", "P2", "X9", None])),
            "value": draw(st.sampled_from([None, 0.0, 5.0, 12.5])),
            "url": draw(st.sampled_from(["/p/x", "/cart", None])),
            "properties": props,
            "message_id": f"m{i}",
        }
        out.append({k: v for k, v in event.items() if v is not None})
    for user in USERS[:3]:
        traits = {}
        tier = draw(st.sampled_from(["gold", "silver", None, 3]))
        if tier is not None:
            traits["tier"] = tier
        age = draw(st.sampled_from([None, 25, 40]))
        if age is not None:
            traits["age"] = age
        out.append(
            {"type": "identify", "user_id": user, "traits": traits, "ts": "2026-01-01T00:00:00Z"}
        )
    return out


durations = st.sampled_from([None, "1h", "24h", "48h"])
counts = st.sampled_from([">= 1", ">= 2", "== 0", "< 2", "!= 1", "> 0"])
wheres = st.sampled_from(
    [
        {},
        {"cat": "a"},
        {"price": {">": 3}},
        {"price": {"<=": 2}},
        {"cat": {"in": ["a", "b"]}},
        {"cat": {"not_in": ["a"]}},
        {"cat": {"!=": "a"}},
        {"price": 5},
        {"price": "5"},
        {"price": True},
        {"product_id": {"starts_with": "P"}},
        {"url": {"contains": "ar"}},
        {"value": {">=": 5}},
    ]
)


@st.composite
def event_conditions(draw):
    cond = {"event": draw(st.sampled_from([TYPES[0], TYPES[1], TYPES[2], ["view", "cart"]]))}
    within = draw(durations)
    if within:
        cond["within"] = within
    measure = draw(st.sampled_from(["count", "count", "sum", "min", "max", "avg", "distinct"]))
    op = draw(st.sampled_from([">= 1", "> 4", "<= 5", "== 0", ">= 2"]))
    if measure == "count":
        cond["count"] = draw(counts)
    else:
        prop = draw(st.sampled_from(["price", "value", "cat", "product_id"]))
        cond[measure] = {"property": prop, "op": op}
    where = draw(wheres)
    if where:
        cond["where"] = where
    if draw(st.integers(0, 4)) == 0:
        cond["per"] = "session"
    return cond


@st.composite
def time_conditions(draw):
    spec = {"event": draw(st.sampled_from(TYPES))}
    if (d := draw(durations)) is not None:
        spec["older_than"] = d
    if (d := draw(durations)) is not None:
        spec["newer_than"] = d
    if draw(st.booleans()):
        spec["where"] = draw(wheres)
    return {draw(st.sampled_from(["last", "first"])): spec}


sequence_conditions = st.builds(
    lambda first, then, within, lookback: {
        "sequence": {"first": first, "then_not": then, "within": within, "lookback": lookback}
    },
    st.sampled_from(TYPES),
    st.sampled_from(TYPES),
    st.sampled_from(["1h"]),
    st.sampled_from(["24h", "48h"]),
)
attribute_conditions = st.sampled_from(
    [
        {"attribute": "tier", "op": "==", "value": "gold"},
        {"attribute": "tier", "op": "!=", "value": "gold"},
        {"attribute": "tier", "op": "exists"},
        {"attribute": "tier", "op": "not_exists"},
        {"attribute": "age", "op": ">", "value": 30},
        {"attribute": "tier", "op": "in", "value": ["gold", "silver"]},
    ]
)
profile_conditions = st.sampled_from(
    [
        {"consent": "email"},
        {"score": "engagement", "op": "> 50"},
        {"score": "engagement", "op": "<= 50"},
        {"segment": "base"},
    ]
)
leaves = st.one_of(
    event_conditions(),
    time_conditions(),
    sequence_conditions,
    attribute_conditions,
    profile_conditions,
)
base_rules = st.one_of(event_conditions(), time_conditions(), attribute_conditions)
rules = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=5,
)


@st.composite
def profile_facts(draw):
    """Consents and scores per user: (user, granted) and (user, value, hours before as_of)."""
    consents = [(u, draw(st.booleans())) for u in USERS if draw(st.booleans())]
    scores = [
        (u, draw(st.sampled_from([10.0, 50.0, 90.0])), draw(st.sampled_from([-2, 0, 5])))
        for u in USERS
        for _ in range(draw(st.integers(0, 2)))
    ]
    return consents, scores


def store_facts(engine, facts) -> None:
    consents, scores = facts
    profiles = models.Profile.__table__
    with engine.begin() as conn:
        ids = dict(conn.execute(sa.select(profiles.c.user_id, profiles.c.id)).all())
        for user, granted in consents:
            if user in ids:
                conn.execute(
                    models.Consent.__table__.insert().values(
                        profile_id=ids[user], purpose="email_marketing", granted=granted
                    )
                )
        for user, value, hours in scores:
            if user in ids:
                conn.execute(
                    models.Score.__table__.insert().values(
                        profile_id=ids[user],
                        model="engagement",
                        value=value,
                        as_of=AS_OF - timedelta(hours=hours),
                    )
                )


def check_same(engine, records, rule, base=None, facts=((), ())):
    delete_all_data(engine)
    ingest(engine, records)
    store_facts(engine, facts)
    base = parse_segment({"name": "base", "rule": base or {"event": "view"}}, kinds=KINDS)
    segment = parse_segment({"name": "s", "rule": rule}, kinds=KINDS)
    with engine.connect() as conn:
        batch = evaluate_sql(conn, {"s": segment, "base": base}, AS_OF)
        # Every plan the compiler can choose, for everyone and for candidates
        # looked up by profile, gives the default plan's answer.
        ids = [p["id"] for p in live_profiles(engine)]
        for plan in PLANS:
            for kwargs in ({}, {"profile_ids": ids, "lookup": True}):
                other = evaluate_sql(conn, {"s": segment, "base": base}, AS_OF, plan=plan, **kwargs)
                assert (other.members, other.next_change_at) == (
                    batch.members,
                    batch.next_change_at,
                ), (plan, kwargs, rule)
        python_members, python_next = set(), {}
        for profile in live_profiles(engine):
            data = load_profile_data(conn, profile["id"], AS_OF)
            data.segments["base"] = evaluate(base.rule, data, AS_OF).member
            outcome = evaluate(segment.rule, data, AS_OF)
            if outcome.member:
                python_members.add(profile["id"])
            base_next = evaluate(base.rule, data, AS_OF).next_change_at
            times = [t for t in (outcome.next_change_at, base_next) if t is not None]
            if times:
                python_next[profile["id"]] = min(times)
    assert batch.members["s"] == python_members, rule
    assert batch.next_change_at == python_next, rule


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(records=events(), rule=rules, base=base_rules, facts=profile_facts())
def test_sqlite_and_python_agree(fresh_sqlite, records, rule, base, facts):
    check_same(open_db(fresh_sqlite()), records, rule, base, facts)


@pytest.fixture(scope="module")
def pg_engine(pg_server):
    pg_server.create_database("equivalence")
    return open_db(pg_server.url("equivalence"))


@pytest.mark.postgres
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=events(), rule=rules, base=base_rules, facts=profile_facts())
def test_postgresql_and_python_agree(pg_engine, records, rule, base, facts):
    check_same(pg_engine, records, rule, base, facts)
