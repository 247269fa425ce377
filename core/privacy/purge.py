"""Retention: events older than their type's period deleted, in chunks.

    cutoffs from [privacy.retention] and as_of (a type's own period, else "default")
    count what is due per type (the report of a dry run; the progress total)
    audit_log += privacy.purge: who, when, cutoffs, counts so far, finished = false
    per chunk of at most ``chunk`` events, one transaction:
        delete them
        their profiles' evaluation_state due at their oldest deleted event
        the audit record's counts += the chunk's
    the audit record finished = true

Each chunk is all or nothing and carries its own bookkeeping, so a purge
killed between chunks leaves deleted events whose profiles are due for the
next ``segments run`` and an audit record that counts exactly what was
deleted; running it again deletes the rest and reports only the rest.

A profile's memberships are derived from its events: a deleted event can
take someone out of a segment (five page views in a year, three of them
older than the page views' retention). The incremental segment run looks
at profiles whose ``next_change_at`` is due, so marking them due is all it
takes; scores are computed for everyone on each ``scores run`` and follow
by themselves. Retention covers events only: messages, workflow history and
membership history are the record of what segflow did, kept until erasure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core import audit
from core.db.models import utcnow
from core.db.sql import chunks, dialect_insert
from core.db.tables import AUDIT, EVALUATION_STATE, EVENTS
from core.ingestion.crashpoints import crash_point
from core.privacy.settings import DEFAULT
from core.types import CommandError

PURGE_ACTION = "privacy.purge"
# Events per transaction: each commit costs a sync to disk, so thousands at
# a time; many more would hold the write lock long enough to stall ingestion.
CHUNK = 10_000
# (description, total) -> a context manager yielding advance(n), like the CLI's progress.
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _silent(_description: str, _total: int):
    yield lambda _n: None


class PurgeReport(BaseModel):
    """What a purge deleted (or, with ``dry_run``, would delete): ``deleted``
    counts per event type; ``cutoffs``: the time before which each named type's
    events go, and ``default`` the one for every other type (absent: kept);
    ``profiles``: how many people's segments are due for re-evaluation."""

    as_of: datetime
    dry_run: bool = False
    cutoffs: dict[str, datetime] = {}
    deleted: dict[str, int] = {}
    profiles: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def cutoff(self, type_: str) -> datetime | None:
        """The cutoff the events of ``type_`` were purged by."""
        return self.cutoffs.get(type_, self.cutoffs.get(DEFAULT))


def cutoffs(
    retention: dict[str, timedelta | None], as_of: datetime
) -> tuple[dict[str, datetime | None], datetime | None]:
    """(named type -> cutoff, or None when it is kept forever; the default's cutoff)."""
    named = {
        t: (as_of - p if p is not None else None) for t, p in retention.items() if t != DEFAULT
    }
    period = retention.get(DEFAULT)
    return named, (as_of - period if period is not None else None)


def _due(named: dict[str, datetime | None], default: datetime | None) -> list[Any]:
    """One WHERE clause per group of events due: each named type, then the rest."""
    clauses = [sa.and_(EVENTS.c.type == t, EVENTS.c.ts < c) for t, c in named.items() if c]
    if default is not None:
        others = EVENTS.c.ts < default
        if named:
            others = sa.and_(EVENTS.c.type.notin_(sorted(named)), others)
        clauses.append(others)
    return clauses


