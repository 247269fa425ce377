"""Engines, connection settings per backend, and schema migrations (Alembic)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseError(Exception):
    """The database cannot be used as asked; the message says what to do."""


def _json_dumps(value: object) -> str:
    # orjson is several times faster than json on the bulk path and handles datetimes.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL + NORMAL is durable across application crashes, only an OS crash can
    # lose the last transactions; the usual choice for an embedded store.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseError(f"not a database URL: {url!r}") from None
    kwargs: dict = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    if sa_url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if sa_url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"]["check_same_thread"] = False
        elif sa_url.database:
            parent = Path(sa_url.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise DatabaseError(f"directory for the SQLite file does not exist: {parent}")
    elif sa_url.get_backend_name() == "postgresql" and sa_url.drivername == "postgresql":
        # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(sa_url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise DatabaseError(f"no driver for {sa_url.drivername}: {exc}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The code's schema revision, read from the migration files' names (NNNN_*.py,
    one linear history; a test holds it to Alembic's own head): every command
    checks it, and loading Alembic to learn it costs more than most commands."""
    files = (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    return max(path.name[:4] for path in files)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            revisions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    except sa.exc.OperationalError as exc:
        reason = " ".join(str(exc.orig).split())  # drivers print several lines; keep one
        raise DatabaseError(f"cannot open database {engine.url!r}: {reason}") from None
    if len(revisions) > 1:
        raise DatabaseError(f"database {engine.url!r} has several schema heads: {revisions}")
    return revisions[0][0] if revisions else None


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def check_schema(engine: Engine, auto_upgrade: bool = True) -> None:
    """Bring the schema to the code's version, or say clearly why not."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        raise DatabaseError(
            f"database schema is at revision {current}, which this segflow does not know "
            f"(newer version?); code expects {head}"
        )
    if not auto_upgrade:
        raise DatabaseError(
            f"database schema is at revision {current or 'none'}, code expects {head}: "
            "run `segflow db upgrade`"
        )
    upgrade(engine)


def open_db(url: str, auto_upgrade: bool = True) -> Engine:
    """An engine on an up-to-date schema, with any interrupted bulk load
    finished first (each one done is logged as a warning, one line)."""
    from core.ingestion.bulk import finish_interrupted_loads  # ingest imports core.db
    from core.privacy.crypto import keyring

    # A malformed key fails here, named, not in the middle of a write.
    keyring()
    engine = make_engine(url)
    check_schema(engine, auto_upgrade=auto_upgrade)
    finish_interrupted_loads(engine)
    return engine


def upgrade_schema(url: str) -> tuple[str | None, str]:
    """Apply migrations up to the latest: (revision before or None, revision after).
    A change of schema is an admin action: audited (``db.upgrade``) once applied."""
    from core.audit import record  # core.audit reads the tables this module builds

    engine = make_engine(url)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    if after != before:
        with engine.begin() as conn:
            record(conn, None, "db.upgrade", after, {"from": before, "to": after})
    return before, after


def schema_revisions(url: str) -> tuple[str | None, str]:
    """(the database's schema revision or None when empty, the code's)."""
    return current_revision(make_engine(url)), head_revision()
