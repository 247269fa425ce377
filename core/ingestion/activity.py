"""What ingestion keeps for monitoring, a few rows per batch: per source and
event type the newest event time and the last delivery (``source_activity``,
read by the freshness check), and per day and source the stored, duplicate
and rejected records (``ingest_counts``, read by the spike checks).

Written in the transaction that stores the batch, so the counts are exactly
what was committed and no transaction is added; a call whose last records
were all rejected writes those once at its end. Rows are upserted in key
order, so concurrent writers on PostgreSQL never wait on each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from core.db.tables import INGEST_COUNTS, SOURCE_ACTIVITY

# type -> [events stored, newest event time]
TypeActivity = dict[str, list]


@dataclass
class BatchActivity:
    """One batch's contribution, gathered by ``store_batch``."""

    types: TypeActivity = field(default_factory=dict)
    duplicates: int = 0
    rejected: int = 0

    def __bool__(self) -> bool:
        return bool(self.types or self.duplicates or self.rejected)


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
    insert = _insert_for(conn)
    if insert is None:
        return  # another dialect: no upsert; monitoring reads events instead
    if activity.types:
        rows = [
            {
                "source": source,
                "type": type_,
                "last_ts": newest,
                "last_received_at": now,
                "events": n,
            }
            for type_, (n, newest) in sorted(activity.types.items())
        ]
        stmt = insert(SOURCE_ACTIVITY).values(rows)
        greatest = sa.func.max if conn.dialect.name == "sqlite" else sa.func.greatest
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["source", "type"],
                set_={
                    "last_ts": greatest(SOURCE_ACTIVITY.c.last_ts, stmt.excluded.last_ts),
                    "last_received_at": stmt.excluded.last_received_at,
                    "events": SOURCE_ACTIVITY.c.events + stmt.excluded.events,
                },
            )
        )
    accepted = sum(n for n, _ in activity.types.values())
    stmt = insert(INGEST_COUNTS).values(
        day=now.date(),
        source=source,
        accepted=accepted,
        duplicates=activity.duplicates,
        rejected=activity.rejected,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "source"],
            set_={
                name: getattr(INGEST_COUNTS.c, name) + getattr(stmt.excluded, name)
                for name in ("accepted", "duplicates", "rejected")
            },
        )
    )


def _insert_for(conn: Connection):
    if conn.dialect.name == "sqlite":
        return sqlite.insert
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    return None
