"""The stored event counts (event_counts, product_counts) the overview reads:
kept by ingestion and erasure, they give what a scan of the events gives."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from core.dashboards import events_per_day, latest_day, top_products
from core.db import open_db
from core.db.tables import EVENTS
from core.ingestion import ingest
from core.privacy.erase import erase_person
from core.stats import database_summary

SECRET = "k" * 32
# Late on a day in New York is the next day in UTC: the day is the event's UTC day.
T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)


def events() -> list[dict]:
    out = []
    for i in range(24):
        who = f"u{i % 3}"
        ts = (T0 + timedelta(hours=5 * i)).astimezone(UTC)
        if i % 4 == 3:  # given in another zone, same instant
            ts = ts.astimezone(datetime.now().astimezone().tzinfo)
        product = f"P{i % 4}"
        out.append({"type": "product_view", "user_id": who, "ts": ts.isoformat(),
                    "product_id": product, "properties": {"name": f"{product} v{i}"}})  # fmt: skip
        if i % 3 == 0:
            out.append({"type": "purchase", "user_id": who, "ts": ts.isoformat(),
                        "product_id": product, "value": 10.0 + i / 4})  # fmt: skip
        out.append({"type": "page_view", "user_id": who, "ts": ts.isoformat(), "url": "/"})
    return out


def from_events(engine) -> dict:
    """The overview's figures recomputed from a scan of the events table."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EVENTS.c.ts, EVENTS.c.type, EVENTS.c.product_id, EVENTS.c.value)
        ).all()
    per_day = Counter((ts.astimezone(UTC).date(), t) for ts, t, _, _ in rows)
    views, buys, revenue = Counter(), Counter(), defaultdict(float)
    for _, t, p, v in rows:
        if t == "product_view":
            views[p] += 1
        elif t == "purchase":
            buys[p] += 1
            revenue[p] += v or 0.0
    return {
        "per_day": dict(per_day),
        "top": {p: (views[p], buys[p], round(revenue[p], 2)) for p in views},
        "by_type": dict(Counter(t for _, t, _, _ in rows)),
        "first": min(ts for ts, *_ in rows),
        "last": max(ts for ts, *_ in rows),
        "revenue": round(sum(v or 0.0 for _, t, _, v in rows if t == "purchase"), 2),
    }


def stored(engine) -> dict:
    frame = events_per_day(engine)
    top = top_products(engine, limit=100)
    summary = database_summary(engine)
    return {
        "per_day": {(r.day.date(), r.type): r.events for r in frame.itertuples()},
        "top": {r.product_id: (r.views, r.purchases, r.revenue) for r in top.itertuples()},
        "by_type": summary["by_type"],
        "first": datetime.fromisoformat(summary["first_event"]),
        "last": datetime.fromisoformat(summary["last_event"]),
        "revenue": summary["revenue"],
    }


def test_stored_counts_follow_ingestion_and_erasure(db_url):
    engine = open_db(db_url)
    assert not ingest(engine, events()).rejected
    assert ingest(engine, events()).duplicates  # the same again: nothing counted twice
    want = from_events(engine)
    assert stored(engine) == want
    assert len({day for day, _ in want["per_day"]}) > 4
    assert latest_day(engine) == want["last"].date()
    top = top_products(engine, limit=2)
    assert list(top["name"]) == ["P0 v20", "P1 v21"]  # the newest naming event's
    erase_person(engine, "u1", secret_key=SECRET)
    after = from_events(engine)
    assert after["by_type"]["product_view"] == 16
    assert stored(engine) == after
    window = events_per_day(engine, days=2)
    assert set(window["day"].dt.date) == {after["last"].date() - timedelta(days=d) for d in (0, 1)}


def test_the_migration_counts_the_events_already_stored(fresh_sqlite):
    from alembic import command

    from core.db import alembic_config, upgrade

    engine = open_db(fresh_sqlite())
    assert not ingest(engine, events()).rejected
    want = stored(engine)
    command.downgrade(alembic_config(engine), "0015")
    upgrade(engine)
    assert stored(engine) == want == from_events(engine)
