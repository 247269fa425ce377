"""Built-in recommender ``related``: products related to what the person looked
at and bought, from everyone's co-views and co-purchases.

Refresh (SQL, every product at once, ``segflow recommend refresh``):

- each person's interest in a product is their strongest event for it (a
  purchase weighs 3, an add_to_cart 2, a product_view 1) times its recency,
  ``0.5 ** (age / half_life)``; events older than ``window`` do not count;
- each person brings at most their ``per_person`` most recent products, and
  counts ``1 / ln(2 + products)``: a reseller who bought a thousand things says
  less about any two of them than a shopper who bought two;
- products a and b score the sum, over the people interested in both, of
  their interest in a times their interest in b, divided by b's overall
  interest to the power ``popularity_exponent`` (so that what everyone buys
  does not top every list); each product keeps its ``neighbours`` best;
- best-sellers: each product's summed interest over everyone, the fallback.

Serving one person (a few indexed reads): their ``seeds`` most recent products,
weighted like the refresh, each bring their ``per_seed`` best related products,
scored by the sum of seed interest times relatedness; the products they viewed,
carted or bought and those out of stock are left out (the email shows viewed
and carted ones in blocks of their own). When that gives fewer than k, the
best-sellers of the categories they looked at follow, then the overall
best-sellers. A fallback's score is below every score before it, so the list
is in score order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from core import (
    EVENTS,
    ProductHistory,
    Recommender,
    RecommenderTables,
    driver_rows,
    epoch_seconds,
    marks,
)

NAME = "related"


class RelatedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    half_life: timedelta = timedelta(days=90)
    window: timedelta | None = timedelta(days=365)
    weights: dict[str, float] = {"product_view": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
    per_person: int = Field(30, ge=2)
    neighbours: int = Field(50, ge=1)
    per_seed: int = Field(10, ge=1)
    popularity_exponent: float = Field(0.3, ge=0, le=1)
    seeds: int = Field(20, ge=1, le=100)


# -- refresh (everyone, SQL) ---------------------------------------------------------


def interest_query(params: RelatedParams, as_of: datetime) -> sa.Select:
    """(profile_id, product_id, w, last_ts): each person's interest in each product."""
    now = math.floor(as_of.timestamp())
    half = float(params.half_life.total_seconds())
    age = sa.literal(now, sa.BigInteger) - epoch_seconds(EVENTS.c.ts)
    weight = sa.case(*[(EVENTS.c.type == t, w) for t, w in params.weights.items()], else_=0.0)
    cond = [
        EVENTS.c.type.in_(list(params.weights)),
        EVENTS.c.product_id.is_not(None),
        EVENTS.c.ts <= as_of,
    ]
    if params.window is not None:
        cond.append(EVENTS.c.ts > as_of - params.window)
    return (
        sa.select(
            EVENTS.c.profile_id,
            EVENTS.c.product_id,
            sa.func.max(weight * sa.func.power(0.5, age / half)).label("w"),
            sa.func.max(EVENTS.c.ts).label("last_ts"),
        )
        .where(*cond)
        .group_by(EVENTS.c.profile_id, EVENTS.c.product_id)
    )


# The refresh's scratch table: one row per (person, product) it counts, indexed
# by person, so that pairing people's products is an index lookup per row.
ITEMS = "related_items"


def items_query(params: RelatedParams, as_of: datetime) -> sa.Select:
    """(profile_id, product_id, w, iuf): each person's ``per_person`` most
    recent products, their interest, and the person's weight."""
    interest = interest_query(params, as_of).subquery("interest")
    ranked = sa.select(
        interest.c.profile_id,
        interest.c.product_id,
        interest.c.w,
        sa.func.row_number()
        .over(
            partition_by=interest.c.profile_id,
            order_by=(interest.c.last_ts.desc(), interest.c.product_id),
        )
        .label("rn"),
        sa.func.count().over(partition_by=interest.c.profile_id).label("n"),
    ).subquery("ranked")
    kept = sa.case((ranked.c.n > params.per_person, params.per_person), else_=ranked.c.n)
    return sa.select(
        ranked.c.profile_id,
        ranked.c.product_id,
        ranked.c.w,
        (1.0 / sa.func.ln(2.0 + kept)).label("iuf"),
    ).where(ranked.c.rn <= params.per_person)


