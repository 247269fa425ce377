"""The demo store's steps around the pipeline: write the store's events and
catalogue, grant the sign-ups' consents, summarise what the pipeline did.

``plugins.demo.flow`` runs them, with the pipeline flow in between.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import (
    EVENTS,
    CommandError,
    database_summary,
    delete_all_data,
    load_products,
    workflow_outcomes,
)
from plugins.demo.generator import BASE_URL, CURRENCY, PRODUCTS_PER_CATEGORY, catalogue, generate

# Every generated event's message id starts so (the generator's ids).
DEMO_IDS = "demo-"


# Sold out in every category: the second best-seller and the one ranked 12th,
# so recommendations visibly pass over popular products they cannot offer.
SOLD_OUT_RANKS = (1, 11)


def catalogue_rows(seed: int = 42) -> list[dict[str, Any]]:
    """The store's catalogue as ``core.load_products`` rows: the generator's
    products with their page, image and stock (a tenth sold out)."""
    return [
        {
            "id": p.id,
            "name": p.name,
            "category": p.category,
            "price": p.price,
            "currency": CURRENCY,
            "url": f"{BASE_URL}/p/{p.id}",
            "image_url": f"{BASE_URL}/img/{p.id}.jpg",
            # Products are listed by category, best-sellers first.
            "in_stock": i % PRODUCTS_PER_CATEGORY not in SOLD_OUT_RANKS,
        }
        for i, p in enumerate(catalogue(seed))
    ]


def refuse_real_data(engine: Engine) -> None:
    """CommandError when the database holds events that are not the demo's:
    a reset would delete them."""
    with engine.connect() as conn:
        other = conn.execute(
            sa.select(sa.func.count()).where(~EVENTS.c.message_id.startswith(DEMO_IDS))
        ).scalar_one()
    if other:
        raise CommandError(
            f"refusing to reset: the database holds {other:,} events that are not demo "
            "data; run the demo on another database (--db sqlite:///demo.db)"
        )


def reset_demo(engine: Engine) -> None:
    """Delete a previous demo run; refuse when the database holds anything else."""
    refuse_real_data(engine)
    delete_all_data(engine)


def write_events(
    path: Path,
    *,
    people: int,
    days: int,
    seed: int,
    end: datetime,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write the store's events, the ``days`` up to ``end``, to ``path`` as JSON
    Lines (what ``segflow import`` reads); how many. ``on_progress`` gets the
    count written every 10,000."""
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for n, event in enumerate(generate(people, seed=seed, days=days, end=end), 1):
            out.write(json.dumps(event, separators=(",", ":")))
            out.write("\n")
            if on_progress is not None and not n % 10_000:
                on_progress(10_000)
    if on_progress is not None:
        on_progress(n % 10_000)
    return n


def load_catalogue(engine: Engine, seed: int, now: datetime) -> dict[str, int]:
    """The shop's catalogue, stamped ``now``: newer than the events, so what
    they say of a product (price, name) never overrides stock and images."""
    rows = catalogue_rows(seed)
    report = load_products(engine, rows, now=now)
    return {"products": report.products, "out_of_stock": sum(not r["in_stock"] for r in rows)}


def summarise(engine: Engine, today: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """What is stored, with what the pipeline did ``today`` (ingest, scores,
    segments, recommendations) and ``later`` (the workflows a day on)."""
    summary = database_summary(engine)
    segments = today["segment"]
    summary["segments"] = {n: s["size"] for n, s in segments["segments"].items()}
    summary["full_run"] = segments["full"]
    summary["scores"] = today["scores"]["scored"] if today["scores"] else {}
    summary["recommendations"] = today["recommend"]["recommenders"]
    (imported,) = today["ingest"]["files"]["files"].values()
    summary["import"] = imported | {"rejections": imported["rejections"][:20]}
    summary["workflows"] = {
        "as_of": later["as_of"],
        "workflows": workflow_outcomes(engine),
        "performed": later["send"],
    }
    return summary
