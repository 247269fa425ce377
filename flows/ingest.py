"""Prefect flow: import event files into the segflow database.

    files --> import_file_task (one task run per file) --> counts

The flow is thin: each task calls ``core.ingestion.import_file``, which
validates, de-duplicates and stores the events. Re-running a flow is safe
because duplicates (same ``message_id``) are skipped, which is also why a
failed import may simply be retried.

Files are imported one after the other, in the order given: identity
resolution follows event order (a later file may merge profiles created by an
earlier one), and SQLite has a single writer, so parallel imports would only
queue for the write lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from core.config import load_settings
from core.db import make_engine, open_db
from core.ingestion import (
    ImportUsageError,
    MappingError,
    estimate_records,
    import_file,
    worth_bulk_loading,
)
from core.plugins import events_ingested_hook, file_sources, profiles_loaded_hook
from core.types import ReadOptions

# How many rejected lines each file's counts list; the totals count them all.
SHOW_REJECTIONS = 50
# Asked wrongly (missing file, unknown format, bad mapping): a retry fails the same way.
NOT_RETRIED = (ImportUsageError, MappingError)


class IngestFlowError(RuntimeError):
    """Some files could not be imported; the others were."""


def retry_unless_usage_error(_task: Any, _task_run: TaskRun, state: State) -> bool:
    """``retry_condition_fn``: retry transient failures (database), not usage errors."""
    try:
        state.result()
    except NOT_RETRIED:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


def file_counts(report: Any) -> dict[str, Any]:
    return {
        "received": report.received,
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": len(report.rejected),
        "rejections": [str(r) for r in report.rejected[:SHOW_REJECTIONS]],
    }


@task(
    name="import-file",
    task_run_name="import {path}",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_usage_error,
    # An import is a side effect: never skip it because of a cached result.
    cache_policy=NO_CACHE,
    persist_result=False,
)
def import_file_task(
    path: str, database_url: str, options: ReadOptions, batch_size: int
) -> dict[str, Any]:
    engine, file = make_engine(database_url), Path(path)
    # A big file is a bulk load (crash-safe; open_db in the flow finishes one
    # a killed worker left). The process-wide tuning of the CLI's import is
    # not applied: a worker may run other tasks alongside.
    bulk = file.is_file() and worth_bulk_loading(engine, estimate_records(file))
    report = import_file(
        engine,
        file,
        options,
        sources=file_sources(),
        batch_size=batch_size,
        # As `segflow import`: a bulk load evaluates segments once, at its end.
        on_stored=events_ingested_hook(engine, bulk=bulk),
        on_loaded=profiles_loaded_hook(engine) if bulk else None,
        bulk=bulk,
    )
    counts = file_counts(report)
    get_run_logger().info(
        "%s: %d read, %d accepted, %d duplicates, %d rejected",
        path,
        counts["received"],
        counts["accepted"],
        counts["duplicates"],
        counts["rejected"],
    )
    return counts


@flow(name="ingest-files", log_prints=False)
def ingest_files(
    paths: list[str],
    database_url: str | None = None,
    mapping: dict | None = None,
    batch_size: int = 5000,
) -> dict[str, Any]:
    """Import JSON Lines / CSV files; returns counts per file and in total.

    ``mapping`` holds ``core.types.ReadOptions`` fields (CSV column mapping,
    timezone, ...). Bad lines are counted and listed, not fatal; a file that
    cannot be imported at all fails its task and, after the other files were
    imported, the flow.
    """
    database_url = database_url or load_settings().database_url
    options = ReadOptions(**(mapping or {}))
    open_db(database_url)  # create or upgrade the schema once, before the tasks write

    states = {
        path: import_file_task(path, database_url, options, batch_size, return_state=True)
        for path in paths
    }

    files: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for path, state in states.items():
        result = state.result(raise_on_failure=False)
        if state.is_completed():
            files[path] = result
        else:
            failures[path] = str(result) if isinstance(result, BaseException) else state.message
    totals = {
        key: sum(counts[key] for counts in files.values())
        for key in ("received", "accepted", "duplicates", "rejected")
    }
    if failures:
        raise IngestFlowError(
            f"{len(failures)} of {len(paths)} files failed: {'; '.join(failures.values())}"
            f" ({len(files)} imported, {totals['accepted']:,} new events)"
        )
    return {"files": files, "totals": totals}