def related_query(params: RelatedParams, items: Any) -> sa.Select:
    """(product_id, related_id, score): each product's ``neighbours`` best."""
    norm = (
        sa.select(items.c.product_id, sa.func.sum(items.c.w * items.c.w).label("n"))
        .group_by(items.c.product_id)
        .subquery("norm")
    )
    a, b = items.alias("a"), items.alias("b")
    pairs = (
        sa.select(
            a.c.product_id.label("product_id"),
            b.c.product_id.label("related_id"),
            sa.func.sum(a.c.iuf * a.c.w * b.c.w).label("co"),
        )
        .select_from(
            a.join(b, sa.and_(b.c.profile_id == a.c.profile_id, b.c.product_id != a.c.product_id))
        )
        .group_by(a.c.product_id, b.c.product_id)
        .subquery("pairs")
    )
    score = pairs.c.co / sa.func.power(norm.c.n, params.popularity_exponent)
    rank = sa.func.row_number().over(
        partition_by=pairs.c.product_id, order_by=(score.desc(), pairs.c.related_id)
    )
    top = (
        sa.select(pairs.c.product_id, pairs.c.related_id, score.label("score"), rank.label("rank"))
        .join(norm, norm.c.product_id == pairs.c.related_id)
        .subquery("top")
    )
    return sa.select(top.c.product_id, top.c.related_id, top.c.score).where(
        top.c.rank <= params.neighbours
    )


def popular_query(params: RelatedParams, as_of: datetime) -> sa.Select:
    """(product_id, score): each product's interest summed over everyone."""
    interest = interest_query(params, as_of).subquery("interest")
    return sa.select(interest.c.product_id, sa.func.sum(interest.c.w)).group_by(
        interest.c.product_id
    )


def refresh_tables(conn: Any, params: RelatedParams, as_of: datetime) -> RecommenderTables:
    """Fill the scratch table; the SELECTs of the refresh read it."""
    sql = items_query(params, as_of).compile(
        dialect=conn.dialect, compile_kwargs={"literal_binds": True}
    )
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {ITEMS}")
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {ITEMS} AS {sql}")
    conn.exec_driver_sql(f"CREATE INDEX {ITEMS}_person ON {ITEMS} (profile_id, product_id, w)")
    if conn.dialect.name == "postgresql":
        # Temporary tables are never analysed on their own.
        conn.exec_driver_sql(f"ANALYZE {ITEMS}")
    items = sa.table(
        ITEMS,
        sa.column("profile_id", sa.BigInteger),
        sa.column("product_id", sa.String),
        sa.column("w", sa.Float),
        sa.column("iuf", sa.Float),
    )
    return RecommenderTables(
        related=related_query(params, items),
        popular=popular_query(params, as_of),
        scratch=(ITEMS,),
    )


# -- serving (one person) ------------------------------------------------------------


def seeds(history: ProductHistory, params: RelatedParams) -> dict[str, float]:
    """The person's ``params.seeds`` most recent products and their interest."""
    now = history.as_of.timestamp()
    half = params.half_life.total_seconds()
    out: dict[str, float] = {}
    for event in history.events:  # newest first
        weight = params.weights.get(event.type, 0.0)
        w = weight * 0.5 ** (max(now - event.ts.timestamp(), 0.0) / half)
        if event.product_id in out:
            out[event.product_id] = max(out[event.product_id], w)
        elif len(out) < params.seeds:
            out[event.product_id] = w
    return out


# Per person on the send path, so through the driver (``core.driver_rows``).
# A seed's best few neighbours are one short range of the key; stock is looked
# up for those only, in the same round trip.
_RELATED = (
    "SELECT r.product_id, r.related_id, r.score FROM product_related r"
    " JOIN products p ON p.id = r.related_id"
    " WHERE r.recommender = ? AND r.product_id IN ({seeds}) AND r.rank <= ? AND p.in_stock"
)
# Ties by id, descending: the index read backwards gives the order.
_BEST = (
    "SELECT b.product_id, b.score FROM product_popularity b"
    " JOIN products p ON p.id = b.product_id"
    " WHERE b.recommender = ? AND p.in_stock{categories}"
    " ORDER BY b.score DESC, b.product_id DESC LIMIT ?"
)
_CATEGORIES = "SELECT id, category FROM products WHERE id IN ({ids}) AND category IS NOT NULL"


