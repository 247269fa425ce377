"""Retention (core.privacy.purge, ``segflow privacy purge``), on SQLite and PostgreSQL.

- events older than their type's period go, the rest stay (``forever`` and
  types without a period too); a dry run counts the same and deletes nothing;
- a person whose purged events held them in a segment leaves it at the next
  incremental ``segments run``; one whose answer does not change stays;
- the purge's audit record names the actor, the cutoffs and the counts, and
  no one's identifiers;
- killed with SIGKILL between two chunks and run again, it ends as an
  uninterrupted purge did, and the second report counts only the rest.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from core.audit import current_actor
from core.db import open_db
from core.db.tables import AUDIT, EVENTS
from core.ingestion import ingest
from core.plugins import condition_kinds
from core.privacy.purge import PURGE_ACTION, purge_events
from core.privacy.settings import PrivacySettings
from core.segments.store import load_segment_files, members, run_segments
from tests.helpers import segflow_child

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
TOML = """
[privacy.retention]
page_view = "90d"
add_to_cart = "forever"
default = "1y"
"""
RETENTION = PrivacySettings.model_validate(
    {"retention": {"page_view": "90d", "add_to_cart": "forever", "default": "1y"}}
).retention
SEGMENT = """
name: regular
rule: {event: page_view, within: 365d, count: ">= 5"}
"""
# user id -> (days ago of each page view); 90d retention drops the older ones.
VIEWS = {
    "keen": [5, 40, 100, 150, 200, 300],  # 6 in a year, 2 kept: leaves
    "steady": [1, 2, 3, 4, 5, 200],  # 6 in a year, 5 kept: stays
    "casual": [10, 120],  # never a member
}


def _events() -> list[dict]:
    events = [
        {"type": "identify", "user_id": who, "traits": {"email": f"{who}@example.com"},
         "ts": (NOW - timedelta(days=400)).isoformat()}
        for who in VIEWS
    ]  # fmt: skip
    for who, days in VIEWS.items():
        events += [
            {"type": "page_view", "user_id": who, "ts": (NOW - timedelta(days=d)).isoformat(),
             "properties": {"n": i}}
            for i, d in enumerate(days)
        ]  # fmt: skip
    events += [
        {"type": "purchase", "user_id": "keen", "ts": (NOW - timedelta(days=d)).isoformat(),
         "value": 10.0}
        for d in (30, 500)
    ]  # fmt: skip
    events.append(
        {"type": "add_to_cart", "user_id": "casual", "product_id": "p1",
         "ts": (NOW - timedelta(days=700)).isoformat()}
    )  # fmt: skip
    return events


# Per type, what the retention above deletes: the identify calls (400 days,
# default 1y), 6 page views over 90 days, 1 purchase; the old cart add stays.
EXPECTED = {"identify": 3, "page_view": 6, "purchase": 1}


def _segments(tmp_path: Path) -> Path:
    folder = tmp_path / "segments"
    folder.mkdir(exist_ok=True)
    (folder / "regular.yaml").write_text(SEGMENT)
    return folder


def prepared(url: str, folder: Path) -> None:
    """The events in, and a segment run as of NOW."""
    engine = open_db(url)
    report = ingest(engine, _events())
    assert report.accepted == len(_events()) and not report.rejected
    kinds = condition_kinds()
    run_segments(engine, NOW, kinds=kinds, definitions=load_segment_files(folder, kinds))
    engine.dispose()


def _regulars(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(m["id"] for m in members(conn, "regular"))


def _remaining(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(EVENTS.c.type, EVENTS.c.message_id)).all())


def _audits(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(AUDIT.c.at, AUDIT.c.actor, AUDIT.c.target, AUDIT.c.details)
            .where(AUDIT.c.action == PURGE_ACTION)
            .order_by(AUDIT.c.id)
        ).all()
    return [{"at": at, "actor": a, "target": t, **d} for at, a, t, d in rows]


def test_purge_deletes_what_retention_says_and_segments_follow(db_url, run, tmp_path):
    folder = _segments(tmp_path)
    prepared(db_url, folder)
    (tmp_path / "segflow.toml").write_text(TOML)
    engine = open_db(db_url)
    assert _regulars(engine) == ["keen", "steady"]
    before = _remaining(engine)

    dry = purge_events(engine, RETENTION, as_of=NOW, dry_run=True)
    assert dry.deleted == EXPECTED
    assert _remaining(engine) == before and _audits(engine) == []

    status, out, err = run("--db", db_url, "privacy", "purge", "--as-of", NOW.isoformat(), "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["deleted"] == EXPECTED and report["total"] == sum(EXPECTED.values())
    assert report["profiles"] == 3
    cutoffs = {t: datetime.fromisoformat(c) for t, c in report["cutoffs"].items()}
    assert cutoffs == {"page_view": NOW - timedelta(days=90), "default": NOW - timedelta(days=365)}

    with engine.connect() as conn:
        left = conn.execute(sa.select(EVENTS.c.type, EVENTS.c.ts)).all()
    assert sorted(t for t, _ in left) == ["add_to_cart"] + ["page_view"] * 8 + ["purchase"]
    assert all(ts >= cutoffs["page_view"] for t, ts in left if t == "page_view")

    # Incremental: without the purge marking them, no one here is due.
    result = run_segments(engine, NOW + timedelta(minutes=5), kinds=condition_kinds())
    assert not result.full
    assert _regulars(engine) == ["steady"]
    assert result.exited == {"regular": 1} and result.entered == {"regular": 0}

    (audit,) = _audits(engine)
    assert audit["actor"] == current_actor() and audit["finished"] is True
    assert audit["target"] is None
    assert abs(audit.pop("at").replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)
    assert audit["deleted"] == EXPECTED and audit["profiles"] == 3
    assert {t: datetime.fromisoformat(c) for t, c in audit["cutoffs"].items()} == cutoffs
    text = json.dumps(audit)
    assert not any(who in text for who in VIEWS), text

    status, out, err = run("--db", db_url, "privacy", "purge", "--as-of", NOW.isoformat())
    assert status == 0, err
    assert "deleted 0 events" in out and "page_view: none older than" in out
    engine.dispose()


def test_purge_without_retention_says_so_and_deletes_nothing(sqlite_url, run, tmp_path):
    prepared(sqlite_url, _segments(tmp_path))
    engine = open_db(sqlite_url)
    before = _remaining(engine)
    status, out, err = run("--db", sqlite_url, "privacy", "purge")
    assert status == 0, err
    assert "no retention periods are set" in out
    assert _remaining(engine) == before and _audits(engine) == []
    engine.dispose()


def test_purge_refuses_a_time_in_the_future(sqlite_url, run, tmp_path):
    prepared(sqlite_url, _segments(tmp_path))
    (tmp_path / "segflow.toml").write_text(TOML)
    engine = open_db(sqlite_url)
    before = _remaining(engine)
    future = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    status, out, err = run("--db", sqlite_url, "privacy", "purge", "--as-of", future)
    assert status != 0 and "is in the future" in err and "Traceback" not in err
    assert _remaining(engine) == before and _audits(engine) == []
    engine.dispose()


def _purge_child(url: str, cwd: Path, crash_at: str | None = None):
    return segflow_child(
        url, "privacy", "purge", "--as-of", NOW.isoformat(), "--chunk", "2", "--json",
        cwd=cwd, plugins="", crash_at=crash_at,
    )  # fmt: skip


def test_a_killed_purge_run_again_ends_as_an_uninterrupted_one(db_url, fresh_sqlite, tmp_path):
    # Killed after its second chunk of two: amid the page views, before the default's.
    crash_at = "purge.chunk:2"
    folder = _segments(tmp_path)
    (tmp_path / "segflow.toml").write_text(TOML)
    later = NOW + timedelta(minutes=5)

    reference_url = fresh_sqlite()
    prepared(reference_url, folder)
    reference = open_db(reference_url)
    whole = purge_events(reference, RETENTION, as_of=NOW, chunk=2)
    run_segments(reference, later, kinds=condition_kinds())
    expected = (_remaining(reference), _regulars(reference))
    reference.dispose()

    prepared(db_url, folder)
    killed = _purge_child(db_url, tmp_path, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    engine = open_db(db_url)
    (first,) = _audits(engine)
    done_first = sum(first["deleted"].values())
    chunks = int(crash_at.rpartition(":")[2])
    assert first["finished"] is False and done_first == 2 * chunks

    again = _purge_child(db_url, tmp_path)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["total"] == whole.total - done_first
    assert {
        t: first["deleted"].get(t, 0) + second["deleted"].get(t, 0) for t in whole.deleted
    } == whole.deleted
    assert [a["finished"] for a in _audits(engine)] == [False, True]

    run_segments(engine, later, kinds=condition_kinds())
    assert (_remaining(engine), _regulars(engine)) == expected
    engine.dispose()
