"""Prefect flow: the catalogue from the product events, then the recommendations.

    product events --> refresh-catalogue task --> products updated
    events, catalogue --> refresh-recommendations task --> what each recommender stored

The tasks call ``core.refresh_products`` (``segflow catalog refresh``) and
``core.refresh_recommendations`` (``segflow recommend refresh``). The catalogue
goes first: recommendations leave out products that are out of stock. Both are
safe to run again (the catalogue resumes at the events it has not read; each
recommender replaces what it stored in one transaction), so they may retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import DB_TASK, DatabaseUrl, as_of_or_now, database, flow_settings


@task(name="refresh-catalogue", **DB_TASK)
def refresh_catalogue_task(database_url: str) -> int:
    from core import refresh_products

    with database(database_url) as engine:
        updated = refresh_products(engine)
    get_run_logger().info("%d products updated from events", updated)
    return updated


@task(name="refresh-recommendations", **DB_TASK)
def refresh_recommendations_task(database_url: str, as_of: datetime) -> list[dict[str, Any]]:
    from core import refresh_recommendations

    with database(database_url) as engine:
        done = refresh_recommendations(engine, as_of)
    for d in done:
        get_run_logger().info(
            "%s: %d related pairs, %d best-sellers", d["recommender"], d["related"], d["popular"]
        )
    return done


@flow(name="recommend", log_prints=False)
def recommend(database_url: DatabaseUrl = None, as_of: datetime | None = None) -> dict[str, Any]:
    """Update the catalogue from new product events and recompute every
    recommender's related products and best-sellers as of ``as_of`` (default
    now); returns products_updated and what each recommender stored."""
    settings = flow_settings(database_url)
    url, when = settings.database_url, as_of_or_now(as_of)
    updated = refresh_catalogue_task(url)
    return {
        "as_of": when.isoformat(),
        "products_updated": updated,
        "recommenders": refresh_recommendations_task(url, when),
    }