def _related(
    conn: Any, name: str, seed: dict[str, float], seen: set[str], k: int, per_seed: int
) -> list[tuple[str, float]]:
    """The k best in-stock products related to the seeds, not among ``seen``:
    each seed's ``per_seed`` best neighbours, weighted by the seed's interest."""
    sql = _RELATED.format(seeds=marks(len(seed)))
    scores: dict[str, float] = defaultdict(float)
    for product_id, related_id, score in driver_rows(conn, sql, (name, *seed, per_seed)):
        if related_id not in seen:
            scores[related_id] += seed[product_id] * score
    ranked = sorted(scores, key=lambda p: (-scores[p], p))
    return [(p, scores[p]) for p in ranked[:k]]


def _best_sellers(
    conn: Any, name: str, limit: int, categories: list[str] | None = None
) -> list[tuple[str, float]]:
    if categories is None:
        sql, params = _BEST.format(categories=""), (name, limit)
    else:
        within = f" AND p.category IN ({marks(len(categories))})"
        sql, params = _BEST.format(categories=within), (name, *categories, limit)
    return [(p, s) for p, s in driver_rows(conn, sql, params)]


def _categories(conn: Any, seed: dict[str, float]) -> list[str]:
    weights: dict[str, float] = defaultdict(float)
    for product_id, category in driver_rows(conn, _CATEGORIES.format(ids=marks(len(seed))), seed):
        weights[category] += seed[product_id]
    return sorted(weights, key=lambda c: (-weights[c], c))


def serve(
    conn: Any,
    history: ProductHistory,
    k: int,
    as_of: datetime,
    *,
    name: str = NAME,
    params: RelatedParams | None = None,
) -> list[tuple[str, float]]:
    params = params or RelatedParams()
    seed = seeds(history, params)
    seen = {e.product_id for e in history.events} | history.bought
    chosen: dict[str, float] = {}
    if seed:
        chosen.update(_related(conn, name, seed, seen, k, params.per_seed))
        if len(chosen) == k:
            return list(chosen.items())
    # Fallbacks: ask for enough that k remain after leaving out what is taken.
    tiers = []
    if seed:
        tiers.append(_categories(conn, seed))
    tiers.append(None)
    for categories in tiers:
        if categories == []:
            continue
        below = min(chosen.values(), default=1.0) * 0.5
        # Enough that k remain after leaving out what the person has seen; more
        # only when they have seen most of those too.
        limit = 2 * k + len(chosen) + len(seen)
        while True:
            best = _best_sellers(conn, name, limit, categories)
            top = best[0][1] if best else 1.0
            fresh = [(p, s) for p, s in best if p not in seen and p not in chosen]
            if len(fresh) >= k - len(chosen) or len(best) < limit:
                break
            limit *= 4
        for product_id, popularity in fresh[: k - len(chosen)]:
            chosen[product_id] = below * popularity / top if top > 0 else 0.0
        if len(chosen) == k:
            break
    return list(chosen.items())


def make_recommender(name: str = NAME, params: RelatedParams | None = None) -> Recommender:
    """The related recommender under ``name`` with ``params`` (a plugin may
    register variants: another half-life, window or weights)."""
    chosen = params or RelatedParams()

    def recommend(conn: Any, history: ProductHistory, k: int, as_of: datetime):
        return serve(conn, history, k, as_of, name=name, params=chosen)

    def refresh(conn: Any, as_of: datetime) -> RecommenderTables:
        return refresh_tables(conn, chosen, as_of)

    return Recommender(
        name=name,
        description="related products from co-views and co-purchases, recency-weighted; "
        "category, then overall best-sellers as fallbacks",
        recommend=recommend,
        refresh=refresh,
    )
