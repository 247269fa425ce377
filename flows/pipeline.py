"""Prefect flow: the whole pipeline, one step after the other.

    workflows saved --> ingest (files, feeds) --> recommend --> scores
        --> segment --> automate --> send --> monitor

Each step is its flow (or task), run as a subflow, so the UI shows each with
its tasks and the result holds each one's counts. The workflow definitions are
saved first, so the events ingested and the segments entered start their runs;
the catalogue and recommendations follow the new events; scores come before
segments (segments may test scores), segments before the tick (entering a
segment starts workflows), the tick before sending (it records what to send).
Monitoring runs last, so its checks see the day's sizes, sends and events.
Every step sees the same ``as_of``, fixed when the pipeline starts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from flows.automate import automate, save_workflows_task
from flows.common import (
    EXAMPLE_SCORES,
    EXAMPLE_SEGMENTS,
    EXAMPLE_WORKFLOWS,
    DatabaseUrl,
    as_of_or_now,
    flow_settings,
    folder,
    hidden,
)
from flows.ingest import ingest_files, ingest_polls, poll_names
from flows.monitor import monitor
from flows.recommend import recommend
from flows.scores import scores
from flows.segment import segment
from flows.send import send

STEPS = ("workflows", "ingest", "recommend", "scores", "segment", "automate", "send", "monitor")


@flow(name="pipeline", log_prints=False)
def pipeline(
    database_url: DatabaseUrl = None,
    files: list[str] | None = None,
    mapping: dict | None = None,
    polls: list[str] | None = None,
    scores_dir: str | None = str(EXAMPLE_SCORES),
    segments_dir: str | None = str(EXAMPLE_SEGMENTS),
    workflows_dir: str | None = str(EXAMPLE_WORKFLOWS),
    as_of: datetime | None = None,
    full: bool = False,
    perform: bool = True,
    history_since: datetime | None = None,
) -> dict[str, Any]:
    """Save the workflows in ``workflows_dir`` (None: use the stored ones),
    ingest ``files`` (with ``mapping``: ReadOptions fields) and the feeds
    ``polls`` (default every configured [[sources.poll]]; [] none), refresh
    the catalogue and recommendations, compute the scores in ``scores_dir``
    (None: none), run the segments in ``segments_dir`` (None: the stored
    ones), tick the workflows (starting, given ``history_since``, the runs
    that events stored since then trigger), then perform the recorded actions
    (unless not ``perform``), all as of ``as_of`` (default: now, when the
    pipeline starts), and finally run the monitoring checks.

    Returns as_of and each step's result under its name (None for a step
    that had nothing to do); ``ingest`` holds ``files`` and ``polls``.
    """
    settings = flow_settings(database_url)
    url = settings.database_url
    db = hidden(url)
    when = as_of_or_now(as_of)
    since = as_of_or_now(history_since) if history_since is not None else None
    feeds = poll_names(settings) if polls is None else polls
    saved = folder(workflows_dir, "workflows")
    result: dict[str, Any] = {
        "as_of": when.isoformat(),
        # Bad definitions fail here, before anything is ingested.
        "workflows": save_workflows_task(url, str(saved)) if saved else None,
        "ingest": {
            "files": ingest_files(files, database_url=db, mapping=mapping) if files else None,
            "polls": ingest_polls(feeds, database_url=db) if feeds else None,
        },
    }
    result["recommend"] = recommend(database_url=db, as_of=when)
    result["scores"] = scores(scores_dir, database_url=db, as_of=when) if scores_dir else None
    result["segment"] = segment(segments_dir, database_url=db, as_of=when, full=full)
    result["automate"] = automate(None, database_url=db, as_of=when, history_since=since)
    result["send"] = send(database_url=db, as_of=when) if perform else None
    result["monitor"] = monitor(database_url=db, as_of=when)
    get_run_logger().info("pipeline as of %s: %s done", result["as_of"], ", ".join(STEPS))
    return result
