"""The example visitor segments (examples/segments/visitors.yaml): their segment tests
hold in both evaluators, and the demo store gives each a size that says something."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from core import condition_kinds, ingest, load_segment_files, parse_duration, run_segments
from core.db import models, open_db
from core.segments.testing import run_tests
from flows.config import EXAMPLE_SEGMENTS

VISITORS = ("recent_visitors", "frequent_visitors", "engaged_browsers")
AS_OF = datetime(2026, 5, 1, 12, tzinfo=UTC)
KINDS = condition_kinds()


def example_segments():
    return load_segment_files(EXAMPLE_SEGMENTS, KINDS)


def members(engine, name: str) -> set[str]:
    profiles, segments = models.Profile.__table__, models.SegmentDefinition.__table__
    memberships = models.Membership.__table__
    query = (
        sa.select(profiles.c.user_id)
        .join(memberships, memberships.c.profile_id == profiles.c.id)
        .join(segments, segments.c.id == memberships.c.segment_id)
        .where(segments.c.name == name)
    )
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def test_each_visitor_segment_has_passing_tests_both_ways():
    outcomes = [o for o in run_tests(example_segments(), AS_OF) if o.segment in VISITORS]
    assert all(o.passed for o in outcomes), [o for o in outcomes if not o.passed]
    for name in VISITORS:
        expected = {o.expected for o in outcomes if o.segment == name}
        assert expected == {"in", "out"}, name


def test_segment_tests_give_the_same_answer_through_the_sql_compiler(db_url):
    """Each test profile stored as a person of its own, then a full (SQL) run."""
    segments = example_segments()
    expected: dict[str, dict[str, str]] = {}
    events = []
    for name in VISITORS:
        for i, test in enumerate(segments[name].segment.tests):
            user = f"{name}-{i}"
            expected.setdefault(name, {})[user] = test.expect
            for j, raw in enumerate(test.events):
                fields = {k: v for k, v in raw.items() if k != "ago"}
                ts = AS_OF - parse_duration(raw["ago"])
                events.append(
                    {**fields, "user_id": user, "ts": ts.isoformat(), "message_id": f"{user}-{j}"}
                )
    engine = open_db(db_url)
    report = ingest(engine, events)
    assert report.ok, report.rejected
    definitions = {name: segments[name] for name in VISITORS}
    run_segments(engine, AS_OF, kinds=KINDS, definitions=definitions, full=True)
    for name in VISITORS:
        want = {user for user, expect in expected[name].items() if expect == "in"}
        # The other segments' test people are in the store too: judge only this one's.
        assert members(engine, name) & set(expected[name]) == want, name


@pytest.mark.slow
def test_demo_store_gives_each_visitor_segment_a_telling_size(demo_store):
    engine, _settings, summary = demo_store
    for name in VISITORS:
        assert 0 < summary["segments"][name] < summary["profiles"], (name, summary["segments"])
    # Two product views in a week are site activity in that week.
    assert members(engine, "engaged_browsers") <= members(engine, "recent_visitors")
