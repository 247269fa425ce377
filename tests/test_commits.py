"""Group commit (core/commits.py): concurrent submissions, one writer, the hook after."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from core import models
from core.commits import GroupCommitter
from core.db import open_db
from core.events import IngestError, validate
from core.sources import RawRecord


def event(i: int, user: str | None = None) -> object:
    checked = validate(
        RawRecord(
            f"t{i}",
            {
                "type": "product_view",
                "user_id": user or f"u{i % 7}",
                "ts": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                "message_id": f"m{i}",
            },
        )
    )
    assert not isinstance(checked, str)
    return checked


def stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(models.Event.__table__.c.message_id)).scalars())


def test_concurrent_submissions_are_stored_once_and_visible_when_answered(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    committer = GroupCommitter(engine)
    errors: list[str] = []

    def client(k: int) -> None:
        for j in range(20):
            i = k * 20 + j
            # Every other call re-sends the previous event: a retried request.
            batch = [event(i)] + ([event(i - 1)] if j % 2 and j else [])
            committer.store(batch, "test")
            # Answered means committed: a fresh connection sees the event.
            with engine.connect() as conn:
                n = conn.execute(
                    sa.text("SELECT count(*) FROM events WHERE message_id = :m"), {"m": f"m{i}"}
                ).scalar_one()
            if n != 1:
                errors.append(f"m{i}: {n} rows after the answer")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committer.close()
    assert errors == []
    assert stored_ids(engine) == sorted(f"m{i}" for i in range(160))


def test_the_hook_runs_after_the_commit_for_every_event(fresh_sqlite, register_plugin):
    engine = open_db(fresh_sqlite())
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Recorder:
        @staticmethod
        def on_events_ingested(events, engine):
            with engine.connect() as conn:
                stored = set(conn.execute(sa.select(models.Event.__table__.c.message_id)).scalars())
            with lock:
                for e in events:
                    # The hook never sees an event before it is committed.
                    assert e.event.message_id in stored
                    seen.append((e.event.message_id, e.profile_id))

    register_plugin(Recorder, name="recorder")
    committer = GroupCommitter(engine)
    futures = [committer.submit([event(i)], "test") for i in range(50)]
    for f in futures:
        f.result(timeout=10)
    committer.close()  # runs the hook for whatever is still waiting
    assert sorted(m for m, _ in seen) == sorted(f"m{i}" for i in range(50))
    with engine.connect() as conn:
        pids = dict(
            conn.execute(
                sa.select(models.Event.__table__.c.message_id, models.Event.__table__.c.profile_id)
            ).all()
        )
    assert all(pids[m] == pid for m, pid in seen)


def test_a_failing_store_fails_every_waiter_of_its_group_and_later_ones_go_on(
    fresh_sqlite, monkeypatch
):
    import core.db

    # Give up on a locked database quickly, so the failure comes fast.
    monkeypatch.setattr(core.db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    url = fresh_sqlite()
    engine = open_db(url)
    committer = GroupCommitter(engine)
    committer.store([event(0)], "test")
    # Another process-like writer holds the write lock: the group cannot commit.
    blocker = sa.create_engine(url).raw_connection()
    blocker.driver_connection.isolation_level = None
    blocker.driver_connection.execute("BEGIN EXCLUSIVE")
    try:
        futures = [committer.submit([event(i)], "test") for i in range(1, 4)]
        for f in futures:
            with pytest.raises(IngestError, match="locked"):
                f.result(timeout=30)
    finally:
        blocker.driver_connection.execute("ROLLBACK")
        blocker.close()
    committer.store([event(9)], "test")
    committer.close()
    assert stored_ids(engine) == ["m0", "m9"]


def test_close_stores_what_was_queued(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    committer = GroupCommitter(engine)
    futures = [committer.submit([event(i)], "test") for i in range(30)]
    committer.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(stored_ids(engine)) == 30
    # A closed committer starts again on the next submission.
    start = time.monotonic()
    committer.store([event(30)], "test")
    committer.close()
    assert len(stored_ids(engine)) == 31 and time.monotonic() - start < 5
