"""Data for the analysts' dashboards (the marimo notebooks), as pandas DataFrames.

Pure functions of the database: the grouping happens in SQL (SQLAlchemy Core,
same results on SQLite and PostgreSQL), the notebooks only chart the frames.
Days are UTC calendar days, like every stored timestamp.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import EVENT_COUNTS, EVENTS, PRODUCT_COUNTS

EVENTS_PER_DAY_COLUMNS = ["day", "type", "events"]
TOP_PRODUCTS_COLUMNS = ["product_id", "name", "category", "views", "purchases", "revenue"]


def utc_day(engine: Engine, ts: sa.ColumnElement) -> sa.ColumnElement:
    """The UTC calendar day of a stored timestamp, in the engine's SQL dialect."""
    if engine.dialect.name == "postgresql":
        # timestamptz -> naive UTC timestamp -> date; independent of the session TimeZone.
        return sa.cast(sa.func.timezone("UTC", ts), sa.Date)
    # SQLite keeps naive UTC text ("2024-05-01 10:00:00.000000"): date() gives "2024-05-01".
    return sa.func.date(ts)


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


def latest_day(engine: Engine) -> date | None:
    """The UTC day of the most recent event, or None when there are none."""
    with engine.connect() as conn:
        last = conn.execute(
            sa.select(sa.func.max(EVENT_COUNTS.c.day)).where(EVENT_COUNTS.c.events > 0)
        ).scalar_one()
    return _as_date(last) if last is not None else None


def events_per_day(engine: Engine, days: int | None = None) -> pd.DataFrame:
    """Events per UTC day and type: columns ``day`` (datetime64), ``type``, ``events``.

    ``days``: only the last ``days`` days up to the latest event's day (the
    window follows the data, so an old import still shows); None means all.
    Rows are sorted by day, then type; days without events have no rows. Read
    from the counts ingestion keeps (``event_counts``), not from the events.
    """
    c = EVENT_COUNTS.c
    total = sa.func.sum(c.events)
    query = (
        sa.select(c.day, c.type, total.label("events")).group_by(c.day, c.type).having(total > 0)
    )
    if days is not None:
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        last = latest_day(engine)
        if last is None:
            return _frame([], EVENTS_PER_DAY_COLUMNS)
        query = query.where(c.day >= last - timedelta(days=days - 1))
    with engine.connect() as conn:
        rows = [(_as_date(d), t, int(n)) for d, t, n in conn.execute(query)]
    frame = _frame(sorted(rows), EVENTS_PER_DAY_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def top_products(engine: Engine, limit: int = 10) -> pd.DataFrame:
    """The most viewed products with their purchases and revenue.

    Columns: ``product_id``, ``name``, ``category`` (the latest ones seen in the
    events' properties, None if never given), ``views`` (product_view events),
    ``purchases`` (purchase events, one per order line), ``revenue`` (sum of
    their values). Sorted by views, then purchases (both descending), then id.
    The counts come from ``product_counts`` (kept by ingestion), the names from
    a few index reads of the newest events of those products.
    """
    c = PRODUCT_COUNTS.c
    is_view = c.type == "product_view"
    is_purchase = c.type == "purchase"
    views = sa.func.sum(sa.case((is_view, c.events), else_=0)).label("views")
    purchases = sa.func.sum(sa.case((is_purchase, c.events), else_=0)).label("purchases")
    revenue = sa.func.sum(sa.case((is_purchase, c.value), else_=0.0)).label("revenue")
    ranked = (
        sa.select(c.product_id, views, purchases, revenue)
        .where(c.type.in_(["product_view", "purchase"]))
        .group_by(c.product_id)
        .having(views > 0)
        .order_by(views.desc(), purchases.desc(), c.product_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        top = conn.execute(ranked).all()
        names = _latest_names(conn, [r.product_id for r in top])
    rows = [
        (
            r.product_id,
            *names.get(r.product_id, (None, None)),
            int(r.views),
            int(r.purchases),
            round(float(r.revenue), 2),
        )
        for r in top
    ]
    return _frame(rows, TOP_PRODUCTS_COLUMNS)


def _latest_names(
    conn: sa.Connection, product_ids: list[str]
) -> dict[str, tuple[str | None, str | None]]:
    """product id -> (name, category) from its most recent event that names it.

    Per product, the newest naming event of each type that has its events
    (most frequent type first), read backwards through the (type, ts) index;
    after the first, only events at least as new as the best so far are
    looked at, so each read stops after a few index entries."""
    if not product_ids:
        return {}
    c = PRODUCT_COUNTS.c
    types: dict[str, list[str]] = {}
    per_type = (
        sa.select(c.product_id, c.type, sa.func.sum(c.events).label("n"))
        .where(c.product_id.in_(product_ids))
        .group_by(c.product_id, c.type)
        .having(sa.func.sum(c.events) > 0)
    )
    for pid, type_, _ in sorted(conn.execute(per_type), key=lambda r: (r[0], -r[2], r[1])):
        types.setdefault(pid, []).append(type_)
    name = EVENTS.c.properties["name"].as_string()
    category = EVENTS.c.properties["category"].as_string()
    found: dict[str, tuple[str | None, str | None]] = {}
    for pid in product_ids:
        best: tuple | None = None
        for type_ in types.get(pid, []):
            query = (
                sa.select(EVENTS.c.ts, EVENTS.c.id, name, category)
                .where(EVENTS.c.type == type_, EVENTS.c.product_id == pid, name.is_not(None))
                .order_by(EVENTS.c.ts.desc(), EVENTS.c.id.desc())
                .limit(1)
            )
            if best is not None:
                query = query.where(EVENTS.c.ts >= best[0])
            row = conn.execute(query).first()
            if row is not None and (best is None or (row[0], row[1]) > (best[0], best[1])):
                best = tuple(row)
        if best is not None:
            found[pid] = (best[2], best[3])
    return found


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=columns)


# -- segments and scores over time (the dashboard notebook) ---------------------------------

SIZE_HISTORY_COLUMNS = ["day", "segment", "size"]
FLOW_COLUMNS = ["day", "segment", "entered", "exited"]
SCORE_BINS_COLUMNS = ["model", "low", "high", "profiles"]


def _since(engine: Engine, column: sa.Column, days: int | None) -> datetime | None:
    """Midnight UTC ``days - 1`` days before the latest value of ``column``: the
    window follows the data, like events_per_day's."""
    if days is None:
        return None
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(column))).scalar_one()
    if last is None:
        return None
    return datetime.combine(
        last.astimezone(UTC).date() - timedelta(days=days - 1), datetime.min.time(), UTC
    )


