"""Bulk reads and writes of membership state through the driver.

A run moves as many rows as there are people changing; SQLAlchemy's per-row
type processing would cost more than the statements themselves, so these go
to the DB-API cursor of the run's connection (same transaction), with values
already in the driver's form (``core.segments.batch.db_time``).
PostgreSQL takes inserts as binary COPY and other batches as one statement
over arrays (``unnest``); other drivers take ``executemany``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from core.db.sql import chunks, param_mark


def select_pairs(
    cur: Any, dialect: Any, sql: str, column: str | None = None, values: Sequence = ()
) -> list[tuple]:
    """Rows of ``sql``, restricted to ``column`` IN ``values`` when a column is given."""
    if column is None:
        cur.execute(sql)
        return list(cur.fetchall())
    if not values:
        return []
    where = " AND " if " WHERE " in sql else " WHERE "
    if dialect.name == "postgresql":
        cur.execute(f"{sql}{where}{column} = ANY(%s)", (list(values),))
        return list(cur.fetchall())
    out: list[tuple] = []
    mark = param_mark(dialect)
    for part in chunks(values):
        cur.execute(f"{sql}{where}{column} IN ({', '.join([mark] * len(part))})", tuple(part))
        out.extend(cur.fetchall())
    return out


# Binary COPY needs each column's exact type; the casts' spelling -> its name.
_BINARY_TYPES = {"int": "int4", "bigint": "int8"}


def insert_rows(
    cur: Any,
    dialect: Any,
    table: str,
    columns: Sequence[str],
    pg_types: Sequence[str],
    rows: Iterable[tuple],
    suffix: str = "",
) -> None:
    """INSERT rows (tuples in ``columns`` order); ``suffix`` e.g. ON CONFLICT."""
    rows = list(rows)
    if not rows:
        return
    names = ", ".join(columns)
    if dialect.name == "postgresql" and not suffix:
        # Binary COPY: psycopg dumps array parameters as text, escaping each
        # element, which cost more than the server's work (bench/README.md).
        with cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_BINARY_TYPES.get(t, t) for t in pg_types])
            for row in rows:
                copy.write_row(row)
        return
    if dialect.name == "postgresql":
        arrays = ", ".join(f"%s::{t}[]" for t in pg_types)
        cur.execute(
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}",
            [list(c) for c in zip(*rows, strict=True)],
        )
        return
    marks = ", ".join([param_mark(dialect)] * len(columns))
    cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {suffix}", rows)


def delete_pairs(
    cur: Any, dialect: Any, table: str, columns: tuple[str, str], pg_types: tuple[str, str], rows
) -> None:
    """DELETE the rows whose two key columns equal each (a, b) pair."""
    rows = list(rows)
    if not rows:
        return
    a, b = columns
    if dialect.name == "postgresql":
        ta, tb = pg_types
        cur.execute(
            f"DELETE FROM {table} t USING unnest(%s::{ta}[], %s::{tb}[]) AS d(a, b) "
            f"WHERE t.{a} = d.a AND t.{b} = d.b",
            [list(c) for c in zip(*rows, strict=True)],
        )
        return
    mark = param_mark(dialect)
    cur.executemany(f"DELETE FROM {table} WHERE {a} = {mark} AND {b} = {mark}", rows)


def delete_in(cur: Any, dialect: Any, table: str, column: str, values: Sequence) -> None:
    """DELETE the rows whose ``column`` is one of ``values``."""
    if not values:
        return
    if dialect.name == "postgresql":
        cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (list(values),))
        return
    mark = param_mark(dialect)
    for part in chunks(values):
        cur.execute(
            f"DELETE FROM {table} WHERE {column} IN ({', '.join([mark] * len(part))})", tuple(part)
        )
