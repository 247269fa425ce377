"""Prefect flow: perform the actions workflows recorded (emails, webhooks, ...).

    pending actions --> perform task --> counts per action and outcome

The task calls ``core.automation.perform_pending``. Every action carries an
idempotency key and goes through the messages outbox, so performing again
after a failure (a retry of this task, or the next scheduled run) neither sends
twice nor skips: which is why the task may retry, with backoff, when the
database or a service behind an action fails as a whole. One action failing is
not a task failure: it is counted (failed or retry, with the reason) and
tried again by the next run while it has attempts left.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from core.config import load_settings
from flows.common import DatabaseUrl, as_of_or_now, database, flow_settings
from flows.common import retry_transient as retry_condition


@task(
    name="perform-actions",
    retries=3,
    # External services: back off exponentially, with jitter, instead of hammering them.
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def perform_task(database_url: str, as_of: datetime) -> dict[str, Any]:
    from core.automation import perform_pending

    with database(database_url) as engine:
        report = perform_pending(engine, load_settings(database_url), as_of=as_of)
    counts = report.model_dump(mode="json")
    logger = get_run_logger()
    logger.info(
        "performed %s: %d done, skipped %s, failed %s, to retry %s",
        counts.get("performed"),
        counts.get("done", 0),
        counts.get("skipped"),
        counts.get("failed"),
        counts.get("retry"),
    )
    if counts.get("failed"):
        logger.warning("%d actions failed: %s", sum(counts["failed"].values()), counts["failed"])
    return counts


@flow(name="send", log_prints=False)
def send(database_url: DatabaseUrl = None, as_of: datetime | None = None) -> dict[str, Any]:
    """Perform every pending action as of ``as_of`` (default now); returns
    counts: performed per action, done, and skipped / failed / retry by reason."""
    settings = flow_settings(database_url)
    return perform_task(settings.database_url, as_of_or_now(as_of))
