"""Explicit boundary cases, each checked in Python and in SQL (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.db import models, open_db
from core.ingestion import ingest
from core.segments.batch import evaluate_sql
from core.segments.data import load_profile_data
from core.segments.evaluate import evaluate
from core.segments.kinds import ConditionKinds
from core.segments.language import parse_segment

AS_OF = datetime(2026, 6, 1, 12, tzinfo=UTC)


def at(delta: timedelta) -> str:
    return (AS_OF - delta).isoformat()


def answer(engine, rule, as_of=AS_OF) -> tuple[set[str], set[str]]:
    """Members (by user id) according to SQL and to Python."""
    segment = parse_segment({"name": "s", "rule": rule}, kinds=ConditionKinds())
    profiles = models.Profile.__table__
    with engine.connect() as conn:
        who = dict(conn.execute(sa.select(profiles.c.id, profiles.c.user_id)).all())
        in_sql = {who[p] for p in evaluate_sql(conn, {"s": segment}, as_of).members["s"]}
        in_python = {
            user
            for pid, user in who.items()
            if evaluate(segment.rule, load_profile_data(conn, pid, as_of), as_of).member
        }
    return in_sql, in_python


@pytest.fixture
def engine(db_url):
    engine = open_db(db_url)
    ingest(
        engine,
        [
            # edge: exactly 24h before as_of, i.e. on the open end of (as_of - 24h, as_of]
            {"type": "add_to_cart", "user_id": "edge", "ts": at(timedelta(hours=24))},
            {
                "type": "add_to_cart",
                "user_id": "inside",
                "ts": at(timedelta(hours=23, minutes=59, seconds=59)),
            },
            {"type": "add_to_cart", "user_id": "now", "ts": at(timedelta(0))},
            {"type": "add_to_cart", "user_id": "future", "ts": at(timedelta(seconds=-1))},
            {"type": "page_view", "user_id": "nothing", "ts": at(timedelta(days=400))},
            {
                "type": "purchase",
                "user_id": "nulls",
                "ts": at(timedelta(hours=1)),
                "properties": {"price": None, "tag": "x"},
            },
            {
                "type": "purchase",
                "user_id": "text5",
                "ts": at(timedelta(hours=1)),
                "properties": {"price": "5"},
            },
            {
                "type": "purchase",
                "user_id": "num5",
                "ts": at(timedelta(hours=1)),
                "properties": {"price": 5},
            },
        ],
    )
    return engine


def test_window_is_open_at_the_start_and_closed_at_as_of(engine):
    sql, py = answer(engine, {"event": "add_to_cart", "within": "24h"})
    assert sql == py == {"inside", "now"}


def test_events_after_as_of_are_invisible(engine):
    sql, py = answer(engine, {"event": "add_to_cart"})
    assert sql == py == {"edge", "inside", "now"}


def test_count_zero_holds_for_people_with_no_events_at_all(engine):
    sql, py = answer(engine, {"event": "add_to_cart", "count": "== 0"})
    assert sql == py == {"future", "nothing", "nulls", "text5", "num5"}


def test_missing_and_null_values_never_match_even_with_not_equal(engine):
    sql, py = answer(engine, {"event": "purchase", "where": {"price": {"!=": 7}}})
    assert sql == py == {"num5"}
    sql, py = answer(engine, {"event": "purchase", "where": {"tag": {"not_in": ["y"]}}})
    assert sql == py == {"nulls"}


def test_values_match_only_their_own_type(engine):
    assert answer(engine, {"event": "purchase", "where": {"price": 5}}) == ({"num5"}, {"num5"})
    assert answer(engine, {"event": "purchase", "where": {"price": "5"}}) == ({"text5"}, {"text5"})


def test_sum_of_nothing_is_zero_but_min_of_nothing_never_matches(engine):
    sql, py = answer(engine, {"event": "purchase", "sum": {"property": "price", "op": "== 0"}})
    # Like count == 0, a zero sum holds without purchases, or without numeric prices.
    assert sql == py == {"edge", "inside", "now", "future", "nothing", "nulls", "text5"}
    sql, py = answer(engine, {"event": "purchase", "min": {"property": "price", "op": "<= 100"}})
    assert sql == py == {"num5"}


def test_last_older_than_boundary(engine):
    sql, py = answer(engine, {"last": {"event": "add_to_cart", "older_than": "24h"}})
    assert sql == py == {"edge"}  # exactly 24h old counts as older_than 24h
    sql, py = answer(engine, {"last": {"event": "add_to_cart", "newer_than": "24h"}})
    assert sql == py == {"inside", "now"}


def test_sequence_window_edges(engine):
    rule = {
        "sequence": {
            "first": "add_to_cart",
            "then_not": "purchase",
            "within": "24h",
            "lookback": "48h",
        }
    }
    sql, py = answer(engine, rule)
    assert sql == py == {"edge"}  # added exactly 24h ago: abandoned; later adds: not yet
