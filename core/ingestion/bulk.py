"""Bulk loads: the events' secondary indexes dropped for a load and built once
at its end, safely across crashes.

Keeping (profile_id, ts) and (type, ts) current costs more per row than the
insert itself; one sorted build at the end is several times cheaper. The
unique message_id index stays: deduplication needs it. Without the
(profile_id, ts) index, moving a merged profile's events would scan the whole
table, so a load queues those moves and applies them, in order, once the
indexes are back. Queries still run meanwhile, only slower, and a merged
profile's older events point at it until the end.

Crash safety: the load records itself in ``bulk_loads`` (the indexes it
dropped, the process running it) in the transaction that drops them, and each
batch queues its merge moves in ``bulk_load_moves`` in its own transaction, so
the database always says what is left to do. The load's last transaction
rebuilds the indexes, applies the moves and deletes the record. A load that
died on the way (kill -9, a power cut, a failing last step) leaves its record
behind, and ``finish_interrupted_loads`` (run by ``core.db.open_db``, so by
every command and the server, and before every bulk load) runs that last
transaction for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.tables import BULK_LOAD_MOVES, BULK_LOADS, EVENTS
from core.ingestion.crashpoints import crash_point
from core.ingestion.identity import move_events

log = logging.getLogger(__name__)

# Below this many events a bulk load is not worth it (see worth_bulk_loading).
DEFER_INDEXES_MIN = 50_000
# Lets SQLite sort for an index build on every core (a quarter faster on two).
SQLITE_SORT_THREADS = min(os.cpu_count() or 1, 8)
# PostgreSQL: a running load holds the advisory lock (PG_LOCK_CLASS, its id)
# on a connection of its own; the server drops it when the process dies.
PG_LOCK_CLASS = 0x5E6F
# How long a repair waits for that lock when the load's process is gone but
# the server has not yet ended its session.
PG_LOCK_WAIT = "10s"

_HOST = socket.gethostname()
# (database URL, load id) of the loads running in this process.
_running: set[tuple[str, int]] = set()
_running_lock = threading.Lock()


def worth_bulk_loading(engine: Engine, expected: int) -> bool:
    """Whether a load of about ``expected`` events should be a bulk load.

    For callers that choose (``segflow import``, the demo): at least
    DEFER_INDEXES_MIN events, and no fewer than are stored already, since
    rebuilding the indexes over a big table costs more than a small load saves.
    """
    if expected < DEFER_INDEXES_MIN:
        return False
    with engine.connect() as conn:
        existing = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one()
    return expected >= existing


@dataclass
class DeferredLoad:
    """The bulk load an ingest call runs, if any (``id``: its bulk_loads row)."""

    id: int | None = None

    @property
    def active(self) -> bool:
        return self.id is not None

    def queue_moves(self, conn: Connection, moves: list[tuple[int, int]]) -> None:
        """Queue merge moves in the transaction of the batch that merged."""
        if moves:
            conn.execute(
                BULK_LOAD_MOVES.insert(),
                [{"load_id": self.id, "from_profile": s, "to_profile": d} for s, d in moves],
            )


@contextlib.contextmanager
def bulk_load(engine: Engine, bulk: bool) -> Iterator[DeferredLoad]:
    """With ``bulk``, run the load inside with the indexes dropped (see above);
    they come back at the end even when the load fails."""
    load = DeferredLoad()
    if not bulk:
        yield load
        return
    finish_interrupted_loads(engine)
    # PostgreSQL: the connection holding the load's lock, kept to the end.
    lease = engine.connect() if engine.dialect.name == "postgresql" else None
    try:
        load.id = _start(engine, lease)
        key = (str(engine.url), load.id)
        with _running_lock:
            _running.add(key)
        try:
            yield load
        finally:
            try:
                with engine.begin() as conn:
                    _complete(conn, load.id)
            finally:
                with _running_lock:
                    _running.discard(key)
    finally:
        if lease is not None:
            _release(lease, load.id)


def _start(engine: Engine, lease: Connection | None) -> int:
    """Record the load and drop the indexes, in one transaction; the load's id."""
    indexes = [ix for ix in EVENTS.indexes if not ix.unique]
    specs = [{"name": ix.name, "columns": [c.name for c in ix.columns]} for ix in indexes]
    with contextlib.ExitStack() as stack:
        if lease is None:
            conn = stack.enter_context(engine.begin())
        else:
            conn = lease
            stack.enter_context(lease.begin())
        load_id = conn.execute(
            BULK_LOADS.insert().values(
                started_at=utcnow(), host=_HOST, pid=os.getpid(), indexes=specs
            )
        ).inserted_primary_key[0]
        if lease is not None:
            # Session-level: held past this commit, until _release.
            conn.execute(
                sa.text("SELECT pg_advisory_lock(:c, :i)"), {"c": PG_LOCK_CLASS, "i": load_id}
            )
        for ix in indexes:
            ix.drop(conn, checkfirst=True)
    crash_point("bulk.dropped")
    return load_id


