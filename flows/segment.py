"""Prefect flow: evaluate the segments and record who entered and left.

    definitions (folder or stored) --> run-segments task --> counts per segment

The task calls ``core.segments.store.run_segments``, as ``segflow segments run``
does, with the ``on_segment_change`` hook (workflows start from it). A run is
incremental: only people with new events, a due window or changed traits are
evaluated, and a segment whose definition changed since it was saved is
evaluated for everyone (run_segments compares each definition with the stored
one). ``full=True`` evaluates everyone for every segment.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from core.plugins import condition_kinds, segment_change_hook
from core.segments.report import run_report
from core.segments.store import load_segment_files, run_segments
from flows.common import (
    DB_TASK,
    EXAMPLE_SEGMENTS,
    DatabaseUrl,
    as_of_or_now,
    database,
    flow_settings,
    folder,
)


# Records memberships and changes: never skipped for a cached result.
@task(name="run-segments", **DB_TASK)
def run_segments_task(
    database_url: str, directory: str | None, as_of: datetime, full: bool
) -> dict[str, Any]:
    kinds = condition_kinds()
    definitions = load_segment_files(Path(directory), kinds) if directory else None
    with database(database_url) as engine:
        result = run_segments(
            engine,
            as_of,
            kinds=kinds,
            definitions=definitions,
            full=full,
            on_change=segment_change_hook(engine),
        )
    report = run_report(result)
    get_run_logger().info(
        "%s run as of %s: %d profiles evaluated, %d entered, %d exited",
        "full" if result.full else "incremental",
        report["as_of"],
        result.evaluated,
        sum(result.entered.values()),
        sum(result.exited.values()),
    )
    return report


@flow(name="segment", log_prints=False)
def segment(
    directory: str | None = str(EXAMPLE_SEGMENTS),
    database_url: DatabaseUrl = None,
    as_of: datetime | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """Save the segment definitions in ``directory`` (None: the stored ones
    only), evaluate and record entries and exits as of ``as_of`` (default now).

    Returns ``segments run --json``'s report: as_of, full, evaluated, and per
    segment size, entered and exited.
    """
    settings = flow_settings(database_url)
    when = as_of_or_now(as_of)
    found = folder(directory, "segments")
    # Bad definitions fail the task once (not retried) and the flow, with file and line.
    return run_segments_task(settings.database_url, str(found) if found else None, when, full)
