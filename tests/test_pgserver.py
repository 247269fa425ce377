"""Tests for the throwaway PostgreSQL server and the shared database fixtures."""

from __future__ import annotations

import os
import pwd
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

try:
    from pgserver import PgServer
except ImportError:
    from tests.pgserver import PgServer


def _roundtrip(url: str) -> list[tuple[int, str]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE segment (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
            conn.execute(
                text("INSERT INTO segment (id, name) VALUES (:id, :name)"),
                [{"id": 1, "name": "loyal"}, {"id": 2, "name": "lapsed"}],
            )
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, name FROM segment ORDER BY id"))
            return [tuple(r) for r in rows]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_server_runs_sql_through_sqlalchemy(postgres_url: str) -> None:
    assert _roundtrip(postgres_url) == [(1, "loyal"), (2, "lapsed")]


@pytest.mark.postgres
def test_server_settings(pg_server: PgServer) -> None:
    with pg_server.connect() as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("fsync", "synchronous_commit", "full_page_writes", "max_connections")
        }
        version = conn.info.server_version
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }
    assert version >= 130000  # DROP DATABASE ... WITH (FORCE) needs PostgreSQL 13+
    if os.geteuid() == 0:
        assert pg_server.data_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid


@pytest.mark.postgres
def test_url_format(pg_server: PgServer) -> None:
    assert pg_server.url("abc") == f"postgresql+psycopg://postgres@127.0.0.1:{pg_server.port}/abc"
    url = make_url(pg_server.url("abc"))
    assert (url.drivername, url.username, url.host, url.database) == (
        "postgresql+psycopg",
        "postgres",
        "127.0.0.1",
        "abc",
    )


@pytest.mark.postgres
def test_postgres_databases_are_isolated(pg_server: PgServer, postgres_url: str) -> None:
    other = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(other)
    try:
        other_url = pg_server.url(other)
        assert other_url != postgres_url
        assert _roundtrip(postgres_url) == [(1, "loyal"), (2, "lapsed")]

        engine = create_engine(other_url)
        try:
            assert inspect(engine).get_table_names() == []
            # The same table name is free in the other database.
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE segment (id INTEGER PRIMARY KEY)"))
                conn.execute(text("INSERT INTO segment (id) VALUES (99)"))
        finally:
            engine.dispose()

        first = create_engine(postgres_url)
        try:
            with first.connect() as conn:
                ids = conn.execute(text("SELECT id FROM segment ORDER BY id")).scalars().all()
            assert ids == [1, 2]
        finally:
            first.dispose()
    finally:
        pg_server.drop_database(other)


@pytest.mark.postgres
def test_drop_database_forces_out_open_connections(pg_server: PgServer) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    lingering = pg_server.connect(name)  # e.g. a pooled connection a test forgot to close
    try:
        pg_server.drop_database(name)
        with pg_server.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is None
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    finally:
        lingering.close()


@pytest.mark.postgres
def test_standalone_server_lifecycle(pg_server: PgServer) -> None:
    """A second server starts quickly on its own port and cleans up after itself."""
    server = PgServer(pg_server.bindir).start()
    try:
        base, port = server.base_dir, server.port
        assert base is not None and port is not None
        assert port != pg_server.port
        assert server.startup_seconds is not None and server.startup_seconds < 10
        # unix socket lives in the temp dir
        assert (base / f".s.PGSQL.{port}").exists()
        server.create_database("lifecycle")
        assert _roundtrip(server.url("lifecycle")) == [(1, "loyal"), (2, "lapsed")]
    finally:
        server.stop()
    assert server.base_dir is None
    assert not Path(base).exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.stop()  # idempotent


def test_sqlite_url_is_in_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/segflow.db"
    assert not (tmp_path / "segflow.db").exists()


def test_db_url_gives_working_empty_database(db_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["db_url"]
    url = make_url(db_url)
    assert url.get_backend_name() == backend
    assert (request.node.get_closest_marker("postgres") is not None) == (backend == "postgresql")

    engine = create_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    assert _roundtrip(db_url) == [(1, "loyal"), (2, "lapsed")]
