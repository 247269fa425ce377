"""Prefect flow: compute the scores defined in a folder for everyone.

    score files --> run-scores task --> profiles scored per score

The task calls ``core.scoring.run_scores``, as ``segflow scores run`` does: every
score in one transaction, new rows added and earlier ones kept as history.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from core.plugins import scoring_models
from core.scoring import load_score_files, run_scores
from flows.common import (
    DB_TASK,
    EXAMPLE_SCORES,
    DatabaseUrl,
    as_of_or_now,
    database,
    flow_settings,
    folder,
)


@task(name="run-scores", **DB_TASK)
def run_scores_task(database_url: str, directory: str, as_of: datetime) -> dict[str, int]:
    definitions = load_score_files(Path(directory), scoring_models())
    with database(database_url) as engine:
        counts = run_scores(engine, definitions, as_of)
    logger = get_run_logger()
    for name, n in sorted(counts.items()):
        logger.info("%s: %d profiles scored", name, n)
    return counts


@flow(name="scores", log_prints=False)
def scores(
    directory: str = str(EXAMPLE_SCORES),
    database_url: DatabaseUrl = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Compute every score defined in ``directory`` as of ``as_of`` (default
    now); returns ``scores run --json``'s report: as_of and profiles scored per score."""
    settings = flow_settings(database_url)
    when = as_of_or_now(as_of)
    found = folder(directory, "scores")
    scored = run_scores_task(settings.database_url, str(found), when)
    return {"as_of": when.isoformat(), "scored": scored}
