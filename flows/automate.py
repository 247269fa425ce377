"""Prefect flow: a workflow tick.

    workflow files (or stored) --> tick task --> counts per workflow

The task calls ``core.automation.run_tick``, as ``segflow workflows run-tick``
does: new versions of changed definitions are saved, schedules and date
triggers start runs, and every due run moves on (waits that ended, branches,
actions recorded). Recorded actions are performed by the send flow.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import load_settings
from flows.common import EXAMPLE_WORKFLOWS, as_of_or_now, database, flow_settings, folder
from flows.common import retry_transient as retry_condition


@task(
    name="tick",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_condition,
    # A tick writes runs and actions; a retried one moves only what is still due.
    cache_policy=NO_CACHE,
    persist_result=False,
)
def tick_task(database_url: str, directory: str | None, as_of: datetime) -> dict[str, Any]:
    from core.automation import load_workflow_files, run_tick

    definitions = load_workflow_files(Path(directory)) if directory else None
    with database(database_url) as engine:
        report = run_tick(engine, load_settings(database_url), as_of=as_of, definitions=definitions)
    counts = report.model_dump(mode="json")
    logger = get_run_logger()
    for name, c in sorted(counts.get("workflows", {}).items()):
        logger.info(
            "%s: %d entered, %d advanced, %d actions, %d held out, %d exited",
            name,
            c.get("entered", 0),
            c.get("advanced", 0),
            c.get("actions", 0),
            c.get("held_out", 0),
            c.get("exited", 0),
        )
    return counts


@flow(name="automate", log_prints=False)
def automate(
    directory: str | None = str(EXAMPLE_WORKFLOWS),
    database_url: str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Save the workflow definitions in ``directory`` (None: the stored ones
    only) and run one tick as of ``as_of`` (default now); returns the tick's
    report: as_of and, per workflow, entered, advanced, actions, held out,
    exited, skipped and deferred (with reasons)."""
    settings = flow_settings(database_url)
    found = folder(directory, "workflows")
    return tick_task(settings.database_url, str(found) if found else None, as_of_or_now(as_of))
