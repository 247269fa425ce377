"""Prefect flow: a workflow tick.

    workflow files (or stored) --> tick task --> counts per workflow
                                   [events stored since --> runs they start]

The task calls ``core.automation.run_tick``, as ``segflow workflows run-tick``
does: new versions of changed definitions are saved, schedules and date
triggers start runs, and every due run moves on (waits that ended, branches,
actions recorded). Recorded actions are performed by the send flow.

Given ``history_since``, the events stored since then start the runs their
triggers start (``core.automation.enter_from_history``): for events that were
loaded before the workflows existed, or by a bulk load (the demo).

``save_workflows_task`` stores the definitions without a tick: the pipeline
saves them first, so the events it ingests and the segments it runs start runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from core.config import load_settings
from flows.common import (
    DB_TASK,
    EXAMPLE_WORKFLOWS,
    DatabaseUrl,
    as_of_or_now,
    database,
    flow_settings,
    folder,
)


# A tick writes runs and actions; a retried one moves only what is still due.
@task(name="tick", **DB_TASK)
def tick_task(
    database_url: str, directory: str | None, as_of: datetime, history_since: datetime | None
) -> dict[str, Any]:
    from core.automation import enter_from_history, load_workflow_files, run_tick

    definitions = load_workflow_files(Path(directory)) if directory else None
    with database(database_url) as engine:
        report = run_tick(engine, load_settings(database_url), as_of=as_of, definitions=definitions)
        if history_since is not None:
            # After the tick, which saved the definitions; the runs started
            # take their first steps now, as runs started by arriving events do.
            enter_from_history(engine, history_since, as_of, as_of=as_of, report=report)
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


@task(name="save-workflows", **DB_TASK)
def save_workflows_task(database_url: str, directory: str) -> dict[str, int]:
    """Store new versions of the changed definitions in ``directory``; the
    version of each."""
    from core.automation import load_workflow_files, save_workflows

    definitions = load_workflow_files(Path(directory))
    with database(database_url) as engine, engine.begin() as conn:
        saved = save_workflows(conn, definitions)
    for s in saved.values():
        get_run_logger().info("%s: version %d%s", s.name, s.version, " (new)" if s.changed else "")
    return {name: s.version for name, s in sorted(saved.items())}


@flow(name="automate", log_prints=False)
def automate(
    directory: str | None = str(EXAMPLE_WORKFLOWS),
    database_url: DatabaseUrl = None,
    as_of: datetime | None = None,
    history_since: datetime | None = None,
) -> dict[str, Any]:
    """Save the workflow definitions in ``directory`` (None: the stored ones
    only) and run one tick as of ``as_of`` (default now), then start the runs
    that events stored since ``history_since`` (None: none) trigger; returns
    the tick's report: as_of and, per workflow, entered, advanced, actions,
    held out, exited, skipped and deferred (with reasons)."""
    settings = flow_settings(database_url)
    found = folder(directory, "workflows")
    when = as_of_or_now(as_of)
    since = as_of_or_now(history_since) if history_since is not None else None
    return tick_task(settings.database_url, str(found) if found else None, when, since)
