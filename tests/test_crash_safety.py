"""A bulk `segflow import` killed with SIGKILL at any step, then run again,
ends exactly as an uninterrupted import: events, profiles, identities, merges
and indexes (the kill points: core/ingestion/crashpoints.py)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.db import make_engine
from core.db.tables import AUDIT, BULK_LOAD_MOVES, BULK_LOADS, EVENTS, IDENTITIES, PROFILES
from tests.helpers import segflow_child

# Per backend: people in the file (about 18 events each) and events per batch.
# SQLite's bulk load commits every 50,000 events (PIPELINE_COMMIT_ROWS), so its
# file is big enough for a kill to fall after one commit and before the next.
SIZES = {"sqlite": (3000, 5000), "postgresql": (400, 500)}
# The batch after which "during inserts" kills: committed batches before it,
# and (SQLite) a transaction of uncommitted ones with it.
KILL_AFTER_BATCH = {"sqlite": 11, "postgresql": 9}
REPAIRED = "finished an interrupted bulk load"


def write_events(path: Path, people: int, seed: int = 7) -> Path:
    """Anonymous visits, logins that merge them, email-only events, re-sent lines.

    Each person's events are spread over the file so that most merges join a
    profile stored by an earlier batch: their events move at the load's end.
    """
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    placed: list[tuple[float, int, dict[str, Any]]] = []

    def at(pos: float, event: dict[str, Any]) -> None:
        event["ts"] = (start + timedelta(seconds=pos * 86_400 * 30)).isoformat()
        placed.append((pos, len(placed), event))

    for i in range(people):
        pos, gap = rng.random() * 0.8, 0.01 + rng.random() * 0.02
        user, anon, email = f"u{i}", f"a{i}", f"p{i}@x.io"
        mid = iter(f"m{i}-{k}" for k in range(100))
        if i % 5 == 0:  # known already: the later login merges the anonymous device
            first = {"type": "identify", "user_id": user, "message_id": next(mid)}
            at(pos, {**first, "traits": {"tier": i % 3, "email": email}})
        elif i % 5 == 1:  # known by email only: the identify with that email merges it
            at(pos, {"type": "email_open", "email": email, "message_id": next(mid)})
        for k in range(rng.randint(8, 12)):
            kind = rng.choice(["page_view", "product_view"])
            event = {"type": kind, "anonymous_id": anon, "url": f"/p/{k}", "message_id": next(mid)}
            at(pos + gap * (k + 1) / 13, event)
        login = {"type": "identify", "user_id": user, "anonymous_id": anon, "message_id": next(mid)}
        login["traits"] = {"email": email} if i % 5 == 1 else {"last_login": i}
        at(pos + gap, login)
        for k in range(rng.randint(5, 8)):
            purchase = {"type": "purchase", "user_id": user, "value": float(rng.randint(5, 200))}
            at(pos + gap * (1.2 + k), {**purchase, "currency": "EUR", "message_id": next(mid)})
    events = [e for _, _, e in sorted(placed, key=lambda p: (p[0], p[1]))]
    resent = [events[i] for i in rng.sample(range(len(events)), len(events) // 100)]
    for e in resent:
        events.insert(rng.randrange(len(events)), e)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def segflow_import(
    url: str, path: Path, batch_size: int, cwd: Path, crash_at: str | None = None
) -> subprocess.CompletedProcess:
    args = ["import", str(path), "--bulk", "--no-realtime", "--json"]
    return segflow_child(
        url,
        *args,
        "--batch-size",
        str(batch_size),
        cwd=cwd,
        plugins="plugins.sources.files",  # reads the file
        crash_at=crash_at,
    )


def snapshot(url: str) -> dict[str, Any]:
    """The stored state, profile ids replaced by their rank: ids are assigned
    in creation order, but PostgreSQL's sequences skip the ids a killed
    transaction had taken."""
    engine = make_engine(url)  # not open_db: that would repair what it finds
    try:
        with engine.connect() as conn:
            ids = sorted(conn.execute(sa.select(PROFILES.c.id)).scalars())
            rank = {pid: n for n, pid in enumerate(ids)}
            rank[None] = None
            profiles = [
                (rank[p.id], p.user_id, p.email, p.attributes, rank[p.merged_into])
                for p in conn.execute(sa.select(PROFILES))
            ]
            identities = {
                (i.kind, i.value, rank[i.profile_id]) for i in conn.execute(sa.select(IDENTITIES))
            }
            skip = ("id", "profile_id", "received_at", "properties")
            cols = [c for c in EVENTS.c if c.name not in skip]
            events = sorted(
                (rank[e[0]], *e[1:-1], json.dumps(e[-1], sort_keys=True))
                for e in conn.execute(sa.select(EVENTS.c.profile_id, *cols, EVENTS.c.properties))
            )
            merges = sorted(
                (rank[d["from"]], rank[d["into"]])
                for d in conn.execute(
                    sa.select(AUDIT.c.details).where(AUDIT.c.action == "profile.merge")
                ).scalars()
            )
            pending = [
                conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (BULK_LOADS, BULK_LOAD_MOVES)
            ]
        indexes = sorted(
            (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
            for ix in sa.inspect(engine).get_indexes("events")
        )
    finally:
        engine.dispose()
    return {
        "profiles": sorted(profiles, key=lambda p: p[0]),
        "identities": identities,
        "events": events,
        "merges": merges,
        "indexes": indexes,
        "pending": pending,
    }


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def backend(request, tmp_path_factory) -> dict[str, Any]:
    """The backend's input file and the state an uninterrupted import leaves."""
    name = request.param
    people, batch_size = SIZES[name]
    tmp = tmp_path_factory.mktemp(f"crash-{name}")
    path = write_events(tmp / "events.jsonl", people)
    databases: list[str] = []

    def new_url() -> str:
        if name == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'segflow.db'}"
        server = request.getfixturevalue("pg_server")
        db = f"t_{uuid.uuid4().hex[:12]}"
        server.create_database(db)
        databases.append(db)
        return server.url(db)

    url = new_url()
    done = segflow_import(url, path, batch_size, tmp)
    assert done.returncode == 0, done.stderr
    reference = snapshot(url)
    assert reference["merges"], "the data must merge profiles"
    yield {
        "name": name,
        "path": path,
        "batch_size": batch_size,
        "cwd": tmp,
        "new_url": new_url,
        "reference": reference,
    }
    if databases:
        server = request.getfixturevalue("pg_server")
        for db in databases:
            server.drop_database(db)


