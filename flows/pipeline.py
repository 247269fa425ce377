"""Prefect flow: the whole pipeline, one step after the other.

    ingest (files, feeds) --> scores --> segment --> automate --> send

Each step is its flow, run as a subflow, so the UI shows each with its tasks
and the result holds each one's counts. Scores come before segments (segments
may test scores), segments before the tick (entering a segment starts
workflows), the tick before sending (it records what to send). Every step
sees the same ``as_of``, fixed when the pipeline starts. Monitoring runs after
sending once the monitoring flow exists (the dashboards issue).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from flows.automate import automate
from flows.common import (
    EXAMPLE_SCORES,
    EXAMPLE_SEGMENTS,
    EXAMPLE_WORKFLOWS,
    as_of_or_now,
    flow_settings,
)
from flows.ingest import ingest_files, ingest_polls, poll_names
from flows.scores import scores
from flows.segment import segment
from flows.send import send

STEPS = ("ingest", "scores", "segment", "automate", "send")


@flow(name="pipeline", log_prints=False)
def pipeline(
    database_url: str | None = None,
    files: list[str] | None = None,
    mapping: dict | None = None,
    polls: list[str] | None = None,
    scores_dir: str | None = str(EXAMPLE_SCORES),
    segments_dir: str | None = str(EXAMPLE_SEGMENTS),
    workflows_dir: str | None = str(EXAMPLE_WORKFLOWS),
    as_of: datetime | None = None,
    full: bool = False,
    perform: bool = True,
) -> dict[str, Any]:
    """Ingest ``files`` (with ``mapping``: ReadOptions fields) and the feeds
    ``polls`` (default every configured [[sources.poll]]; [] none), compute
    the scores in ``scores_dir`` (None: none), run the segments in
    ``segments_dir`` and tick the workflows in ``workflows_dir`` (None: the
    stored definitions), then perform the recorded actions (unless not
    ``perform``), all as of ``as_of`` (default: now, when the pipeline starts).

    Returns as_of and each step's result under its name (None for a step
    that had nothing to do); ``ingest`` holds ``files`` and ``polls``.
    """
    settings = flow_settings(database_url)
    url = settings.database_url
    when = as_of_or_now(as_of)
    feeds = poll_names(settings) if polls is None else polls
    result: dict[str, Any] = {
        "as_of": when.isoformat(),
        "ingest": {
            "files": ingest_files(files, database_url=url, mapping=mapping) if files else None,
            "polls": ingest_polls(feeds, database_url=url) if feeds else None,
        },
    }
    result["scores"] = scores(scores_dir, database_url=url, as_of=when) if scores_dir else None
    result["segment"] = segment(segments_dir, database_url=url, as_of=when, full=full)
    result["automate"] = automate(workflows_dir, database_url=url, as_of=when)
    result["send"] = send(database_url=url, as_of=when) if perform else None
    get_run_logger().info("pipeline as of %s: %s done", result["as_of"], ", ".join(STEPS))
    return result
