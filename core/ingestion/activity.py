"""What ingestion keeps for monitoring, a few rows per batch: per source and
event type the newest event time and the last delivery (``source_activity``,
read by the freshness check), and per day and source the stored, duplicate
and rejected records (``ingest_counts``, read by the spike checks), and per
day, source, type and property what minimisation dropped or rewrote
(``ingest_minimised``), and per UTC day of the events' time and type (and
product, for events that name one) the events stored and the sum of their
values (``event_counts``, ``product_counts``: read by the overview instead of
the events; ``forget_events`` takes erased ones out).

Written in the transaction that stores the batch, so the counts are exactly
what was committed and no transaction is added; a call whose last records
were all rejected writes those once at its end. Rows are upserted in key
order, so concurrent writers on PostgreSQL never wait on each other in a cycle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.db.models import UTCDateTime

# type -> [events stored, newest event time]
TypeActivity = dict[str, list]
# (day, type, product id or '') -> [events stored, sum of their values]
DayCounts = dict[tuple[date, str, str], list]


@dataclass
class BatchActivity:
    """One batch's contribution, gathered by ``store_batch``."""

    types: TypeActivity = field(default_factory=dict)
    duplicates: int = 0
    rejected: int = 0
    # (type, property, action) -> count, from core.privacy.minimise
    minimised: dict[tuple[str, str, str], int] = field(default_factory=dict)
    days: DayCounts = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.types or self.duplicates or self.rejected or self.minimised)


def tally_days(records: list, now: datetime) -> DayCounts:
    """Events and the sum of their values per UTC day of their time, type and
    product (as they are stored: ``now`` for events without a time)."""
    days: DayCounts = {}
    for r in records:
        ts = r.get("ts") or now
        if ts.tzinfo is not None and ts.utcoffset():
            ts = ts.astimezone(UTC)
        key = (ts.date(), r["type"], r.get("product_id") or "")
        value = r.get("value") or 0.0
        seen = days.get(key)
        if seen is None:
            days[key] = [1, value]
        else:
            seen[0] += 1
            seen[1] += value
    return days


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
    per_type, per_day, per_property, per_event_day, per_product = statements
    if activity.days:
        days: dict[tuple[date, str], list] = {}
        for (d, t, _), (n, v) in activity.days.items():
            seen = days.setdefault((d, t), [0, 0.0])
            seen[0] += n
            seen[1] += v
        conn.execute(
            per_event_day,
            [
                {"day": d, "type": t, "events": n, "value": float(v)}
                for (d, t), (n, v) in sorted(days.items())
            ],
        )
        products = [
            {"type": t, "product_id": p, "day": d, "events": n, "value": float(v)}
            for (d, t, p), (n, v) in activity.days.items()
            if p
        ]
        if products:
            products.sort(key=lambda r: (r["type"], r["product_id"], r["day"]))
            conn.execute(per_product, products)
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
def _upserts(dialect: str) -> tuple[sa.TextClause, ...] | None:
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
    per_day = _adding("ingest_counts", ("day", "source"), ("accepted", "duplicates", "rejected"))
    per_property = _adding(
        "ingest_minimised", ("day", "source", "type", "property", "action"), ("count",)
    )
    per_event_day = _adding("event_counts", ("day", "type"), ("events", "value"))
    per_product = _adding("product_counts", ("type", "product_id", "day"), ("events", "value"))
    return per_type, per_day, per_property, per_event_day, per_product


def _adding(table: str, keys: tuple[str, ...], counts: tuple[str, ...]) -> sa.TextClause:
    """The upsert that adds a batch's ``counts`` to the row of its ``keys``
    (``day``, where it is a key, bound as a date)."""
    columns = (*keys, *counts)
    sql = sa.text(
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(f':{c}' for c in columns)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in counts)
    )
    return sql.bindparams(sa.bindparam("day", type_=sa.Date())) if "day" in keys else sql


def forget_events(conn: Connection, where: sa.ColumnElement[bool]) -> None:
    """Take the events ``where`` selects out of ``event_counts`` and
    ``product_counts``, in ``conn``'s transaction, before they are deleted
    (erasure)."""
    from core.db.tables import EVENT_COUNTS, EVENTS, PRODUCT_COUNTS

    if conn.dialect.name == "postgresql":
        day = sa.cast(sa.func.timezone("UTC", EVENTS.c.ts), sa.Date)
    else:
        day = sa.func.date(EVENTS.c.ts)
    product = sa.func.coalesce(EVENTS.c.product_id, "")
    rows = conn.execute(
        sa.select(
            day,
            EVENTS.c.type,
            product,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(EVENTS.c.value), 0.0),
        )
        .where(where)
        .group_by(day, EVENTS.c.type, product)
    ).all()
    found: DayCounts = {}
    for d, type_, pid, n, value in rows:
        found[(d if isinstance(d, date) else date.fromisoformat(d), type_, pid)] = [n, value]
    days: dict[tuple[date, str], list] = {}
    for (d, type_, _), (n, value) in found.items():
        seen = days.setdefault((d, type_), [0, 0.0])
        seen[0] += int(n)
        seen[1] += float(value)
    e = EVENT_COUNTS.c
    for (d, type_), (n, value) in sorted(days.items()):
        key = (e.day == d, e.type == type_)
        conn.execute(
            EVENT_COUNTS.update().where(*key).values(events=e.events - n, value=e.value - value)
        )
        conn.execute(EVENT_COUNTS.delete().where(*key, e.events <= 0))
    p = PRODUCT_COUNTS.c
    for (d, type_, pid), (n, value) in sorted(
        found.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])
    ):
        if not pid:
            continue
        key = (p.type == type_, p.product_id == pid, p.day == d)
        conn.execute(
            PRODUCT_COUNTS.update()
            .where(*key)
            .values(events=p.events - int(n), value=p.value - float(value))
        )
        conn.execute(PRODUCT_COUNTS.delete().where(*key, p.events <= 0))
