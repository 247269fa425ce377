"""Segment health over time: daily sizes and entered / exited counts.

Sizes come from ``segment_sizes`` (written by every run and back-fill), never
recomputed from events: a day's size is the last one stored that UTC day.
Flows come from ``membership_changes``. Days are UTC calendar days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.dashboards import utc_day
from core.db.tables import CHANGES, SEGMENT_SIZES, SEGMENTS

DAILY_SIZES_COLUMNS = ["day", "segment", "size", "as_of", "version"]
DAILY_CHANGES_COLUMNS = ["day", "segment", "entered", "exited"]


def as_date(value: date | datetime | str) -> date:
    """A day from what a driver returns for a date (SQLite: text)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def _since_filter(column: sa.ColumnElement, since: date | None, until: date | None) -> list:
    where = []
    if since is not None:
        where.append(column >= day_start(since))
    if until is not None:
        where.append(column < day_start(until + timedelta(days=1)))
    return where


def daily_sizes(
    engine: Engine,
    segments: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
) -> pd.DataFrame:
    """Each segment's size per UTC day: the last size stored that day.

    Columns: ``day`` (datetime64, midnight UTC of the day), ``segment``,
    ``size``, ``as_of`` (when that size was taken), ``version`` (of the
    definition). Only days with a stored size have a row (a day without a run
    or back-fill step is missing, not zero). Sorted by segment, then day.
    ``segments``: only these names; ``since`` / ``until``: inclusive days.
    """
    day = utc_day(engine, SEGMENT_SIZES.c.as_of)
    newest_first = sa.func.row_number().over(
        partition_by=(SEGMENT_SIZES.c.segment_id, day), order_by=SEGMENT_SIZES.c.as_of.desc()
    )
    ranked = (
        sa.select(
            day.label("day"),
            SEGMENTS.c.name.label("segment"),
            SEGMENT_SIZES.c.size,
            SEGMENT_SIZES.c.as_of,
            SEGMENT_SIZES.c.version,
            newest_first.label("rank"),
        )
        .join(SEGMENTS, SEGMENTS.c.id == SEGMENT_SIZES.c.segment_id)
        .where(*_since_filter(SEGMENT_SIZES.c.as_of, since, until))
    )
    if segments is not None:
        ranked = ranked.where(SEGMENTS.c.name.in_(segments))
    sub = ranked.subquery()
    query = sa.select(sub.c.day, sub.c.segment, sub.c.size, sub.c.as_of, sub.c.version).where(
        sub.c.rank == 1
    )
    with engine.connect() as conn:
        rows = [(as_date(d), s, int(n), a, int(v)) for d, s, n, a, v in conn.execute(query)]
    rows.sort(key=lambda r: (r[1], r[0]))
    frame = pd.DataFrame.from_records(rows, columns=DAILY_SIZES_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def daily_changes(
    engine: Engine,
    segments: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
) -> pd.DataFrame:
    """People who entered and exited each segment per UTC day (from
    ``membership_changes``; back-fills record no changes).

    Columns: ``day`` (datetime64), ``segment``, ``entered``, ``exited``. Days
    without changes have no row. Sorted by segment, then day.
    """
    # Counted per change time (a run's as_of: few distinct values) through the
    # (segment_id, at) index, then folded into days here: a day function in the
    # GROUP BY would be applied to every change row.
    entered = sa.func.sum(sa.case((CHANGES.c.change == "entered", 1), else_=0))
    exited = sa.func.sum(sa.case((CHANGES.c.change == "exited", 1), else_=0))
    query = (
        sa.select(CHANGES.c.segment_id, CHANGES.c.at, entered, exited)
        .where(*_since_filter(CHANGES.c.at, since, until))
        .group_by(CHANGES.c.segment_id, CHANGES.c.at)
    )
    per_day: dict[tuple[str, date], list[int]] = {}
    with engine.connect() as conn:
        names = dict(conn.execute(sa.select(SEGMENTS.c.id, SEGMENTS.c.name)).all())
        if segments is not None:
            wanted = set(segments)
            names = {sid: n for sid, n in names.items() if n in wanted}
            query = query.where(CHANGES.c.segment_id.in_(list(names)))
        for sid, at, n_in, n_out in conn.execute(query):
            counts = per_day.setdefault((names[sid], at.astimezone(UTC).date()), [0, 0])
            counts[0] += int(n_in)
            counts[1] += int(n_out)
    rows = [(day, name, n_in, n_out) for (name, day), (n_in, n_out) in sorted(per_day.items())]
    frame = pd.DataFrame.from_records(rows, columns=DAILY_CHANGES_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def size_series(
    engine: Engine, since: date | None = None, until: date | None = None
) -> dict[str, list[tuple[date, int]]]:
    """Each segment's daily sizes from ``since`` to ``until`` (inclusive),
    oldest first: what the drift check reads."""
    frame = daily_sizes(engine, since=since, until=until)
    series: dict[str, list[tuple[date, int]]] = {}
    for segment, day, size in zip(frame["segment"], frame["day"], frame["size"], strict=True):
        series.setdefault(segment, []).append((day.date(), int(size)))
    return series