def _release(lease: Connection, load_id: int | None) -> None:
    try:
        if load_id is not None:
            lease.execute(
                sa.text("SELECT pg_advisory_unlock(:c, :i)"), {"c": PG_LOCK_CLASS, "i": load_id}
            )
            lease.commit()
    except Exception:  # noqa: BLE001 - the connection is broken: closing it drops the lock
        lease.invalidate()
    finally:
        lease.close()


def _complete(conn: Connection, load_id: int) -> tuple[int, int] | None:
    """A load's last step, in the caller's transaction: (indexes rebuilt, merge
    moves applied), or None when another process completed it already.

    The record is deleted first: that takes the write lock, so a concurrent
    repair of the same load waits, then finds nothing to do.
    """
    row = conn.execute(
        BULK_LOADS.delete().where(BULK_LOADS.c.id == load_id).returning(BULK_LOADS.c.indexes)
    ).one_or_none()
    if row is None:
        return None
    specs: list[dict[str, Any]] = row.indexes
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA threads = {SQLITE_SORT_THREADS}")
    for spec in specs:
        _index(spec).create(conn, checkfirst=True)
        crash_point("bulk.index")
    moves = conn.execute(
        sa.select(BULK_LOAD_MOVES.c.from_profile, BULK_LOAD_MOVES.c.to_profile)
        .where(BULK_LOAD_MOVES.c.load_id == load_id)
        .order_by(BULK_LOAD_MOVES.c.id)
    ).all()
    for source, into in moves:
        move_events(conn, source, into)
        crash_point("bulk.move")
    conn.execute(BULK_LOAD_MOVES.delete().where(BULK_LOAD_MOVES.c.load_id == load_id))
    return len(specs), len(moves)


def _index(spec: dict[str, Any]) -> sa.Index:
    """The recorded index, on a detached copy of the table (the model's table
    keeps its own Index objects)."""
    table = sa.Table(EVENTS.name, sa.MetaData(), *(sa.Column(c) for c in spec["columns"]))
    return sa.Index(spec["name"], *(table.c[c] for c in spec["columns"]))


def finish_interrupted_loads(engine: Engine) -> list[str]:
    """Complete every bulk load whose process died; one line for each done.

    Each line is also logged as a warning (logger ``core.ingestion.bulk``); the
    library prints nothing. Loads still running are left alone: this
    process's, a live process's on this host, and on PostgreSQL any whose
    lock is held.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                BULK_LOADS.c.id, BULK_LOADS.c.host, BULK_LOADS.c.pid, BULK_LOADS.c.started_at
            ).order_by(BULK_LOADS.c.id)
        ).all()
    done = []
    for row in rows:
        with engine.begin() as conn:
            if not _abandoned(conn, row, str(engine.url)):
                continue
            result = _complete(conn, row.id)
        if result is None:
            continue
        message = (
            f"finished an interrupted bulk load (pid {row.pid} on {row.host}, started "
            f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC): rebuilt {result[0]} indexes of "
            f"events, applied {result[1]} merge moves"
        )
        log.warning(message)
        done.append(message)
    return done


def _abandoned(conn: Connection, row: Any, url: str) -> bool:
    """Whether the load's process is gone (on PostgreSQL: whether this
    transaction now holds its lock, so no one else completes it meanwhile)."""
    with _running_lock:
        if (url, row.id) in _running:
            return False
    if conn.dialect.name == "postgresql":
        params = {"c": PG_LOCK_CLASS, "i": row.id}
        if conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:c, :i)"), params).scalar():
            return True
        if row.host != _HOST or _pid_alive(row.pid):
            return False
        try:
            with conn.begin_nested():
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{PG_LOCK_WAIT}'"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :i)"), params)
                conn.execute(sa.text("SET LOCAL lock_timeout = DEFAULT"))
        except sa.exc.OperationalError:
            return False
        return True
    if row.host != _HOST:
        log.warning(
            "a bulk load from pid %s on %s has not finished; left alone, since whether "
            "it still runs cannot be told from %s",
            row.pid,
            row.host,
            _HOST,
        )
        return False
    # This process's own load that is not running: its last step failed.
    return row.pid == os.getpid() or not _pid_alive(row.pid)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it there; cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True
