"""Identity resolution does not depend on how events are batched."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import open_db
from core.events import ingest
from tests.helpers import count, events_by_profile, live_profiles

USERS = ["u1", "u2", "u3"]
ANONS = ["a1", "a2", "a3", "a4"]
EMAILS = ["e1@x.io", "e2@x.io"]


@st.composite
def event_streams(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    events = []
    for i in range(n):
        ids = {}
        while not ids:
            if draw(st.booleans()):
                ids["user_id"] = draw(st.sampled_from(USERS))
            if draw(st.booleans()):
                ids["anonymous_id"] = draw(st.sampled_from(ANONS))
            if draw(st.integers(0, 3)) == 0:
                ids["email"] = draw(st.sampled_from(EMAILS))
        kind = draw(st.sampled_from(["page_view", "identify", "purchase"]))
        event = {"type": kind, "ts": f"2026-01-01T00:00:{i:02d}Z", "message_id": f"m{i}", **ids}
        if kind == "identify":
            event["traits"] = {"step": i}
        events.append(event)
    return events


def partition(engine) -> set[frozenset[str]]:
    return {frozenset(ids) for ids in events_by_profile(engine).values()}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=event_streams(), split=st.integers(min_value=1, max_value=7))
def test_batch_size_never_changes_who_did_what(fresh_sqlite, events, split):
    one, many = open_db(fresh_sqlite()), open_db(fresh_sqlite())
    ingest(one, events, batch_size=len(events))
    ingest(many, events, batch_size=split)

    assert count(one) == count(many) == len(events)  # no event lost or doubled
    assert partition(one) == partition(many)
    # Each user id is on exactly one live profile, and it is the same one either way.
    for engine in (one, many):
        users = [p["user_id"] for p in live_profiles(engine) if p["user_id"]]
        assert sorted(users) == sorted(set(users))
    owners_one = {p["user_id"]: p["attributes"] for p in live_profiles(one) if p["user_id"]}
    owners_many = {p["user_id"]: p["attributes"] for p in live_profiles(many) if p["user_id"]}
    assert owners_one == owners_many
