"""Prefect flow: refresh the stored campaign outcomes, run the monitoring
checks and store their alerts.

    refresh-campaign-outcomes task (core.refresh_outcomes: only what changed)
    registered checks (drift, freshness, data quality, plugins') --> run-checks task
        --> alerts opened / updated / resolved, on_alert actions performed

The task calls ``core.run_checks``, as ``segflow monitor check`` does. A run
is safe to repeat: an alert still firing is updated, not opened twice, and an
on_alert action is performed once per alert (by its idempotency key). A check
that raises fails the task (retried, as a transient failure may be the cause)
once the other checks' alerts are stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import DB_TASK, DatabaseUrl, as_of_or_now, database, flow_settings


@task(name="run-checks", **DB_TASK)
def run_checks_task(database_url: str, as_of: datetime) -> dict[str, Any]:
    from core import run_checks
    from core.config import load_settings

    settings = load_settings(database_url)
    with database(database_url) as engine:
        report = run_checks(engine, settings, as_of.astimezone(UTC).date(), now=as_of)
    log = get_run_logger()
    log.info(
        "%d checks on %s: %d alerts opened, %d updated, %d resolved",
        len(report.checks),
        report.day.isoformat(),
        sum(len(v) for v in report.opened.values()),
        sum(len(v) for v in report.updated.values()),
        sum(len(v) for v in report.resolved.values()),
    )
    for name, reason in sorted(report.errors.items()):
        log.error("check %s failed: %s", name, reason)
    if report.errors:
        # After the other checks' alerts are stored: a retry redoes nothing twice.
        failed = ", ".join(f"{n} ({r})" for n, r in sorted(report.errors.items()))
        raise CheckFailed(f"monitoring checks failed: {failed}")
    return report.as_dict()


@task(name="refresh-campaign-outcomes", **DB_TASK)
def refresh_outcomes_task(database_url: str) -> dict[str, Any]:
    from core import refresh_outcomes

    with database(database_url) as engine:
        report = refresh_outcomes(engine)
    get_run_logger().info(
        "campaign outcomes: %d participants, %d recomputed, %d dropped",
        report.participants,
        report.recomputed,
        report.dropped,
    )
    return report.as_dict()


class CheckFailed(RuntimeError):
    """Some check raised; the run's other alerts are stored."""


@flow(name="monitor", log_prints=False)
def monitor(database_url: DatabaseUrl = None, as_of: datetime | None = None) -> dict[str, Any]:
    """Run every registered monitoring check as of ``as_of`` (default now)
    and store the alerts; returns ``segflow monitor check --json``'s run
    report: day, checks, the alert ids opened / updated / resolved per check,
    the checks that failed and the on_alert actions performed."""
    settings = flow_settings(database_url)
    # The stored campaign outcomes first: the dashboards read them.
    refresh_outcomes_task(settings.database_url)
    return run_checks_task(settings.database_url, as_of_or_now(as_of))
