"""Small helpers shared by tests (reading the stored state back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.db.tables import EVENTS, IDENTITIES, PROFILES


def child_env(plugins: str, crash_at: str | None = None) -> dict[str, str]:
    """The environment of a segflow child process: none of the caller's SEGFLOW_
    settings, the project importable, only ``plugins`` loaded (it starts
    faster) and, when given, the crash point it is killed at."""
    from tests.conftest import PROJECT_ROOT

    # The encryption keys are kept: a child must read what its parent sealed.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEGFLOW_") or k.startswith("SEGFLOW_ENCRYPTION_")
    }
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["SEGFLOW_LOAD_PLUGINS"] = plugins
    if crash_at:
        env["SEGFLOW_TEST_CRASH_AT"] = crash_at
    return env


def segflow_child(
    url: str,
    *args: str,
    cwd: Path,
    plugins: str,
    crash_at: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """``segflow --db URL ARGS`` in a child process (see ``child_env``), run in
    ``cwd`` so no segflow.toml of the project's is read."""
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "--db", url, *args],
        cwd=cwd,
        env=child_env(plugins, crash_at),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def chromium_and_playwright() -> tuple[str, Any]:
    """Debian's chromium and playwright's ``sync_playwright``, which drives it by
    its executable path (no browser is downloaded). Missing: the test fails in
    CI (make test installs both) and is skipped elsewhere."""
    import shutil

    import pytest

    from tests.conftest import IN_CI

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        reason = "needs Debian's chromium and the playwright package (make test installs both)"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    return chromium, sync_playwright


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def live_profiles(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(PROFILES).where(PROFILES.c.merged_into.is_(None)).order_by(PROFILES.c.id)
        ).mappings()
        return [dict(r) for r in rows]


def events_by_profile(engine) -> dict[int, set[str]]:
    """profile id -> message ids of its events."""
    out: dict[int, set[str]] = {}
    with engine.connect() as conn:
        for pid, mid in conn.execute(sa.select(EVENTS.c.profile_id, EVENTS.c.message_id)):
            out.setdefault(pid, set()).add(mid)
    return out


def identity_map(engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(IDENTITIES.c.kind, IDENTITIES.c.value, IDENTITIES.c.profile_id)
        )
        return {(k, v): p for k, v, p in rows}


def count(engine, table=EVENTS) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def cdnow_events(path: Path) -> list[dict[str, Any]]:
    """CDNOW lines as purchase events (master: id date cds $; sample: id, sample id, ...).

    The line number is in the message id, so same-day repeat lines stay distinct.
    """
    events = []
    with open(path, encoding="ascii") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or not fields[0].isdigit():
                continue  # CDNOW_master.txt has a header line
            customer, day, cds, dollars = fields if len(fields) == 4 else fields[:1] + fields[2:]
            events.append(
                {
                    "type": "purchase",
                    "user_id": str(int(customer)),
                    "ts": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z",
                    "value": float(dollars),
                    "properties": {"cds": int(cds)},
                    "message_id": f"{path.name}:{n}",
                }
            )
    return events


def people(engine, count: int, *, consent: bool = True) -> list[int]:
    """``count`` identified people p0..p{count-1} with an email address and, when
    ``consent``, email consent granted; their profile ids in order."""
    from core.consents import set_consent
    from core.ingestion import ingest

    ingest(
        engine,
        [
            {"type": "identify", "user_id": f"p{i}", "traits": {"email": f"p{i}@example.com"}}
            for i in range(count)
        ],
    )
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(PROFILES.c.user_id, PROFILES.c.id)).all())
    if consent:
        for i in range(count):
            set_consent(engine, f"p{i}", "email", True, "test")
    return [ids[f"p{i}"] for i in range(count)]


def rendered_email(profile_id: int, key: str, **changes: Any):
    """A RenderedEmail as rendering hands it to delivery (tracking headers included)."""
    from core.types import RenderedEmail

    fields = {
        "profile_id": profile_id,
        "to": f"Person {profile_id} <person{profile_id}@example.com>",
        "template": "browse_recommendations",
        "version": "v1",
        "subject": f"Picked for you, №{profile_id}",
        "html": f"<html><body><h1>Hello {profile_id}</h1><p>Trail shoes</p></body></html>",
        "text": f"Hello {profile_id}\nTrail shoes\n",
        "headers": {
            "List-Unsubscribe": f"<https://t.example/t/u/tok{profile_id}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "idempotency_key": key,
    }
    return RenderedEmail(**(fields | changes))


def delivery_settings(**sections: dict[str, Any]):
    """core.Settings with the given plugin sections (``esp_smtp={...}`` is [esp.smtp])."""
    from core.config import Settings

    return Settings(plugin_settings={k.replace("_", ".", 1): v for k, v in sections.items()})


# The demo shop's generator, small: the store of the flow tests.
DEMO_END = datetime(2026, 3, 1, tzinfo=UTC)
DEMO_PEOPLE, DEMO_DAYS = 150, 60


def demo_shop_events() -> list[dict]:
    from plugins.demo.generator import generate

    return list(generate(DEMO_PEOPLE, seed=7, days=DEMO_DAYS, end=DEMO_END))


def task_runs(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's task runs by name, as the Prefect API recorded them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run for run in runs}


def sync_until_settled(engine, target, connector, *, first: int = 1, most: int = 12) -> list:
    """``run_sync`` ``first`` times, then again while something is left to retry
    or failed (at most ``most`` runs in all: more is a test failure); the reports."""
    from core.sync import run_sync

    runs = [run_sync(engine, target, connector) for _ in range(first)]
    while runs[-1].retry or runs[-1].failed:
        assert len(runs) < most, [r.model_dump() for r in runs]
        runs.append(run_sync(engine, target, connector))
    return runs


@contextmanager
def serving(app: Any, *, port: int = 0, **config: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a thread of this process on 127.0.0.1 (a
    free port unless given); yields its base URL, https when given a
    certificate (``ssl_certfile``...), and stops the server on leaving."""
    import uvicorn

    options = {"log_level": "warning"} | config
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if config.get("ssl_certfile") else "http"
    try:
        yield f"{scheme}://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# A fixture's ``params``: each test runs on SQLite and on the session's PostgreSQL.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def backend_url(request: Any, tmp_path_factory: Any, name: str) -> str:
    """A fresh empty database on ``request.param``'s backend, for module-scoped
    fixtures (the function-scoped ``db_url`` cannot serve them)."""
    import uuid

    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_server")
        db = f"m_{uuid.uuid4().hex[:12]}"
        pg.create_database(db)
        return pg.url(db)
    return f"sqlite:///{tmp_path_factory.mktemp(name) / f'{name}.db'}"
