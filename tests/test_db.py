"""Storage: migrations, backend settings, configuration precedence."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core import db as dbmod
from core.config import ConfigError, load_settings
from core.db.tables import EVENTS


def test_open_db_migrates_and_creates_the_indexes(db_url):
    engine = dbmod.open_db(db_url)
    assert dbmod.current_revision(engine) == dbmod.head_revision()
    inspector = sa.inspect(engine)
    assert {"profiles", "identities", "events", "api_keys", "audit_log"} <= set(
        inspector.get_table_names()
    )
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("events")}
    assert indexes["ix_events_profile_ts"] == ["profile_id", "ts"]
    assert indexes["ix_events_type_ts"] == ["type", "ts"]
    uniques = [u["column_names"] for u in inspector.get_unique_constraints("events")]
    assert ["message_id"] in uniques


def test_the_fast_revision_reads_agree_with_alembic(db_url):
    """Commands read the schema revision without loading Alembic; Alembic's own
    answer must be the same (one linear history, files named by revision)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    assert dbmod.head_revision() == ScriptDirectory(str(dbmod.MIGRATIONS)).get_current_head()
    engine = dbmod.make_engine(db_url)
    assert dbmod.current_revision(engine) is None
    dbmod.upgrade(engine, "0003")
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0003"
    assert dbmod.current_revision(engine) == "0003"
    dbmod.check_schema(engine)
    assert dbmod.current_revision(engine) == dbmod.head_revision()


def test_timestamps_come_back_aware_and_in_utc(db_url):
    from datetime import UTC, datetime, timedelta, timezone

    from core.ingestion import ingest

    engine = dbmod.open_db(db_url)
    ingest(engine, [{"type": "x", "user_id": "u", "ts": "2026-05-01T12:00:00+05:30"}])
    with engine.connect() as conn:
        ts = conn.execute(sa.select(EVENTS.c.ts)).scalar_one()
        # A window compare in SQL with an aware bound agrees with Python.
        bound = datetime(2026, 5, 1, 6, 30, tzinfo=UTC)
        n = conn.execute(sa.select(sa.func.count()).where(EVENTS.c.ts >= bound)).scalar_one()
        # 12:00+06:00 is 06:00 UTC (before the event), 12:00+05:00 is 07:00 UTC (after).
        plus6, plus5 = timezone(timedelta(hours=6)), timezone(timedelta(hours=5))
        window = conn.execute(
            sa.select(sa.func.count()).where(
                EVENTS.c.ts > datetime(2026, 5, 1, 12, tzinfo=plus6),
                EVENTS.c.ts < datetime(2026, 5, 1, 12, tzinfo=plus5),
            )
        ).scalar_one()
    assert ts == datetime(2026, 5, 1, 6, 30, tzinfo=UTC) and ts.tzinfo is not None
    assert (n, window) == (1, 1)


def test_sqlite_runs_in_wal_with_foreign_keys_and_busy_timeout(sqlite_url):
    engine = dbmod.open_db(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == dbmod.SQLITE_BUSY_TIMEOUT_MS
        with pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql(
                "INSERT INTO identities (profile_id, kind, value, created_at) "
                "VALUES (999, 'user_id', 'ghost', '2026-01-01 00:00:00.000000')"
            )


def test_old_schema_is_upgraded_or_reported(sqlite_url):
    engine = dbmod.make_engine(sqlite_url)
    dbmod.upgrade(engine, "0001")
    with engine.begin() as conn:  # pretend the database predates every migration
        conn.exec_driver_sql("DELETE FROM alembic_version")
    with pytest.raises(dbmod.DatabaseError, match="run `segflow db upgrade`"):
        dbmod.check_schema(engine, auto_upgrade=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('9999_future')")
    with pytest.raises(dbmod.DatabaseError, match="9999_future, which this segflow does not know"):
        dbmod.check_schema(engine)


def test_unreachable_database_is_one_clear_line():
    with pytest.raises(dbmod.DatabaseError) as info:
        dbmod.open_db("postgresql://nobody@127.0.0.1:1/none")
    assert "cannot open database" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(dbmod.DatabaseError, match="not a database URL"):
        dbmod.open_db("definitely not a url")
    with pytest.raises(dbmod.DatabaseError, match="directory for the SQLite file does not exist"):
        dbmod.open_db("sqlite:////no/such/dir/x.db")


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)
    assert load_settings().database_url == "sqlite:///segflow.db"
    (tmp_path / "segflow.toml").write_text('[segflow]\ndatabase_url = "sqlite:///toml.db"\n')
    assert (load_settings().database_url, load_settings().source) == (
        "sqlite:///toml.db",
        "segflow.toml",
    )
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", "sqlite:///env.db")
    assert load_settings().database_url == "sqlite:///env.db"
    assert load_settings("sqlite:///flag.db").database_url == "sqlite:///flag.db"


def test_bad_config_file_names_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    (tmp_path / "segflow.toml").write_text("[segflow]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match="segflow.toml: field 'batch_size'"):
        load_settings()
    (tmp_path / "segflow.toml").write_text("[segflow]\ndatabse_url = 'x'\n")
    with pytest.raises(ConfigError, match="field 'databse_url'"):
        load_settings()
    (tmp_path / "segflow.toml").write_text("not toml at all ===")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_migrations_build_exactly_the_models_schema(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = dbmod.open_db(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], "models changed without a migration: " + repr(diff)
