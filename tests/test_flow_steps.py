"""The segment, scores, automate, send and pipeline flows, run for real on the
session's Prefect server against SQLite and PostgreSQL: what they store is what
the library computes, and their results name the counts.

The store is the demo shop's generator, small: 150 people over two months.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from core.db import make_engine
from core.db.tables import CHANGES, MEMBERSHIPS, PROFILES, SCORES, SEGMENTS
from core.ingestion import ingest
from core.plugins import condition_kinds, scoring_models
from core.scoring import load_score_files
from core.segments.batch import evaluate_sql
from core.segments.store import segments_by_name, stored_segments
from flows.config import EXAMPLE_SCORES, EXAMPLE_SEGMENTS
from tests.helpers import DEMO_END, DEMO_PEOPLE

END, PEOPLE = DEMO_END, DEMO_PEOPLE


def stored_members(url: str) -> dict[str, set[int]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        names = dict(conn.execute(sa.select(SEGMENTS.c.id, SEGMENTS.c.name)).all())
        rows = conn.execute(sa.select(MEMBERSHIPS.c.segment_id, MEMBERSHIPS.c.profile_id)).all()
    engine.dispose()
    found: dict[str, set[int]] = {name: set() for name in names.values()}
    for sid, pid in rows:
        found[names[sid]].add(pid)
    return found


def evaluated_members(url: str, as_of: datetime) -> dict[str, set[int]]:
    """Every saved segment evaluated afresh for everyone as of ``as_of`` (nothing saved)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        saved = segments_by_name(stored_segments(conn, condition_kinds()))
        members = evaluate_sql(conn, saved, as_of, None).members
    engine.dispose()
    return {name: set(members[name]) for name in saved}


def profile_id(url: str, user_id: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.execute(sa.select(PROFILES.c.id).where(PROFILES.c.user_id == user_id))
        pid = found.scalar_one()
    engine.dispose()
    return pid


def changes(url: str) -> dict[tuple[str, str], int]:
    """(segment, entered|exited) -> changes recorded."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SEGMENTS.c.name, CHANGES.c.change, sa.func.count())
            .join(SEGMENTS, SEGMENTS.c.id == CHANGES.c.segment_id)
            .group_by(SEGMENTS.c.name, CHANGES.c.change)
        ).all()
    engine.dispose()
    return {(name, change): n for name, change, n in rows}


def test_segment_flow_incremental_full_and_after_a_definition_change(
    prefect_server, shop, tmp_path
):
    # Scores first, as the pipeline runs them: some example segments read them.
    from flows.scores import scores
    from flows.segment import segment

    scores(str(EXAMPLE_SCORES), database_url=shop, as_of=END)

    first = segment(str(EXAMPLE_SEGMENTS), database_url=shop, as_of=END)
    assert first["full"] is True  # the first run
    assert first["as_of"] == END.isoformat()
    members = stored_members(shop)
    assert members == evaluated_members(shop, END)
    assert sum(map(len, members.values())) > 20
    assert first["segments"] == {
        name: {"size": len(ids), "entered": len(ids), "exited": 0} for name, ids in members.items()
    }

    # New events for one person: the next run evaluates only who changed.
    later = END + timedelta(hours=6)
    who = {"user_id": "flow-tester", "ts": later.isoformat()}
    views = [{"type": "product_view", "product_id": p, **who} for p in ("T1", "T2", "T3")]
    ingest(make_engine(shop), [*views, {"type": "add_to_cart", "product_id": "T1", **who}])
    second = segment(str(EXAMPLE_SEGMENTS), database_url=shop, as_of=later + timedelta(minutes=1))
    assert second["full"] is False
    assert 1 <= second["evaluated"] < PEOPLE
    assert stored_members(shop) == evaluated_members(shop, later + timedelta(minutes=1))
    assert profile_id(shop, "flow-tester") in stored_members(shop)["high_intent"]
    assert second["segments"]["high_intent"]["entered"] >= 1

    # A changed definition, nothing new: still incremental, yet the changed
    # segment is evaluated for everyone.
    edited = tmp_path / "segments"
    shutil.copytree(EXAMPLE_SEGMENTS, edited)
    buyers = edited / "buyers.yaml"
    buyers.write_text(buyers.read_text().replace('count: ">= 2"', 'count: ">= 1"'))
    before = stored_members(shop)
    third = segment(str(edited), database_url=shop, as_of=later + timedelta(minutes=1))
    assert third["full"] is False and third["evaluated"] == 0
    after = stored_members(shop)
    assert after == evaluated_members(shop, later + timedelta(minutes=1))
    gained = after["repeat_buyers"] - before["repeat_buyers"]
    assert gained and third["segments"]["repeat_buyers"]["entered"] == len(gained)

    # full: everyone, for every segment.
    fourth = segment(str(edited), database_url=shop, as_of=later + timedelta(minutes=2), full=True)
    assert fourth["full"] is True and fourth["evaluated"] >= PEOPLE
    assert stored_members(shop) == evaluated_members(shop, later + timedelta(minutes=2))

    # What the results counted is what was recorded.
    recorded = changes(shop)
    for name in after:
        entered = sum(r["segments"][name]["entered"] for r in (first, second, third, fourth))
        exited = sum(r["segments"][name]["exited"] for r in (first, second, third, fourth))
        assert recorded.get((name, "entered"), 0) == entered, name
        assert recorded.get((name, "exited"), 0) == exited, name


def test_segment_flow_with_stored_definitions_and_bad_ones(prefect_server, sqlite_url, tmp_path):
    """Errors in what the flow is given; the same on either backend."""
    from flows.segment import segment

    shop = sqlite_url

    # None: the stored definitions; there are none yet.
    state = segment(None, database_url=shop, as_of=END, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no segments defined"):
        state.result()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\nrule: {event: purchase, within: forever}\n")
    with pytest.raises(Exception, match=r"x\.yaml"):
        segment(str(bad), database_url=shop, as_of=END)
    with pytest.raises(Exception, match="no such directory"):
        segment(str(tmp_path / "missing"), database_url=shop, as_of=END)


def test_scores_flow_stores_what_the_models_compute(prefect_server, shop):
    from flows.scores import scores

    result = scores(str(EXAMPLE_SCORES), database_url=shop, as_of=END)

    definitions = load_score_files(EXAMPLE_SCORES, scoring_models())
    engine = make_engine(shop)
    with engine.connect() as conn:
        expected = {}
        for name, d in definitions.items():
            for model, values in d.model.score_all(conn, d.params, END, name).items():
                expected[model] = {pid: round(float(v.value), 6) for pid, v in values.items()}
        rows = conn.execute(sa.select(SCORES.c.model, SCORES.c.profile_id, SCORES.c.value)).all()
    engine.dispose()
    stored: dict[str, dict[int, float]] = {}
    for model, pid, value in rows:
        stored.setdefault(model, {})[pid] = round(value, 6)

    assert stored == expected
    assert result == {
        "as_of": END.isoformat(),
        "scored": {model: len(values) for model, values in expected.items()},
    }
    assert min(result["scored"].values()) > 0
