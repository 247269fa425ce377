"""A bulk load evaluates segments once, at its end, for the profiles it
touched (on_profiles_loaded): the memberships equal those of the same events
ingested in small batches with real time per batch, and a load killed before
that evaluation is caught up by the next incremental segment run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.clickstream import clickstream
from core.db import open_db
from core.db.tables import IDENTITIES, MEMBERSHIPS, PROFILES, SEGMENTS
from core.ingestion import ingest
from core.plugins import condition_kinds, events_ingested_hook, profiles_loaded_hook
from core.segments.store import load_segment_files, run_segments
from tests.conftest import PROJECT_ROOT
from tests.helpers import segflow_child, write_jsonl

SEGMENT_DIR = PROJECT_ROOT / "examples" / "segments"
# Every window of the example segments is a whole number of hours, and a test
# evaluates within MARGIN of its start: events whose age sits that close below
# a whole hour are left out, so no window edge passes an event between the
# evaluations compared (real time is evaluated "now").
MARGIN = timedelta(minutes=5)


def recent_clickstream(people: int, start: datetime) -> list[dict[str, Any]]:
    """The profile-heavy clickstream ending an hour before ``start``, without
    the events a window edge could pass while the test runs."""
    events = []
    for e in clickstream(people, seed=5, days=30, end=start - timedelta(hours=1)):
        age = (start - datetime.fromisoformat(e["ts"])).total_seconds()
        if age % 3600 < 3600 - MARGIN.total_seconds():
            events.append(e)
    return events


def save_segments(engine: Any) -> None:
    kinds = condition_kinds()
    definitions = load_segment_files(SEGMENT_DIR, kinds)
    run_segments(engine, datetime.now(UTC), kinds=kinds, definitions=definitions)


def memberships(engine: Any) -> set[tuple[str, tuple]]:
    """(segment, the member's identities): comparable across databases."""
    with engine.connect() as conn:
        who: dict[int, list] = {}
        for kind, value, pid in conn.execute(
            sa.select(IDENTITIES.c.kind, IDENTITIES.c.value, IDENTITIES.c.profile_id)
        ):
            who.setdefault(pid, []).append((kind, value))
        rows = conn.execute(
            sa.select(SEGMENTS.c.name, MEMBERSHIPS.c.profile_id).join(
                SEGMENTS, SEGMENTS.c.id == MEMBERSHIPS.c.segment_id
            )
        )
        return {(name, tuple(sorted(who[pid]))) for name, pid in rows}


@pytest.fixture
def another_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A second empty database on db_url's backend."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/other.db"
        return
    server = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


def test_a_bulk_load_evaluated_at_its_end_gives_per_batch_real_times_memberships(
    db_url, another_url, register_plugin
):
    start = datetime.now(UTC)
    events = recent_clickstream(500, start)
    calls: list[Callable] = []

    class Counter:
        @staticmethod
        def on_profiles_loaded(profile_ids):
            calls.append(profile_ids)

    register_plugin(Counter)
    streamed, loaded = open_db(db_url), open_db(another_url)
    for engine in (streamed, loaded):
        save_segments(engine)
    ingest(streamed, events, batch_size=400, on_stored=events_ingested_hook(streamed))
    report = ingest(
        loaded,
        events,
        batch_size=400,
        bulk=True,
        on_stored=events_ingested_hook(loaded, bulk=True),
        on_loaded=profiles_loaded_hook(loaded),
    )
    assert datetime.now(UTC) - start < MARGIN, "too slow for the data's margin"
    assert report.accepted == len(events)
    # One call at the end, with every profile the load created.
    with loaded.connect() as conn:
        profiles = set(conn.execute(sa.select(PROFILES.c.id)).scalars())
    assert len(calls) == 1 and calls[0] == profiles and len(profiles) > 400
    expected = memberships(streamed)
    sizes = {name for name, _ in expected}
    assert len(sizes) >= 6, f"the data must fill most example segments, filled {sizes}"
    assert memberships(loaded) == expected
    for engine in (streamed, loaded):
        engine.dispose()


def segflow(url: str, cwd: Path, *args: str, crash_at: str | None = None):
    plugins = "plugins.sources.files,plugins.segments.realtime,plugins.scoring.rfm"
    return segflow_child(url, *args, cwd=cwd, plugins=plugins, crash_at=crash_at, timeout=300)


def test_a_bulk_import_killed_before_its_evaluation_is_caught_up_by_the_next_segment_run(
    db_url, another_url, tmp_path
):
    start = datetime.now(UTC)
    path = write_jsonl(tmp_path / "events.jsonl", recent_clickstream(300, start))
    run = ["segments", "run", "--dir", str(SEGMENT_DIR)]
    for url in (db_url, another_url):
        assert segflow(url, tmp_path, *run).returncode == 0
    done = segflow(db_url, tmp_path, "import", "--bulk", str(path))
    assert done.returncode == 0, done.stderr
    expected = memberships(open_db(db_url))
    assert expected, "the data must fill segments"

    killed = segflow(another_url, tmp_path, "import", "--bulk", str(path), crash_at="ingest.loaded")
    assert killed.returncode == -9, f"ingest.loaded was not reached: {killed.stderr}"
    engine = open_db(another_url)
    assert memberships(engine) == set()  # the events are in, not yet evaluated
    # Run again: every event is a duplicate, so the import itself touches no
    # profile and evaluates none; the next incremental run catches them up.
    rerun = segflow(another_url, tmp_path, "import", "--bulk", str(path))
    assert rerun.returncode == 0, rerun.stderr
    assert memberships(engine) == set()
    caught_up = segflow(another_url, tmp_path, *run, "--json")
    assert caught_up.returncode == 0, caught_up.stderr
    assert json.loads(caught_up.stdout)["full"] is False
    assert datetime.now(UTC) - start < MARGIN, "too slow for the data's margin"
    assert memberships(engine) == expected
    engine.dispose()