def segment_size_history(engine: Engine, days: int | None = 90) -> pd.DataFrame:
    """Each segment's size per UTC day, read from the stored sizes (runs and
    back-fills), never recomputed: columns ``day`` (datetime64), ``segment``,
    ``size``. A day with several runs shows its last one; the window is the
    last ``days`` days up to the latest stored size (None: all). Sorted by
    day, then segment."""
    from core.db.tables import SEGMENT_SIZES, SEGMENTS

    query = sa.select(SEGMENTS.c.name, SEGMENT_SIZES.c.as_of, SEGMENT_SIZES.c.size).join(
        SEGMENTS, SEGMENTS.c.id == SEGMENT_SIZES.c.segment_id
    )
    since = _since(engine, SEGMENT_SIZES.c.as_of, days)
    if since is not None:
        query = query.where(SEGMENT_SIZES.c.as_of >= since)
    latest: dict[tuple[date, str], tuple[datetime, int]] = {}
    with engine.connect() as conn:
        for name, as_of, size in conn.execute(query):
            key = (as_of.astimezone(UTC).date(), name)
            if key not in latest or as_of > latest[key][0]:
                latest[key] = (as_of, int(size))
    rows = [(day, name, size) for (day, name), (_, size) in sorted(latest.items())]
    frame = _frame(rows, SIZE_HISTORY_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def segment_flows(engine: Engine, days: int | None = 90) -> pd.DataFrame:
    """People entering and leaving each segment per UTC day, from the recorded
    membership changes (``core.monitoring.history.daily_changes``): columns
    ``day`` (datetime64), ``segment``, ``entered``, ``exited``; the last
    ``days`` days up to the latest change (None: all). Days without changes
    have no rows. Sorted by day, then segment."""
    from core.db.tables import CHANGES, SEGMENTS
    from core.monitoring.history import daily_changes

    if days is not None and days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    since = None
    if days is not None:
        with engine.connect() as conn:
            ids = conn.execute(sa.select(SEGMENTS.c.id)).scalars().all()
            # The latest change, one index seek per segment (max(at) alone would scan).
            lasts = [
                conn.execute(
                    sa.select(sa.func.max(CHANGES.c.at)).where(CHANGES.c.segment_id == sid)
                ).scalar_one()
                for sid in ids
            ]
        last = max((t for t in lasts if t is not None), default=None)
        if last is None:
            return _frame([], FLOW_COLUMNS).assign(day=pd.to_datetime([]))
        since = last.astimezone(UTC).date() - timedelta(days=days - 1)
    frame = daily_changes(engine, since=since)
    return frame.sort_values(["day", "segment"], kind="stable").reset_index(drop=True)


def score_models(engine: Engine) -> list[str]:
    """The scoring models with stored scores, by name."""
    from core.db.tables import SCORES

    # A skip scan of the (model, as_of) index: one seek per model, where
    # DISTINCT would read every score row.
    found: list[str] = []
    with engine.connect() as conn:
        while True:
            query = sa.select(sa.func.min(SCORES.c.model))
            if found:
                query = query.where(SCORES.c.model > found[-1])
            model = conn.execute(query).scalar_one()
            if model is None:
                return found
            found.append(model)


def score_distribution(engine: Engine, model: str, bins: int = 20) -> pd.DataFrame:
    """How a scoring model's latest run spreads over its range: ``bins``
    equal-width bins from the run's lowest to its highest value, columns
    ``model``, ``low``, ``high`` (a value v is in the bin low <= v < high, the
    last bin includes its high), ``profiles``. Empty bins have rows with 0; a
    model without scores gives no rows."""
    from core.db.tables import SCORES

    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    rows: list[tuple[str, float, float, int]] = []
    with engine.connect() as conn:
        as_of = conn.execute(
            sa.select(sa.func.max(SCORES.c.as_of)).where(SCORES.c.model == model)
        ).scalar_one()
        if as_of is None:
            return _frame(rows, SCORE_BINS_COLUMNS)
        latest = (SCORES.c.model == model, SCORES.c.as_of == as_of)
        low, high = conn.execute(
            sa.select(sa.func.min(SCORES.c.value), sa.func.max(SCORES.c.value)).where(*latest)
        ).one()
        width = (high - low) / bins or 1.0
        index = sa.cast(sa.func.floor((SCORES.c.value - low) / width), sa.Integer)
        # The run's highest value belongs to the last bin, not one past it.
        index = sa.case((index >= bins, bins - 1), else_=index).label("bin")
        counts = dict(
            conn.execute(sa.select(index, sa.func.count()).where(*latest).group_by(index)).all()
        )
    for i in range(bins):
        rows.append((model, low + i * width, low + (i + 1) * width, counts.get(i, 0)))
    return _frame(rows, SCORE_BINS_COLUMNS)
