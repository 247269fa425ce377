"""Prefect flows: import event files, pull the configured HTTP feeds.

    files --> import_file_task (one task run per file) --> counts
    [[sources.poll]] entries --> poll_task (one task run per feed) --> counts

The flow is thin: each task calls ``core.ingestion.import_file``, which
validates, de-duplicates and stores the events. Re-running a flow is safe
because duplicates (same ``message_id``) are skipped, which is also why a
failed import may simply be retried.

Files are imported one after the other, in the order given: identity
resolution follows event order (a later file may merge profiles created by an
earlier one), and SQLite has a single writer, so parallel imports would only
queue for the write lock. Feeds are polled one after the other for the same
reason; each poll resumes at the cursor its source stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from core.config import ConfigError, load_settings
from core.db import make_engine, open_db
from core.ingestion import (
    ImportUsageError,
    MappingError,
    estimate_records,
    import_file,
    worth_bulk_loading,
)
from core.plugins import events_ingested_hook, file_sources, profiles_loaded_hook
from core.types import ReadOptions, UsageError
from flows.common import DatabaseUrl, database, plain_url, retry_unless

# How many rejected lines each file's counts list; the totals count them all.
SHOW_REJECTIONS = 50
# Asked wrongly (missing file, unknown format, bad mapping): a retry fails the same way.
NOT_RETRIED = (ImportUsageError, MappingError)


COUNTED = ("received", "accepted", "duplicates", "rejected")


class IngestFlowError(RuntimeError):
    """Some files (or feeds) could not be imported; the others were."""


# Retry transient failures (database), not usage errors.
retry_unless_usage_error = retry_unless(*NOT_RETRIED)


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
    database_url: DatabaseUrl = None,
    mapping: dict | None = None,
    batch_size: int = 5000,
) -> dict[str, Any]:
    """Import JSON Lines / CSV files; returns counts per file and in total.

    ``mapping`` holds ``core.types.ReadOptions`` fields (CSV column mapping,
    timezone, ...). Bad lines are counted and listed, not fatal; a file that
    cannot be imported at all fails its task and, after the other files were
    imported, the flow.
    """
    database_url = plain_url(database_url) or load_settings().database_url
    options = ReadOptions(**(mapping or {}))
    open_db(database_url)  # create or upgrade the schema once, before the tasks write

    states = {
        path: import_file_task(path, database_url, options, batch_size, return_state=True)
        for path in paths
    }
    files, totals = _gather(states, "files", "imported")
    return {"files": files, "totals": totals}


def _gather(states: dict[str, State], what: str, done: str) -> tuple[dict, dict[str, int]]:
    """Counts per item and in total from task states; IngestFlowError naming
    the failed ones (after all the others ran)."""
    items: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name, state in states.items():
        result = state.result(raise_on_failure=False)
        if state.is_completed():
            items[name] = result
        else:
            failures[name] = str(result) if isinstance(result, BaseException) else state.message
    totals = {key: sum(counts[key] for counts in items.values()) for key in COUNTED}
    if failures:
        raise IngestFlowError(
            f"{len(failures)} of {len(states)} {what} failed: {'; '.join(failures.values())}"
            f" ({len(items)} {done}, {totals['accepted']:,} new events)"
        )
    return items, totals


# A feed's own requests are retried with backoff inside a poll; a poll that
# still fails (the feed down for longer) is tried again later, backing off.
# Wrong settings are not retried.
@task(
    name="poll",
    task_run_name="poll {name}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=30),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless(UsageError, ConfigError, ValueError),
    cache_policy=NO_CACHE,
    persist_result=False,
)
def poll_task(name: str, database_url: str) -> dict[str, Any]:
    # The polling source is a built-in plugin: `segflow poll NAME --once` runs the same.
    from plugins.sources.polling import SECTION, run

    config = load_settings(database_url).plugin_entry(SECTION, name, "poll")
    with database(database_url) as engine:
        result = run(engine, config, once=True)
    counts = {"pages": result.pages, **file_counts(result.report)}
    get_run_logger().info(
        "%s: %d page(s), %d new events, %d duplicates, %d rejected",
        name,
        result.pages,
        counts["accepted"],
        counts["duplicates"],
        counts["rejected"],
    )
    return counts


def poll_names(settings: Any) -> list[str]:
    """The configured feeds ([[sources.poll]]); none when the polling plugin is not loaded."""
    from core.plugins import settings_sections

    if "sources.poll" not in settings_sections():
        return []
    return [entry.name for entry in settings.plugin("sources.poll")]


@flow(name="ingest-polls", log_prints=False)
def ingest_polls(
    names: list[str] | None = None, database_url: DatabaseUrl = None
) -> dict[str, Any]:
    """One pass over each configured HTTP feed (``names``, default all of
    [[sources.poll]]): new events stored, the cursor saved; returns counts per
    feed and in total. A feed that keeps failing fails its task and, after
    the others were polled, the flow."""
    settings = load_settings(plain_url(database_url))
    database_url = settings.database_url
    open_db(database_url, auto_upgrade=settings.auto_upgrade).dispose()
    names = poll_names(settings) if names is None else names
    states = {name: poll_task(name, database_url, return_state=True) for name in names}
    sources, totals = _gather(states, "feeds", "polled")
    return {"sources": sources, "totals": totals}