def _count(conn: Connection, clauses: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for where in clauses:
        query = sa.select(EVENTS.c.type, sa.func.count()).where(where).group_by(EVENTS.c.type)
        for type_, n in conn.execute(query):
            counts[type_] = counts.get(type_, 0) + n
    return counts


def _mark_due(conn: Connection, oldest: dict[int, datetime], now: datetime) -> None:
    """Each profile's evaluation_state due no later than its oldest deleted
    event: from then on, its stored memberships may be wrong."""
    insert = dialect_insert(conn, EVALUATION_STATE)
    existing = EVALUATION_STATE.c.next_change_at
    upsert = insert.on_conflict_do_update(
        index_elements=[EVALUATION_STATE.c.profile_id],
        set_={
            "next_change_at": sa.case(
                (sa.or_(existing.is_(None), existing > insert.excluded.next_change_at),
                 insert.excluded.next_change_at),
                else_=existing,
            )
        },
    )  # fmt: skip
    rows = [
        {"profile_id": pid, "evaluated_at": now, "next_change_at": ts}
        for pid, ts in sorted(oldest.items())
    ]
    conn.execute(upsert, rows)


def _audit_details(report: PurgeReport, finished: bool) -> dict[str, Any]:
    return {
        "as_of": report.as_of.isoformat(),
        "cutoffs": {t: c.isoformat() for t, c in sorted(report.cutoffs.items())},
        "deleted": dict(sorted(report.deleted.items())),
        "profiles": report.profiles,
        "finished": finished,
    }


def purge_events(
    engine: Engine,
    retention: dict[str, timedelta | None],
    *,
    as_of: datetime | None = None,
    dry_run: bool = False,
    chunk: int = CHUNK,
    actor: str | None = None,
    progress: Progress = _silent,
) -> PurgeReport:
    """Delete the events older than their type's ``retention`` (see the
    module's docstring), ``chunk`` at a time; with ``dry_run`` only count
    them. ``progress`` shows the chunks going out of the events due."""
    now = utcnow()
    as_of = as_of or now
    if as_of > now:
        # A mistyped year would delete events that are still within their period.
        raise CommandError(
            f"--as-of {as_of.isoformat()} is in the future: retention is measured back "
            "from now or an earlier time"
        )
    named, default = cutoffs(retention, as_of)
    report = PurgeReport(as_of=as_of, dry_run=dry_run)
    report.cutoffs = {t: c for t, c in named.items() if c is not None}
    if default is not None:
        report.cutoffs[DEFAULT] = default
    clauses = _due(named, default)
    if not clauses:
        return report
    with engine.connect() as conn:
        due = _count(conn, clauses)
    if dry_run:
        report.deleted = due
        return report
    chunk = max(1, chunk)
    profiles: set[int] = set()
    with engine.begin() as conn:
        details = _audit_details(report, False)
        audit_id = audit.record(conn, actor, PURGE_ACTION, None, details, at=now)
    with progress("purging events", sum(due.values())) as advance:
        for where in clauses:
            _purge(engine, where, chunk, report, profiles, audit_id, now, advance)
    with engine.begin() as conn:
        conn.execute(
            AUDIT.update()
            .where(AUDIT.c.id == audit_id)
            .values(details=_audit_details(report, True))
        )
    return report


def _purge(
    engine: Engine,
    where: Any,
    chunk: int,
    report: PurgeReport,
    profiles: set[int],
    audit_id: int,
    now: datetime,
    advance: Callable[[int], None],
) -> None:
    """Delete the events ``where`` selects, one chunk per transaction."""
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(EVENTS.c.id, EVENTS.c.type, EVENTS.c.profile_id, EVENTS.c.ts)
                .where(where)
                .limit(chunk)
            ).all()
            if not rows:
                break
            for ids in chunks([r.id for r in rows]):
                conn.execute(EVENTS.delete().where(EVENTS.c.id.in_(ids)))
            oldest: dict[int, datetime] = {}
            for r in rows:
                report.deleted[r.type] = report.deleted.get(r.type, 0) + 1
                if r.profile_id not in oldest or r.ts < oldest[r.profile_id]:
                    oldest[r.profile_id] = r.ts
            _mark_due(conn, oldest, now)
            profiles.update(oldest)
            report.profiles = len(profiles)
            conn.execute(
                AUDIT.update()
                .where(AUDIT.c.id == audit_id)
                .values(details=_audit_details(report, False))
            )
        crash_point("purge.chunk")
        advance(len(rows))
