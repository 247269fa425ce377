"""Prefect flow: sync people, consent, segments and segment events to every
configured ESP and CRM ([[connectors]] in segflow.toml).

    [[connectors]] --> sync task (one task run per connector) --> counts

The task calls ``core.run_sync``, as ``segflow sync run --connector NAME``
does. A run sends only what the remote has not confirmed, so a retried task
(or the next scheduled run) sends what a failed one did not: which is why
the task may retry, with backoff. Records the API refused are counted, not a
task failure; they are tried again by the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from core.config import load_settings
from flows.common import DatabaseUrl, database, flow_settings
from flows.common import retry_transient as retry_condition


@task(
    name="sync",
    task_run_name="sync {name}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def sync_task(database_url: str, name: str, dry_run: bool = False) -> dict[str, Any]:
    from core import run_sync
    from plugins.sync.config import configured, connector_of, target_of

    (config,) = configured(load_settings(database_url), name)
    with database(database_url) as engine:
        report = run_sync(engine, target_of(config), connector_of(config), dry_run=dry_run)
    counts = report.model_dump()
    get_run_logger().info(
        "%s: %d people, %d upserted, %d added, %d removed, %d events, %d unchanged; "
        "failed %s, to retry %s",
        name,
        report.people,
        report.upserted,
        report.added,
        report.removed,
        report.events,
        report.unchanged,
        report.failed or "none",
        report.retry or "none",
    )
    return counts


@flow(name="sync", log_prints=False)
def sync(
    database_url: DatabaseUrl = None, connectors: list[str] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Sync every [[connectors]] entry that syncs (or those named); returns
    each one's counts by name."""
    from plugins.sync.config import configured

    settings = flow_settings(database_url)
    names = connectors if connectors is not None else [c.name for c in configured(settings)]
    return {name: sync_task(settings.database_url, name, dry_run) for name in names}
