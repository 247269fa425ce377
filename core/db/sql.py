"""Small SQL helpers every module that writes in bulk shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Stay below every backend's bound-parameter limit.
IN_CHUNK = 900


def param_mark(dialect: Any) -> str:
    """The driver's placeholder for one parameter (``?`` or ``%s``)."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def sqlite_time(value: datetime) -> str:
    """A timestamp as the exact text SQLAlchemy's SQLite DateTime writes (naive
    UTC, fixed width), so rows written through the driver and through the ORM
    compare and sort alike."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def chunks(seq: Sequence, size: int = IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def fetch_in(
    conn: Connection, sql: str, column: str, values: Sequence, fixed: tuple = ()
) -> list[tuple]:
    """Rows of ``sql`` (a plain SELECT ... WHERE, ``?`` for the ``fixed``
    parameters) restricted to ``column`` IN ``values``.

    The bulk path looks up thousands of keys per batch; SQLAlchemy's rendering
    of large IN lists costs more than the lookups themselves, so these two
    simple statements go to the driver directly, with its parameter style.
    """
    if not values:
        return []
    driver = conn.connection.driver_connection
    qmark = conn.dialect.paramstyle == "qmark"
    mark = param_mark(conn.dialect)
    base = sql if qmark else sql.replace("?", "%s")
    out: list[tuple] = []
    cur = driver.cursor()
    try:
        if conn.dialect.name == "postgresql":
            # While a big load grows the table faster than autovacuum analyses
            # it, the planner believes it tiny and scans it per batch; these
            # are key lookups, so the index is always the right plan.
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute(f"{base} AND {column} = ANY({mark})", (*fixed, list(values)))
            rows = list(cur.fetchall())
            cur.execute("SET LOCAL enable_seqscan = on")
            return rows
        for part in chunks(values, DRIVER_IN_CHUNK if qmark else IN_CHUNK):
            cur.execute(
                f"{base} AND {column} IN ({', '.join([mark] * len(part))})", (*fixed, *part)
            )
            out.extend(cur.fetchall())
    finally:
        cur.close()
    return out


def driver_rows(conn: Connection, sql: str, params: Sequence = ()) -> list[tuple]:
    """Rows of ``sql`` (``?`` for each parameter, ``marks(n)`` for a list) run on
    the driver's own cursor.

    For the lookups made once per person on the send path (recommendations,
    a template's context): SQLAlchemy's work per execution (parameter
    processing, expanding IN lists, result rows) costs several times the
    indexed lookup itself there. Values come back as the driver gives them:
    timestamps through ``time_reader``, booleans as 0/1 on SQLite.
    """
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, tuple(params))
        return list(cur.fetchall())
    finally:
        cur.close()


def marks(n: int) -> str:
    """``n`` parameter marks for ``driver_rows`` (``?, ?, ?``); an empty list matches nothing."""
    return ", ".join(["?"] * n) if n else "NULL"


# SQLite since 3.32 binds up to 32766 parameters.
DRIVER_IN_CHUNK = 5000


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (upserts)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    raise NotImplementedError(
        f"upserts are written for SQLite and PostgreSQL, not {conn.dialect.name}"
    )