def scenarios(name: str) -> dict[str, list[str]]:
    """Kill points of each run before the last, clean one."""
    return {
        "after_dropping_indexes": ["bulk.dropped"],
        # The second run dies while open_db completes what the first left.
        "during_inserts_then_during_the_repair": [
            f"ingest.batch:{KILL_AFTER_BATCH[name]}",
            "bulk.move:1",
        ],
        "during_index_rebuild": ["bulk.index:1"],
        "during_merge_moves": ["bulk.move:5"],
    }


@pytest.mark.parametrize("scenario", list(scenarios("sqlite")))
def test_a_killed_bulk_import_run_again_ends_as_an_uninterrupted_one(backend, scenario):
    url = backend["new_url"]()
    run = (backend["path"], backend["batch_size"], backend["cwd"])
    for point in scenarios(backend["name"])[scenario]:
        killed = segflow_import(url, *run, crash_at=point)
        assert killed.returncode == -9, f"{point} was not reached: {killed.stderr}"
        # The second kill of a scenario falls in the repair of what the first left.
        assert REPAIRED not in killed.stderr
        crashed = snapshot(url)
        # The database says what is left to do: the load's record, the indexes gone.
        assert crashed["pending"][0] == 1
        assert crashed["indexes"] != backend["reference"]["indexes"]
        if point.startswith("bulk.move"):
            assert crashed["pending"][1] >= 1  # merge moves queued, not yet applied
    rerun = segflow_import(url, *run)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.count(REPAIRED) == 1
    final = snapshot(url)
    assert final["pending"] == [0, 0]
    reference = backend["reference"]
    for part in ("indexes", "profiles", "identities", "merges", "events"):
        assert final[part] == reference[part], part


def test_a_load_running_in_another_live_process_is_left_alone(fresh_sqlite):
    from core.db import open_db
    from core.ingestion.bulk import finish_interrupted_loads

    url = fresh_sqlite()
    engine = open_db(url)
    parent = os.getppid()  # alive while this test runs
    with engine.begin() as conn:
        conn.execute(
            BULK_LOADS.insert().values(
                started_at=datetime.now(UTC), host=socket.gethostname(), pid=parent, indexes=[]
            )
        )
    assert finish_interrupted_loads(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(BULK_LOADS)).scalar_one() == 1
