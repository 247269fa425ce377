"""Group commit (core/commits.py): concurrent submissions, one writer, the hook after."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from core.db import models, open_db
from core.ingestion import CommitterClosed, GroupCommitter, IngestError, Rejection, validate
from core.plugins import events_ingested_hook
from core.types import RawRecord


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
    assert not isinstance(checked, Rejection), checked
    return checked


@contextlib.contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as another process would."""
    con = sqlite3.connect(sa.make_url(url).database, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


def stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(models.EventRow.__table__.c.message_id)).scalars())


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
    early: list[str] = []
    calls: list[int] = []
    lock = threading.Lock()

    class Recorder:
        @staticmethod
        def on_events_ingested(events, engine):
            with engine.connect() as conn:
                stored = set(
                    conn.execute(sa.select(models.EventRow.__table__.c.message_id)).scalars()
                )
            with lock:
                for e in events:
                    # The hook never sees an event before it is committed.
                    if e.event.message_id not in stored:
                        early.append(e.event.message_id)
                    seen.append((e.event.message_id, e.profile_id))
                calls.append(len(events))

    register_plugin(Recorder, name="recorder")
    committer = GroupCommitter(engine, events_ingested_hook(engine))
    futures = [committer.submit([event(i)], "test") for i in range(50)]
    for f in futures:
        f.result(timeout=10)
    committer.close()  # runs the hook for whatever is still waiting
    assert early == []
    assert sorted(m for m, _ in seen) == sorted(f"m{i}" for i in range(50))
    # Submitted together, they were gathered: fewer hook calls than requests.
    assert len(calls) < 50
    with engine.connect() as conn:
        pids = dict(
            conn.execute(
                sa.select(
                    models.EventRow.__table__.c.message_id, models.EventRow.__table__.c.profile_id
                )
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
    # Another writer holds the write lock: the group cannot commit.
    with write_lock(url):
        futures = [committer.submit([event(i)], "test") for i in range(1, 4)]
        for f in futures:
            with pytest.raises(IngestError, match="locked"):
                f.result(timeout=30)
    committer.store([event(9)], "test")
    committer.close()
    assert stored_ids(engine) == ["m0", "m9"]


def test_close_stores_what_was_queued_and_then_refuses(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    committer = GroupCommitter(engine)
    futures = [committer.submit([event(i)], "test") for i in range(30)]
    committer.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(stored_ids(engine)) == 30
    with pytest.raises(CommitterClosed):
        committer.submit([event(30)], "test")
    committer.close()  # closing twice is fine


def test_a_withdrawn_submission_is_not_stored_and_the_writer_goes_on(fresh_sqlite):
    url = fresh_sqlite()
    engine = open_db(url)
    committer = GroupCommitter(engine)
    committer.store([event(0)], "test")
    with write_lock(url):
        first = committer.submit([event(1)], "test")
        time.sleep(0.3)  # the writer has taken it and waits for the lock
        second = committer.submit([event(2)], "test")
        # What asyncio.wrap_future does when the request's task is cancelled.
        assert second.cancel()
    first.result(timeout=30)
    committer.store([event(3)], "test")
    committer.close()
    assert stored_ids(engine) == ["m0", "m1", "m3"]


def test_one_bad_submission_does_not_fail_the_others_in_its_group(postgres_url, monkeypatch):
    import psycopg

    import core.ingestion.writers as writers

    # A valid event PostgreSQL refuses to store (a fault injected in the COPY):
    # the COPY of the whole group fails, and each submission is then tried alone.
    real_copy = writers._write_postgres_copy

    def refusing(conn, records, *args):
        if any(r["message_id"] == "bad" for r in records):
            raise psycopg.DataError("the server refused row 'bad'")
        return real_copy(conn, records, *args)

    monkeypatch.setattr(writers, "_write_postgres_copy", refusing)
    engine = open_db(postgres_url)
    committer = GroupCommitter(engine)
    bad = validate(RawRecord("bad", {"type": "x", "user_id": "u", "message_id": "bad"}))
    assert not isinstance(bad, Rejection)
    blocker = engine.connect()
    tx = blocker.begin()
    # Reads pass, writes wait: the writer stalls on its first group while the
    # next three submissions gather into one.
    blocker.exec_driver_sql("LOCK TABLE events IN EXCLUSIVE MODE")
    try:
        first = committer.submit([event(0)], "test")
        time.sleep(0.3)
        good = [committer.submit([event(i)], "test") for i in (1, 2)]
        poison = committer.submit([bad], "test")
    finally:
        tx.rollback()
        blocker.close()
    first.result(timeout=30)
    for f in good:
        f.result(timeout=30)
    with pytest.raises(IngestError, match="refused row 'bad'"):
        poison.result(timeout=30)
    committer.close()
    assert stored_ids(engine) == ["m0", "m1", "m2"]
