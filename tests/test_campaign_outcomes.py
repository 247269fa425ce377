"""Stored campaign outcomes (core.monitoring.outcomes): aggregated from the stored
rows, results equal the from-events computation, on a first refresh, after late
events and a bounce (only the people they touch recomputed), with filters, and
after a refresh killed half-way."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import CAMPAIGN_OUTCOMES, MESSAGES
from core.ingestion import ingest
from core.monitoring.campaigns import UnknownCampaign, campaign_results
from core.monitoring.outcomes import (
    assignment_overview,
    current_results,
    refresh_outcomes,
    stored_results,
)
from tests.conftest import PROJECT_ROOT
from tests.test_campaigns import NOW, OFFER

T0 = datetime(2026, 5, 1, tzinfo=UTC)
WINDOW = timedelta(days=14)


def imported(n: int = 60) -> list[dict]:
    """A 3-arm imported campaign: buyers with several purchases of uneven values
    (the per-person sums and the bootstrap see many distinct values)."""
    events = []
    for i in range(n):
        arm = ("a", "b", "none")[i % 3]
        props = {"arm": arm, "holdout": arm == "none", "segment": "loyal" if i < 40 else "new"}
        at = T0 + timedelta(hours=i)
        events.append({"type": "campaign_assigned", "user_id": f"u{i}", "campaign": "spring",
                       "ts": at.isoformat(), "properties": props})  # fmt: skip
        if i % 4 == 0:
            events.append({"type": "page_view", "user_id": f"u{i}", "url": "/",
                           "ts": (at + timedelta(days=1)).isoformat()})  # fmt: skip
        for k in range(i % 5 if i % 2 == 0 else 0):
            value = 0.1 * (i + 7 * k) + 1 / 3
            events.append({"type": "purchase", "user_id": f"u{i}", "value": value,
                           "ts": (at + timedelta(days=2, minutes=k)).isoformat()})  # fmt: skip
    return events


def workflow_split(engine, tmp_path) -> dict[int, str]:
    from core.automation import perform_pending
    from core.automation.engine import enter
    from core.types import Entry
    from tests.helpers import people
    from tests.test_automation import save, settings_for

    save(engine, OFFER)
    ids = people(engine, 40)
    enter(engine, {"offer": [Entry(pid, NOW) for pid in ids]}, as_of=NOW)
    perform_pending(engine, settings_for(tmp_path), as_of=NOW)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(MESSAGES.c.profile_id, MESSAGES.c.idempotency_key))
        return {pid: key for pid, key in rows}


def assert_same(engine, **filters) -> None:
    """Stored-then-aggregated results equal the from-events ones, exactly."""
    stored = stored_results(engine, window=WINDOW, **filters)
    fresh = campaign_results(engine, window=WINDOW, **filters)
    assert stored is not None and fresh
    assert [r.as_dict() for r in stored.results] == [r.as_dict() for r in fresh]


def test_stored_outcomes_equal_the_computation_and_follow_late_events(db_url, tmp_path):
    engine = open_db(db_url)
    assert stored_results(engine, window=WINDOW) is None  # never refreshed
    assert not ingest(engine, imported()).rejected
    sent = workflow_split(engine, tmp_path)
    first = refresh_outcomes(engine, WINDOW)
    assert (first.participants, first.recomputed, first.dropped) == (100, 100, 0)
    assert_same(engine)
    assert_same(engine, segment="loyal")
    assert_same(engine, campaign="spring", since=T0 + timedelta(hours=20))
    overview = assignment_overview(engine, WINDOW)
    assert (overview.campaigns, overview.people, overview.workflows) == (2, 100, ["offer"])
    assert overview.segments == ["buyers", "loyal", "new"]
    assert overview.first == T0 and overview.last > T0

    # Nothing changed: nothing is recomputed, and the note says so.
    again = refresh_outcomes(engine, WINDOW)
    assert again.recomputed == 0
    assert "no events stored since" in stored_results(engine, window=WINDOW).freshness.note

    # A late purchase inside u1's window (an arm b person without one), a late
    # open of one workflow email, a purchase after u3's window, and a bounce.
    late_open_pid, key = next(iter(sent.items()))
    with engine.connect() as conn:
        user = conn.execute(
            sa.text("select user_id from profiles where id = :p"), {"p": late_open_pid}
        ).scalar_one()
    assert not ingest(engine, [
        {"type": "purchase", "user_id": "u1", "value": 42.25,
         "ts": (T0 + timedelta(hours=1, days=3)).isoformat()},
        {"type": "purchase", "user_id": "u3", "value": 9.0,
         "ts": (T0 + timedelta(hours=3, days=20)).isoformat()},
        {"type": "email_open", "user_id": user, "campaign": "offer",
         "ts": (NOW + timedelta(hours=2)).isoformat(), "properties": {"message": key}},
    ]).rejected  # fmt: skip
    bounced = next(p for p in sorted(sent) if p != late_open_pid)
    with engine.begin() as conn:
        conn.execute(
            MESSAGES.update()
            .where(MESSAGES.c.profile_id == bounced)
            .values(status="bounced", updated_at=datetime.now(UTC))
        )
    note = stored_results(engine, window=WINDOW).freshness.note
    assert "3 events stored since" in note
    before = {r.campaign: r.as_dict() for r in stored_results(engine, window=WINDOW).results}
    late = refresh_outcomes(engine, WINDOW)
    assert late.recomputed == 4  # u1, u3, the opener and the bounced one
    assert_same(engine)
    after = {r.campaign: r.as_dict() for r in stored_results(engine, window=WINDOW).results}
    b_before = next(a for a in before["spring"]["arms"] if a["arm"] == "b")
    b_after = next(a for a in after["spring"]["arms"] if a["arm"] == "b")
    assert b_after["converted"] == b_before["converted"] + 1
    assert b_after["revenue"] == pytest.approx(b_before["revenue"] + 42.25)

    with pytest.raises(UnknownCampaign, match="known: offer, spring"):
        stored_results(engine, window=WINDOW, campaign="autumn")
    # Another window is stored beside, from a first refresh of its own.
    assert current_results(engine, window=timedelta(days=1))[0].window == timedelta(days=1)
    assert stored_results(engine, window=WINDOW).results[0].window == WINDOW


def test_a_refresh_killed_half_way_leaves_the_last_one_and_a_rerun_completes(
    fresh_sqlite, tmp_path
):
    url = fresh_sqlite()
    engine = open_db(url)
    assert not ingest(engine, imported(30)).rejected
    refresh_outcomes(engine, WINDOW)
    assert not ingest(engine, [
        {"type": "campaign_assigned", "user_id": "late", "campaign": "summer",
         "ts": T0.isoformat(), "properties": {"arm": "x"}},
    ]).rejected  # fmt: skip
    before = [r.as_dict() for r in stored_results(engine, window=WINDOW).results]
    env = {**os.environ, "SEGFLOW_TEST_CRASH_AT": "campaigns.outcomes_batch"}
    cmd = [sys.executable, "-m", "core.cli", "--db", url, "campaigns", "refresh"]
    killed = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert [r.as_dict() for r in stored_results(engine, window=WINDOW).results] == before
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 recomputed" in done.stdout  # the new participant only
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(CAMPAIGN_OUTCOMES)).scalar() == 31
        )
    assert_same(engine)
