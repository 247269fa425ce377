"""Prefect flow: ``segflow demo``, the whole pipeline on the demo store.

    write the store (events file, catalogue)
      --> pipeline, today: workflows, ingest, recommend, scores, segment, automate
      --> the sign-ups' consents, a few segment emails to the outbox
      --> pipeline, a day later: recommend, scores, segment, automate, send
      --> summary

The store's events are written to a JSON Lines file and imported by the
pipeline's ingest step, as a shop's export would be. The workflows are saved
before the import, so segment entries start runs; the carts of the store's
last day start theirs from the stored events (``history_since``), since events
that arrive in a bulk load are older than a cart reminder allows. The store
ends at the start of today (so it is the same all day); counting that day back
from now would leave a late-evening demo with a couple of hours of carts. The
sign-ups' consents come after the import (they need the profiles), so today's
run records what is due and the run a day later, when the waits have ended,
sends it.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import DatabaseUrl, database, flow_settings, hidden
from flows.config import EXAMPLE_SCORES, EXAMPLE_SEGMENTS, EXAMPLE_WORKFLOWS
from flows.pipeline import pipeline
from plugins.demo.emails import grant_signup_consents, send_demo_emails
from plugins.demo.generator import day_start
from plugins.demo.store import load_catalogue, reset_demo, summarise, write_events

# How far the second run moves the clock on: past the cart wait and the next morning.
LATER = timedelta(days=1)
EVENTS_FILE = "demo-store.jsonl"
# Side effects every one: never skipped for a cached result.
ONCE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="write-store", **ONCE)
def write_store_task(
    database_url: str,
    folder: str,
    people: int,
    days: int,
    seed: int,
    reset: bool,
    now: datetime,
    progress: bool,
) -> dict[str, Any]:
    with database(database_url) as engine:
        if reset:
            reset_demo(engine)
        catalogue = load_catalogue(engine, seed, now)
    path = Path(folder) / EVENTS_FILE
    from rich.progress import Progress

    end = day_start(now)
    with Progress(transient=True, disable=not progress) as bar:
        job = bar.add_task(f"generating {people:,} people x {days} days", total=None)
        written = write_events(
            path,
            people=people,
            days=days,
            seed=seed,
            end=end,
            on_progress=lambda n: bar.advance(job, n),
        )
    get_run_logger().info("%d events written to %s", written, path)
    return {"events_file": str(path), "events": written, "catalogue": catalogue, "end": end}


@task(name="consents-and-emails", **ONCE)
def consents_and_emails_task(database_url: str, now: datetime) -> dict[str, Any]:
    settings = flow_settings(database_url)
    with database(database_url) as engine:
        consents = grant_signup_consents(engine)
        # Tracked email needs the key that signs its links (segflow init).
        outbox = send_demo_emails(engine, settings, now) if settings.secret_key else None
    get_run_logger().info("%d people opted in to email", consents)
    return {"email_consents": consents, "outbox": outbox}


@task(name="summarise", **ONCE)
def summarise_task(database_url: str, today: dict, later: dict) -> dict[str, Any]:
    with database(database_url) as engine:
        return summarise(engine, today, later)


@flow(name="demo", log_prints=False)
def demo(
    database_url: DatabaseUrl = None,
    people: int = 5000,
    days: int = 90,
    seed: int = 42,
    reset: bool = False,
    segments_dir: str = str(EXAMPLE_SEGMENTS),
    scores_dir: str = str(EXAMPLE_SCORES),
    workflows_dir: str = str(EXAMPLE_WORKFLOWS),
    progress: bool = False,
) -> dict[str, Any]:
    """Build the demo store and run the pipeline on it, today and a day later;
    the summary of what is stored and what the pipeline did.

    The summary is ``core.database_summary`` plus ``catalogue`` (products, out
    of stock), ``recommendations`` (what each refresh stored), ``segments``
    (sizes), ``full_run``, ``scores`` (profiles scored per score), ``import``
    (the file's counts, 20 rejections at most), ``email_consents``, ``outbox``
    (given a secret key: the cart and browse emails of a few people, in the
    outbox folder) and ``workflows``: what the example workflows (or those in
    ``workflows_dir``) did, a day later, with ``performed`` (None without a
    secret key: tracked links need it) and ``as_of``, the demo's "today" (the
    emails are rendered as of then; the workflows run again a day later) and
    ``history_since``, from when stored events started runs (the store's last day).
    """
    settings = flow_settings(database_url)
    url = settings.database_url
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="segflow-demo-") as folder:
        store = write_store_task(url, folder, people, days, seed, reset, now, progress)
        since = store["end"] - LATER
        today = pipeline(
            database_url=hidden(url),
            files=[store["events_file"]],
            polls=[],
            scores_dir=scores_dir,
            segments_dir=segments_dir,
            workflows_dir=workflows_dir,
            as_of=now,
            perform=False,
            history_since=since,
        )
    sent = consents_and_emails_task(url, now)
    later = pipeline(
        database_url=hidden(url),
        polls=[],
        scores_dir=scores_dir,
        segments_dir=None,
        workflows_dir=None,
        as_of=now + LATER,
        perform=bool(settings.secret_key),
    )
    summary = summarise_task(url, today, later) | {"catalogue": store["catalogue"]} | sent
    return summary | {"as_of": now.isoformat(), "history_since": since.isoformat()}
