"""What ingestion keeps for monitoring, a few rows per batch: per source and
event type the newest event time and the last delivery (``source_activity``,
read by the freshness check), and per day and source the stored, duplicate
and rejected records (``ingest_counts``, read by the spike checks), and per
day, source, type and property what minimisation dropped or rewrote
(``ingest_minimised``).

Written in the transaction that stores the batch, so the counts are exactly
what was committed and no transaction is added; a call whose last records
were all rejected writes those once at its end. Rows are upserted in key
order, so concurrent writers on PostgreSQL never wait on each other in a cycle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.db.models import UTCDateTime

# type -> [events stored, newest event time]
TypeActivity = dict[str, list]


@dataclass
class BatchActivity:
    """One batch's contribution, gathered by ``store_batch``."""

    types: TypeActivity = field(default_factory=dict)
    duplicates: int = 0
    rejected: int = 0
    # (type, property, action) -> count, from core.privacy.minimise
    minimised: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.types or self.duplicates or self.rejected or self.minimised)


def tally(records: list, now: datetime) -> TypeActivity:
    """Events per type and the newest event time of each (``now`` for events
    without a time, as they are stored)."""
    types: TypeActivity = {}
    for r in records:
        ts = r.get("ts") or now
        seen = types.get(r["type"])
        if seen is None:
            types[r["type"]] = [1, ts]
        else:
            seen[0] += 1
            if ts > seen[1]:
                seen[1] = ts
    return types


def record(conn: Connection, source: str, activity: BatchActivity, now: datetime) -> None:
    """Add ``activity`` to the monitoring tables in ``conn``'s transaction."""
    if not activity:
        return
    statements = _upserts(conn.dialect.name)
    if statements is None:
        return  # another dialect: no upsert; monitoring then sees no activity
    per_type, per_day, per_property = statements
    if activity.minimised:
        conn.execute(
            per_property,
            [
                {"day": now.date(), "source": source, "type": t, "property": p,
                 "action": a, "count": n}
                for (t, p, a), n in sorted(activity.minimised.items())
            ],
        )  # fmt: skip
    if activity.types:
        conn.execute(
            per_type,
            [
                {"source": source, "type": t, "last_ts": newest, "received": now, "events": n}
                for t, (n, newest) in sorted(activity.types.items())
            ],
        )
    accepted = sum(n for n, _ in activity.types.values())
    conn.execute(
        per_day,
        {
            "day": now.date(),
            "source": source,
            "accepted": accepted,
            "duplicates": activity.duplicates,
            "rejected": activity.rejected,
        },
    )


@functools.cache
def _upserts(dialect: str) -> tuple[sa.TextClause, sa.TextClause, sa.TextClause] | None:
    """The two upserts as plain SQL, built once: a Core insert with
    ON CONFLICT is compiled anew on every call, which costs more than running it."""
    if dialect not in ("sqlite", "postgresql"):
        return None
    greatest = "max" if dialect == "sqlite" else "greatest"
    per_type = sa.text(
        "INSERT INTO source_activity (source, type, last_ts, last_received_at, events) "
        "VALUES (:source, :type, :last_ts, :received, :events) "
        "ON CONFLICT (source, type) DO UPDATE SET "
        f"last_ts = {greatest}(source_activity.last_ts, excluded.last_ts), "
        "last_received_at = excluded.last_received_at, "
        "events = source_activity.events + excluded.events"
    ).bindparams(
        sa.bindparam("last_ts", type_=UTCDateTime()),
        sa.bindparam("received", type_=UTCDateTime()),
    )
    per_day = sa.text(
        "INSERT INTO ingest_counts (day, source, accepted, duplicates, rejected) "
        "VALUES (:day, :source, :accepted, :duplicates, :rejected) "
        "ON CONFLICT (day, source) DO UPDATE SET "
        "accepted = ingest_counts.accepted + excluded.accepted, "
        "duplicates = ingest_counts.duplicates + excluded.duplicates, "
        "rejected = ingest_counts.rejected + excluded.rejected"
    ).bindparams(sa.bindparam("day", type_=sa.Date()))
    per_property = sa.text(
        "INSERT INTO ingest_minimised (day, source, type, property, action, count) "
        "VALUES (:day, :source, :type, :property, :action, :count) "
        "ON CONFLICT (day, source, type, property, action) DO UPDATE SET "
        "count = ingest_minimised.count + excluded.count"
    ).bindparams(sa.bindparam("day", type_=sa.Date()))
    return per_type, per_day, per_property
