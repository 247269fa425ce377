"""Identity resolution does not depend on how events are batched."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import open_db
from core.ingestion import ingest
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
            if draw(st.integers(0, 2)) == 0:
                event["traits"]["email"] = draw(st.sampled_from(EMAILS))
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
    assert profile_states(one) == profile_states(many)


def profile_states(engine) -> dict[frozenset[str], tuple]:
    """Each live profile's user id, attributes and email, keyed by its events."""
    events = events_by_profile(engine)
    return {
        frozenset(events.get(p["id"], ())): (p["user_id"], p["attributes"], p["email"])
        for p in live_profiles(engine)
    }


class _Forgetful(dict):
    """A memo that never remembers: every call resolves from scratch."""

    def __setitem__(self, key, value) -> None:
        return None


def _decide(events, memo: bool) -> tuple:
    from core.ingestion.identity import BatchResolver
    from core.ingestion.schema import trait_email

    resolver = BatchResolver(conn=None)  # decisions only; nothing is applied
    if not memo:
        resolver._known = _Forgetful()
    handles = []
    for e in events:
        who = (e.get("user_id"), e.get("anonymous_id"), e.get("email"))
        if e["type"] == "identify":
            traits = e["traits"]
            handles.append(resolver.resolve(*who, traits, trait_email(traits)))
        else:
            handles.append(resolver.resolve(*who))
    roots = [resolver.find(h) for h in handles]
    live = set(roots) | {resolver.find(h) for h in resolver.user_of}
    return (
        roots,
        {h: (resolver.user_of[h], resolver.email_of[h], resolver.attrs[h]) for h in live},
        {k: resolver.find(h) for k, h in resolver.new_identities.items()},
        resolver.merges,
        resolver.promoted,
        {resolver.find(h) for h in resolver.touched},
    )


@settings(max_examples=400, deadline=None)
@given(events=event_streams())
def test_reusing_the_answer_for_repeated_ids_changes_no_decision(events):
    # Repeats are what the memo is for: play every stream twice over.
    stream = events + [dict(e, type="page_view", traits=None) for e in events]
    stream = [{k: v for k, v in e.items() if v is not None} for e in stream]
    assert _decide(stream, memo=True) == _decide(stream, memo=False)
