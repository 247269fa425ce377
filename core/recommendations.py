"""Product recommendations: one person's, served from what recommenders
precompute for everyone.

Recommenders are plugins (``register_recommenders``). ``recommend`` reads the
person's product history, asks the recommender for ranked products and keeps
the promise every recommender is held to: nothing the person bought, nothing
out of stock, only products in the catalogue, each once, at most ``k``.
``refresh_recommendations`` runs each recommender's refresh and stores what it
computed, replacing the previous refresh in one transaction, so serving never
sees half of one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.catalog import PRODUCT_EVENT_TYPES, read_products
from core.db.models import utcnow
from core.db.sql import dialect_insert, driver_rows
from core.db.tables import (
    PRODUCT_POPULARITY,
    PRODUCT_RELATED,
    PRODUCTS,
    RECOMMENDER_RUNS,
)
from core.segments.batch import db_time, time_reader
from core.types import ProductEvent, ProductHistory, Recommender, RecommenderTables


class UnknownRecommender(ValueError):
    """No recommender of that name is registered."""


def _registry(recommenders: Mapping[str, Recommender] | None) -> Mapping[str, Recommender]:
    if recommenders is not None:
        return recommenders
    from core.plugins import recommenders as registered

    return registered()


def _chosen(name: str, found: Mapping[str, Recommender]) -> Recommender:
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UnknownRecommender(f"unknown recommender {name!r} (registered: {known})")
    return found[name]


# How many of a person's latest product events a recommender is given: enough
# for any recency-weighted seed set, and a bound on what a heavy buyer costs.
HISTORY_EVENTS = 100

# Through (profile_id, ts): a person's events, not every product event (the
# unary + keeps SQLite from walking (type, ts) instead).
_TYPE = {"sqlite": "+type"}
_TYPES = ", ".join(f"'{t}'" for t in PRODUCT_EVENT_TYPES)


def _events_sql(dialect: str, columns: str, types: str) -> str:
    return (
        f"SELECT {columns} FROM events WHERE profile_id = ? AND ts <= ?"
        f" AND product_id IS NOT NULL AND {_TYPE.get(dialect, 'type')} IN ({types})"
    )


def product_history(conn: Connection, profile_id: int, as_of: datetime) -> ProductHistory:
    """The person's latest HISTORY_EVENTS product events up to ``as_of``, newest
    first, and everything they bought up to then."""
    dialect = conn.dialect.name
    params = (profile_id, db_time(dialect, as_of))
    parse = time_reader(dialect)
    rows = driver_rows(
        conn,
        _events_sql(dialect, "type, product_id, ts", _TYPES)
        + f" ORDER BY ts DESC, id DESC LIMIT {HISTORY_EVENTS}",
        params,
    )
    events = tuple(ProductEvent(t, p, parse(ts)) for t, p, ts in rows)
    if len(events) < HISTORY_EVENTS:
        bought = frozenset(e.product_id for e in events if e.type == "purchase")
    else:
        sql = _events_sql(dialect, "DISTINCT product_id", "'purchase'")
        bought = frozenset(r[0] for r in driver_rows(conn, sql, params))
    return ProductHistory(profile_id, as_of, events, bought)


def recommend(
    conn: Connection,
    profile_id: int,
    *,
    k: int = 8,
    as_of: datetime | None = None,
    recommender: str = "related",
    recommenders: Mapping[str, Recommender] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``k`` products for one person, best first: each a dict of the
    product's columns (id, name, category, price, currency, url, image_url,
    in_stock) plus ``score``. ``as_of`` (default now): only events up to then
    count as the person's history. ``recommenders``: the registry to choose
    from (default: the plugins'); an unknown name raises UnknownRecommender."""
    chosen = _chosen(recommender, _registry(recommenders))
    if k < 1:
        return []
    when = (as_of or datetime.now(UTC)).astimezone(UTC)
    history = product_history(conn, profile_id, when)
    ranked = chosen.recommend(conn, history, k, when)
    wanted: dict[str, float] = {}
    for product_id, score in ranked:
        if product_id not in history.bought and product_id not in wanted:
            wanted[product_id] = float(score)
    if not wanted:
        return []
    rows = read_products(conn, list(wanted), in_stock=True)
    out = [{**rows[pid], "score": score} for pid, score in wanted.items() if pid in rows]
    return out[:k]


