"""Shared fixtures for the segflow test-suite.

Database fixtures:

* ``pg_server``   -- one throwaway PostgreSQL server per session (see ``pgserver.py``).
* ``postgres_url`` -- a fresh, empty PostgreSQL database per test (dropped afterwards).
* ``sqlite_url``  -- a fresh SQLite file per test.
* ``db_url``      -- parametrized over both backends; the PostgreSQL variant carries the
  ``postgres`` marker, so ``-m "not postgres"`` runs SQLite only.

Without PostgreSQL binaries the PostgreSQL tests are skipped locally and fail under CI
(``CI=true``). The same holds for the shared data directory (``../shared/data``).

Project modules are imported inside fixtures, so collecting tests stays cheap.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

try:  # tests/ is on sys.path (rootdir-relative "prepend" import mode)
    from pgserver import PgServer, find_pg_bindir
except ImportError:  # tests/ became a package
    from tests.pgserver import PgServer, find_pg_bindir

IN_CI = os.environ.get("CI") == "true"

# Prefect keeps state under PREFECT_HOME (default ~/.prefect); tests must not
# touch the user's. Set before anything imports prefect.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="segflow-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The data lives beside the project checkout: <project>/../shared/data.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def _missing(reason: str) -> NoReturn:
    """Skip locally, fail under CI (where a missing prerequisite is a setup bug)."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# -- PostgreSQL -------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_pg_bindir()
    if bindir is None:
        _missing(
            "PostgreSQL binaries not found (initdb/pg_ctl): looked at `pg_config --bindir`, "
            "/usr/lib/postgresql/*/bin and PATH"
        )
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped (WITH (FORCE)) after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


# -- SQLite -------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/segflow.db"


# -- both backends ------------------------------------------------------------


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgresql"],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty database, once per backend.

    Uses getfixturevalue so the PostgreSQL server only starts when a
    ``postgresql`` variant actually runs.
    """
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def shop(db_url: str) -> str:
    """The database URL of a store holding the demo shop's events (see
    ``helpers.demo_shop_events``), once per backend."""
    from core.db import open_db
    from core.ingestion import ingest

    try:
        from helpers import demo_shop_events
    except ImportError:
        from tests.helpers import demo_shop_events

    engine = open_db(db_url)
    report = ingest(engine, demo_shop_events(), source="demo")
    assert report.accepted > 1000 and not report.rejected
    engine.dispose()
    return db_url


@pytest.fixture
def run(capsys, tmp_path, monkeypatch):
    """``run(*args)`` calls the segflow command line in-process, in an empty
    folder with no database or settings from the environment: (status, out, err)."""
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


# -- Prefect ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real local Prefect server for the session, started by `segflow server`
    (127.0.0.1, analytics off, scheduler on), its data in a temporary
    PREFECT_HOME; Prefect clients in this process point at it. Yields its API URL.

    Not ``prefect_test_harness``: its server is an ephemeral one, whose
    scheduler never runs, and the deployment test needs the schedules to fire.
    """
    import subprocess
    import sys
    import time

    import httpx
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    try:
        from helpers import child_env
        from smtpserver import free_port
    except ImportError:
        from tests.helpers import child_env
        from tests.smtpserver import free_port

    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = child_env("flows.commands")
    env.pop("PREFECT_API_URL", None)
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"}
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "server", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # Starting (migrating its SQLite database) has taken over a minute on a busy
    # two-core machine.
    deadline = time.monotonic() + 180
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"segflow server exited: {(home / 'server.log').read_text()}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no Prefect server after 180 s: {(home / 'server.log').read_text()}")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: api, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
            yield api
            _drain_prefect_workers()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued before the server stops, as
    ``prefect_test_harness`` does, so none fails against a closed port."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, prefect_server):
    """The demo flow (what `segflow demo` runs) on a small store, with its
    settings from a segflow.toml, as a deployment would have them: (engine,
    settings, the flow's summary with its ``flow_run_id``). Shared by the tests
    that read the demo store; they must not change what the demo stored."""
    from core.config import load_settings
    from core.db import open_db
    from plugins.demo.flow import demo

    folder = tmp_path_factory.mktemp("demo")
    config = folder / "segflow.toml"
    config.write_text(
        'secret_key = "a-secret-for-the-demo-emails-test"\n'
        f'[esp.outbox]\nfolder = "{folder / "outbox"}"\n'
    )
    url = f"sqlite:///{folder / 'demo.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_CONFIG", str(config))
        patch.delenv("SEGFLOW_SECRET_KEY", raising=False)
        state = demo(database_url=url, people=600, seed=5, return_state=True)
        settings = load_settings(url)
    return open_db(url), settings, state.result() | {"flow_run_id": state.state_details.flow_run_id}


# -- shared data ----------------------------------------------------------------


def require_shared(relpath: str | os.PathLike[str]) -> Path:
    """Path of ``../shared/data/<relpath>``; skips (fails under CI) if it is absent."""
    path = SHARED_DATA / relpath
    if not SHARED_DATA.is_dir():
        _missing(f"../shared/data not found at {SHARED_DATA}")
    if not path.exists():
        _missing(f"../shared/data/{relpath} not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        _missing(f"../shared/data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def register_plugin():
    """Register plugin objects for one test, on the shared plugin manager."""
    from core.plugins import get_manager

    pm = get_manager()
    added = []

    def register(plugin: object, name: str | None = None) -> None:
        from core.hookspecs import hookimpl

        # Plain classes in tests mark their methods here, as a plugin module would.
        for attr in dir(plugin):
            fn = getattr(plugin, attr)
            if callable(fn) and not attr.startswith("_"):
                hookimpl(fn)
        added.append(pm.register(plugin, name=name))

    yield register
    for name in added:
        pm.unregister(name=name)


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory) -> Path:
    from core.db import open_db

    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = open_db(f"sqlite:///{path}")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def online_retail(_migrated_sqlite, tmp_path_factory):
    """UCI Online Retail imported once through the shipped mapping (the three
    tests that read it need the same import): ``(report, make)``, ``make()``
    giving the URL of a fresh copy of the imported database."""
    import shutil

    import yaml

    from core.db import open_db
    from core.ingestion import import_file
    from core.plugins import file_sources
    from core.types import ReadOptions

    path = require_shared("online_retail/online_retail.csv.gz")
    mapping = yaml.safe_load((PROJECT_ROOT / "examples/mappings/online_retail.yaml").read_text())
    template = tmp_path_factory.mktemp("online_retail") / "online_retail.db"
    shutil.copy(_migrated_sqlite, template)
    engine = open_db(f"sqlite:///{template}")
    report = import_file(engine, path, ReadOptions(**mapping), sources=file_sources())
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()

    def make() -> str:
        target = tmp_path_factory.mktemp("db") / "segflow.db"
        shutil.copy(template, target)
        return f"sqlite:///{target}"

    return report, make


@pytest.fixture
def fresh_sqlite(_migrated_sqlite, tmp_path_factory):
    """Make URLs of new, already migrated SQLite databases (cheap: a file copy)."""
    import shutil

    def make() -> str:
        target = tmp_path_factory.mktemp("db") / "segflow.db"
        shutil.copy(_migrated_sqlite, target)
        return f"sqlite:///{target}"

    return make
