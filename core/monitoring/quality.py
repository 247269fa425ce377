"""Data-quality checks: events dated in the future, spikes of duplicate or
rejected records, and events lacking a field a segment aggregates.

Each reads only what it needs: future times and missing fields walk the
(type, ts) index over a recent window, spikes read ``ingest_counts`` (per day
and source, kept by the ingest path). All report under the ``data_quality``
check, with the kind in the subject and in ``details["kind"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import EVENTS, INGEST_COUNTS, SOURCE_ACTIVITY
from core.monitoring.alerts import Alert
from core.monitoring.drift import Band, robust_band
from core.monitoring.history import as_date
from core.segments.sqlfuncs import epoch_seconds, json_key
from core.segments.where import field_ref

CHECK = "data_quality"
INGEST_COUNTS_COLUMNS = ["day", "source", "accepted", "duplicates", "rejected"]
# With no history yet, a share of a day's records is held to this band.
NO_HISTORY_MAD = 0.01


def future_events(
    engine: Engine, now: datetime, tolerance: timedelta, window: timedelta = timedelta(days=1)
) -> pd.DataFrame:
    """Events dated more than ``tolerance`` after their receipt, among those
    dated from ``now - window`` on (every event received in the window that
    claims a later time is among them): per source and type, ``events``
    (how many), ``latest`` (the furthest time) and ``ahead_seconds`` (the
    most any is ahead of its receipt). Columns: source, type, events,
    latest, ahead_seconds; sorted by source, type."""
    start = now - window
    with engine.connect() as conn:
        types = conn.execute(
            sa.select(SOURCE_ACTIVITY.c.type)
            .where(SOURCE_ACTIVITY.c.last_ts >= start)
            .group_by(SOURCE_ACTIVITY.c.type)
        ).scalars()
        ahead = epoch_seconds(EVENTS.c.ts) - epoch_seconds(EVENTS.c.received_at)
        rows = []
        for type_ in sorted(types):
            query = (
                sa.select(
                    EVENTS.c.source,
                    sa.func.count().label("events"),
                    sa.func.max(EVENTS.c.ts).label("latest"),
                    sa.func.max(ahead).label("ahead"),
                )
                .where(
                    EVENTS.c.type == type_,
                    EVENTS.c.ts >= start,
                    ahead > int(tolerance.total_seconds()),
                )
                .group_by(EVENTS.c.source)
            )
            for source, n, latest, most in conn.execute(query):
                rows.append((source, type_, int(n), _utc(latest, engine), float(most)))
    rows.sort()
    return pd.DataFrame.from_records(
        rows, columns=["source", "type", "events", "latest", "ahead_seconds"]
    )


def future_alerts(
    engine: Engine, now: datetime, tolerance: timedelta, window: timedelta = timedelta(days=1)
) -> list[Alert]:
    day = now.astimezone(UTC).date()
    alerts = []
    for r in future_events(engine, now, tolerance, window).itertuples(index=False):
        subject = f"{r.source}/{r.type} future timestamps"
        alerts.append(
            Alert(
                CHECK,
                subject,
                "warning",
                f"{r.source}/{r.type}: {r.events:,} events dated after their receipt by more "
                f"than {_span(tolerance)} (up to {_span(timedelta(seconds=r.ahead_seconds))}, "
                f"latest {r.latest.isoformat()})",
                day,
                {
                    "kind": "future_timestamps",
                    "source": r.source,
                    "type": r.type,
                    "events": r.events,
                    "latest": r.latest.isoformat(),
                    "ahead_seconds": r.ahead_seconds,
                    "tolerance_seconds": tolerance.total_seconds(),
                },
            )
        )
    return alerts


def ingest_counts(
    engine: Engine, since: date | None = None, until: date | None = None
) -> pd.DataFrame:
    """Records ingested per UTC day of receipt and source: columns ``day``
    (datetime64), ``source``, ``accepted``, ``duplicates``, ``rejected``;
    sorted by source, then day."""
    query = sa.select(*(INGEST_COUNTS.c[c] for c in INGEST_COUNTS_COLUMNS))
    if since is not None:
        query = query.where(INGEST_COUNTS.c.day >= since)
    if until is not None:
        query = query.where(INGEST_COUNTS.c.day <= until)
    with engine.connect() as conn:
        rows = [(as_date(d), s, int(a), int(x), int(r)) for d, s, a, x, r in conn.execute(query)]
    rows.sort(key=lambda r: (r[1], r[0]))
    frame = pd.DataFrame.from_records(rows, columns=INGEST_COUNTS_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def spike_alerts(
    engine: Engine, day: date, *, k: float = 4.0, days: int = 14, min_count: int = 10
) -> list[Alert]:
    """Per source, an Alert when ``day``'s share of duplicate (or rejected)
    records is above median + k x MAD of the shares of the ``days`` days
    before, and at least ``min_count`` records. With under a week of history
    the band is 0 +- k x 1 point."""
    frame = ingest_counts(engine, since=day - timedelta(days=days), until=day)
    alerts = []
    for source, rows in frame.groupby("source", sort=True):
        by_day = {
            d.date(): (a, x, r)
            for d, a, x, r in rows[["day", "accepted", "duplicates", "rejected"]].itertuples(
                index=False
            )
        }
        if day not in by_day:
            continue
        for kind, column in (("duplicates", 1), ("rejects", 2)):
            alert = _spike(source, kind, column, by_day, day, k, min_count)
            if alert is not None:
                alerts.append(alert)
    return alerts


def _spike(
    source: str,
    kind: str,
    column: int,
    by_day: dict[date, tuple[int, int, int]],
    day: date,
    k: float,
    min_count: int,
) -> Alert | None:
    def share(counts: tuple[int, int, int]) -> float:
        total = sum(counts)
        return counts[column] / total if total else 0.0

    count = by_day[day][column]
    if count < min_count:
        return None
    history = [share(c) for d, c in sorted(by_day.items()) if d < day and sum(c)]
    band = robust_band(history, k, min_mad=NO_HISTORY_MAD) or Band(0.0, NO_HISTORY_MAD, k, 0)
    today = share(by_day[day])
    if today <= band.high:
        return None
    total = sum(by_day[day])
    basis = (
        f"median {band.median:.1%} +- {k:g} x MAD {band.mad:.1%} over {band.days} days"
        if band.days
        else f"no history yet: 0 +- {k:g} x {band.mad:.0%}"
    )
    return Alert(
        CHECK,
        f"{source} {kind}",
        "critical" if today > 0.5 else "warning",
        f"{source}: {count:,} {kind} of {total:,} records on {day.isoformat()} ({today:.1%}), "
        f"above {band.high:.1%} ({basis})",
        day,
        {
            "kind": kind,
            "source": source,
            "count": count,
            "records": total,
            "share": today,
            "median": band.median,
            "mad": band.mad,
            "high": band.high,
            "days": band.days,
        },
    )


def needed_fields(engine: Engine, kinds=None) -> dict[tuple[str, str], list[str]]:
    """(event type, field) -> the saved segments whose rules aggregate it."""
    from core.plugins import condition_kinds
    from core.segments.language import event_fields
    from core.segments.store import stored_segments

    with engine.connect() as conn:
        segments = stored_segments(conn, kinds or condition_kinds())
    needed: dict[tuple[str, str], list[str]] = {}
    for name, stored in sorted(segments.items()):
        for pair in event_fields(stored.segment.rule):
            needed.setdefault(pair, []).append(name)
    return needed


def missing_fields(
    engine: Engine,
    now: datetime,
    window: timedelta = timedelta(days=1),
    needed: dict[tuple[str, str], list[str]] | None = None,
) -> pd.DataFrame:
    """Per (type, field) a segment aggregates: among the events of that type
    dated in the last ``window``, how many lack the field. Columns: type,
    field, events, missing, share, segments (names, comma separated)."""
    needed = needed_fields(engine) if needed is None else needed
    start = now - window
    rows = []
    with engine.connect() as conn:
        for (type_, name), segments in sorted(needed.items()):
            where, key = field_ref(name)
            value = EVENTS.c[key] if where == "column" else json_key(EVENTS.c.properties, key)
            absent = sa.func.sum(sa.case((value.is_(None), 1), else_=0))
            n, missing = conn.execute(
                sa.select(sa.func.count(), absent).where(
                    EVENTS.c.type == type_, EVENTS.c.ts >= start, EVENTS.c.ts <= now
                )
            ).one()
            n, missing = int(n), int(missing or 0)
            rows.append((type_, name, n, missing, missing / n if n else 0.0, ", ".join(segments)))
    return pd.DataFrame.from_records(
        rows, columns=["type", "field", "events", "missing", "share", "segments"]
    )


def missing_alerts(
    engine: Engine,
    now: datetime,
    window: timedelta = timedelta(days=1),
    max_share: float = 0.05,
    needed: dict[tuple[str, str], list[str]] | None = None,
) -> list[Alert]:
    """An Alert per (type, field) lacking in more than ``max_share`` of the
    window's events of that type."""
    day = now.astimezone(UTC).date()
    alerts = []
    for r in missing_fields(engine, now, window, needed).itertuples(index=False):
        if not r.missing or r.share <= max_share:
            continue
        alerts.append(
            Alert(
                CHECK,
                f"{r.type}.{r.field} missing",
                "critical" if r.share > 0.5 else "warning",
                f"{r.type}: {r.missing:,} of {r.events:,} events in the last {_span(window)} "
                f"({r.share:.1%}) have no {r.field}, which {r.segments} aggregates",
                day,
                {
                    "kind": "missing_field",
                    "type": r.type,
                    "field": r.field,
                    "events": r.events,
                    "missing": r.missing,
                    "share": r.share,
                    "segments": r.segments.split(", "),
                },
            )
        )
    return alerts


def quality_alerts(engine: Engine, day: date, now: datetime, config) -> list[Alert]:
    """Every data-quality check with ``config``'s (MonitorSettings) thresholds."""
    found: Iterable[Alert] = [
        *future_alerts(engine, now, config.future_tolerance, config.missing_window),
        *spike_alerts(
            engine, day, k=config.spike_k, days=config.spike_days, min_count=config.spike_min
        ),
        *missing_alerts(engine, now, config.missing_window, config.missing_share),
    ]
    return list(found)


def _utc(value: datetime | str, engine: Engine) -> datetime:
    if isinstance(value, str):  # SQLite's max() of a column returns its text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _span(lag: timedelta) -> str:
    from core.monitoring.freshness import describe_lag

    return describe_lag(lag)
