"""Source freshness: per source and event type, the newest event and its lag.

Read from ``source_activity``, which the ingest path keeps in each batch's
transaction (core/ingestion/activity.py): a few rows, whatever the number of
events, where a GROUP BY over the events table would scan all of them. The
lag is measured from the newest event's time (``ts``), not from its receipt:
a source that keeps delivering old events is stale too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import SOURCE_ACTIVITY
from core.monitoring.alerts import Alert

CHECK = "source_freshness"
FRESHNESS_COLUMNS = ["source", "type", "last_event", "last_received", "lag_seconds", "events"]


def freshness(engine: Engine, now: datetime | None = None) -> pd.DataFrame:
    """Per (source, type): ``last_event`` (newest event time), ``last_received``
    (when the source last delivered one), ``lag_seconds`` (now minus
    ``last_event``; negative for events dated in the future) and ``events``
    (stored so far). Sorted by lag, largest first, then source and type."""
    now = now or datetime.now(UTC)
    query = sa.select(
        SOURCE_ACTIVITY.c.source,
        SOURCE_ACTIVITY.c.type,
        SOURCE_ACTIVITY.c.last_ts,
        SOURCE_ACTIVITY.c.last_received_at,
        SOURCE_ACTIVITY.c.events,
    )
    with engine.connect() as conn:
        rows = [
            (s, t, last, received, (now - last).total_seconds(), int(n))
            for s, t, last, received, n in conn.execute(query)
        ]
    rows.sort(key=lambda r: (-r[4], r[0], r[1]))
    frame = pd.DataFrame.from_records(rows, columns=FRESHNESS_COLUMNS)
    for column in ("last_event", "last_received"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def freshness_alerts(
    engine: Engine, now: datetime, lag_for: Callable[[str, str], timedelta]
) -> list[Alert]:
    """An Alert per (source, type) whose newest event is older than
    ``lag_for(source, type)``; critical beyond twice that lag."""
    alerts = []
    for r in freshness(engine, now).itertuples(index=False):
        allowed = lag_for(r.source, r.type)
        lag = timedelta(seconds=r.lag_seconds)
        if lag <= allowed:
            continue
        subject = f"{r.source}/{r.type}"
        alerts.append(
            Alert(
                CHECK,
                subject,
                "critical" if lag > 2 * allowed else "warning",
                f"{subject}: last event {r.last_event.isoformat()}, {describe_lag(lag)} ago "
                f"(allowed {describe_lag(allowed)})",
                now.astimezone(UTC).date(),
                {
                    "source": r.source,
                    "type": r.type,
                    "last_event": r.last_event.isoformat(),
                    "last_received": r.last_received.isoformat(),
                    "lag_seconds": r.lag_seconds,
                    "allowed_seconds": allowed.total_seconds(),
                },
            )
        )
    return alerts


def describe_lag(lag: timedelta) -> str:
    """3d 4h, 2h 5m, 45m, 30s: the two largest units."""
    seconds = int(lag.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])