# -- refresh ----------------------------------------------------------------------


def _store(
    conn: Connection, table: sa.Table, columns: tuple[str, ...], name: str, part: Any
) -> int:
    """Insert one part of a refresh under the recommender's name; rows stored.
    Related products get their rank per product (1: the highest score)."""
    ranked = "related_id" in columns
    if isinstance(part, sa.sql.Selectable):
        computed = part.subquery("computed")
        values = [computed.c[i] for i in range(len(columns))]
        if ranked:
            product, related, score = values
            values.append(
                sa.func.row_number().over(partition_by=product, order_by=(score.desc(), related))
            )
        query = sa.select(sa.literal(name, sa.String), *values)
        names = ["recommender", *columns, *(["rank"] if ranked else [])]
        conn.execute(table.insert().from_select(names, query))
    else:
        rows = [dict(zip(columns, row, strict=True)) for row in part]
        if ranked:
            rows.sort(key=lambda r: (r["product_id"], -r["score"], r["related_id"]))
            rank, previous = 0, None
            for row in rows:
                rank = rank + 1 if row["product_id"] == previous else 1
                row["rank"], previous = rank, row["product_id"]
        if rows:
            conn.execute(table.insert(), [{"recommender": name, **row} for row in rows])
    # Counted, not the driver's rowcount: SQLite's is -1 for INSERT ... WITH.
    counted = sa.select(sa.func.count()).where(table.c.recommender == name)
    return conn.execute(counted).scalar_one()


def refresh_recommender(
    conn: Connection, recommender: Recommender, as_of: datetime
) -> dict[str, Any]:
    """Run one recommender's refresh and store it in place of the previous one
    (inside the caller's transaction)."""
    started = time.perf_counter()
    tables = recommender.refresh(conn, as_of) if recommender.refresh else RecommenderTables()
    name = recommender.name
    for table in (PRODUCT_RELATED, PRODUCT_POPULARITY):
        conn.execute(table.delete().where(table.c.recommender == name))
    related = _store(
        conn, PRODUCT_RELATED, ("product_id", "related_id", "score"), name, tables.related
    )
    popular = _store(conn, PRODUCT_POPULARITY, ("product_id", "score"), name, tables.popular)
    for scratch in tables.scratch:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {scratch}")
    if conn.dialect.name == "postgresql":
        # Refilled at once, faster than autovacuum notices (the catalogue too,
        # when just imported): without fresh statistics the planner reads all
        # of a recommender's rows, or the whole catalogue, per person.
        for table in (PRODUCT_RELATED, PRODUCT_POPULARITY, PRODUCTS):
            conn.exec_driver_sql(f"ANALYZE {table.name}")
    insert = dialect_insert(conn, RECOMMENDER_RUNS)
    values = {"as_of": as_of, "refreshed_at": utcnow(), "related": related, "popular": popular}
    conn.execute(
        insert.values(recommender=name, **values).on_conflict_do_update(
            index_elements=[RECOMMENDER_RUNS.c.recommender],
            set_={key: insert.excluded[key] for key in values},
        )
    )
    return {
        "recommender": name,
        "as_of": as_of.isoformat(),
        "related": related,
        "popular": popular,
        "seconds": round(time.perf_counter() - started, 3),
    }


def refresh_recommendations(
    engine: Engine,
    as_of: datetime | None = None,
    *,
    names: Iterable[str] | None = None,
    recommenders: Mapping[str, Recommender] | None = None,
) -> list[dict[str, Any]]:
    """Refresh every recommender that precomputes (or those ``names``) as of
    ``as_of`` (default now), each in its own transaction; what each stored."""
    when = (as_of or datetime.now(UTC)).astimezone(UTC)
    found = _registry(recommenders)
    chosen = [_chosen(n, found) for n in names] if names is not None else list(found.values())
    done = []
    for recommender in chosen:
        if recommender.refresh is None and names is None:
            continue
        with engine.begin() as conn:
            done.append(refresh_recommender(conn, recommender, when))
    return done
