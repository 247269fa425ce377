"""The demo run: generate the store, import it, compute scores, run segments, summarise.

One function, ``run_demo``, so the command, a flow or a notebook get the same store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from core import (
    CommandError,
    condition_kinds,
    count_events,
    database_summary,
    delete_all_data,
    ingest,
    load_products,
    load_score_files,
    load_segment_files,
    refresh_products,
    refresh_recommendations,
    run_scores,
    run_segments,
    scoring_models,
    segment_change_hook,
    worth_bulk_loading,
)
from plugins.demo.emails import grant_signup_consents, send_demo_emails
from plugins.demo.generator import BASE_URL, CURRENCY, PRODUCTS_PER_CATEGORY, catalogue, generate
from plugins.demo.workflows import run_demo_workflows, save_demo_workflows

DEMO_SOURCE = "demo"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_SEGMENTS = EXAMPLES / "segments"
EXAMPLE_SCORES = EXAMPLES / "scores"
# Events per person the generator makes, about: decides up front whether to bulk load.
EVENTS_PER_PERSON = 60


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


def reset_demo(engine: Engine) -> None:
    """Delete a previous demo run; refuse when the database holds anything else."""
    other = count_events(engine, exclude_source=DEMO_SOURCE)
    if other:
        raise CommandError(
            f"refusing to reset: the database holds {other:,} events that are not demo "
            "data; run the demo on another database (--db sqlite:///demo.db)"
        )
    delete_all_data(engine)


def run_demo(
    engine: Engine,
    *,
    people: int = 5000,
    days: int = 90,
    seed: int = 42,
    reset: bool = False,
    segments: Path | None = None,
    scores: Path | None = None,
    workflows: Path | None = None,
    batch_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """Build the demo store and run the pipeline on it; the summary of what is stored.

    The summary is ``core.database_summary`` plus ``catalogue`` (products, out
    of stock), ``recommendations`` (what each refresh stored), ``segments`` (sizes),
    ``scores`` (profiles scored per score), ``import`` (the import report, 20
    rejections at most), ``full_run`` (whether segments ran in full),
    ``email_consents`` (people who opted in) and, given ``settings`` (with a
    secret key to sign tracking links), ``outbox``: the cart and browse emails
    of a few people, delivered to the outbox folder; ``workflows``: what the
    example workflows (``workflows``: another folder of them) did, a day later.
    """
    if reset:
        reset_demo(engine)
    report = ingest(
        engine,
        generate(people, seed=seed, days=days),
        source=DEMO_SOURCE,
        batch_size=batch_size,
        on_progress=on_progress,
        # No on_stored: segments are evaluated once, below, not per batch.
        bulk=worth_bulk_loading(engine, people * EVENTS_PER_PERSON),
    )
    now = datetime.now(UTC)
    consents = grant_signup_consents(engine)
    # The events' product properties first, then the shop's own catalogue,
    # newer than any event, with what events do not say (stock, images).
    refresh_products(engine)
    products = load_products(engine, catalogue_rows(seed), now=now)
    # Scores first: segments such as loyal_high_engagement read them.
    scored = run_scores(engine, load_score_files(scores or EXAMPLE_SCORES, scoring_models()), now)
    # Before the segments run: entering a segment starts the workflows' runs.
    workflow_names = save_demo_workflows(engine, now, workflows)
    kinds = condition_kinds()
    run = run_segments(
        engine,
        now,
        kinds=kinds,
        definitions=load_segment_files(segments or EXAMPLE_SEGMENTS, kinds),
        on_change=segment_change_hook(engine),
    )
    recommendations = refresh_recommendations(engine, now)
    summary = database_summary(engine)
    summary["catalogue"] = {
        "products": products.products,
        "out_of_stock": sum(not row["in_stock"] for row in catalogue_rows(seed)),
    }
    summary["recommendations"] = recommendations
    summary["segments"] = dict(sorted(run.sizes.items()))
    summary["scores"] = scored
    imported = report.as_dict()
    summary["import"] = imported | {"rejections": imported["rejections"][:20]}
    summary["full_run"] = run.full
    summary["email_consents"] = consents
    if settings is not None:
        summary["outbox"] = send_demo_emails(engine, settings, now)
    summary["workflows"] = run_demo_workflows(engine, settings, now, workflow_names)
    return summary
