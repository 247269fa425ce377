"""The INSERT of a batch's events, per backend: SQLite multi-row INSERTs at
the driver, PostgreSQL COPY, and SQLAlchemy Core for any other dialect."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from core.db.sql import sqlite_time
from core.db.tables import EVENTS
from core.ingestion.plain import STORED_JSON, TS_TEXT
from core.ingestion.schema import IDENTIFY, Fields, json_bytes
from core.privacy import crypto

# (connection, events' fields, their profile ids, source, receive time) -> rows inserted
EventWriter = Callable[[Connection, list[Fields], list[int], str, datetime], int]

EVENT_COLUMNS = (
    "profile_id",
    "type",
    "ts",
    "session_id",
    "product_id",
    "value",
    "currency",
    "url",
    "campaign",
    "properties",
    "source",
    "message_id",
    "received_at",
)


def make_writer(engine: Engine) -> EventWriter:
    """The fastest correct bulk insert for the backend; returns rows inserted."""
    if engine.dialect.name == "postgresql":
        return _write_postgres_copy
    if engine.dialect.name == "sqlite":
        return _write_sqlite
    return _write_core


def _sqlite_ts_of(text: str | None, value: datetime) -> str:
    """``sqlite_time(value)``, cut from ``text`` when that is the plain form's
    ISO text of ``value`` in UTC (date, time, 0-6 fraction digits, offset)."""
    if text is not None and (text[-1] == "Z" or text.endswith("+00:00")):
        fraction = text[19:-1] if text[-1] == "Z" else text[19:-6]
        return text[:10] + " " + text[11:19] + ((fraction or ".") + "000000")[:7]
    return sqlite_time(value)


# Rows per INSERT statement on SQLite: 13 columns x 500 stays far below the
# 32766 bound parameters SQLite allows, and one statement per 500 rows spends
# less time in the driver than executemany's row-by-row loop.
SQLITE_ROWS_PER_STATEMENT = 500
# On the pipeline's helper, each statement ends waiting for the GIL: fewer,
# bigger statements (13 x 2500 bound values, near the 32766 limit) wait less.
SQLITE_PIPELINE_ROWS_PER_STATEMENT = 2500


# Binding None costs the sqlite3 module an adapter lookup per value, a fifth
# of the insert's time with the three or four fields an event usually leaves
# out. So on SQLite a missing optional field is bound as a marker its column
# never holds, and SQLite turns it into NULL: 0 in text columns (validated
# text is always a str), '' for value (always a float).
SQLITE_ABSENT: dict[str, Any] = {
    "session_id": 0,
    "product_id": 0,
    "value": "",
    "currency": 0,
    "url": 0,
    "campaign": 0,
}


@functools.cache
def _sqlite_insert_sql(n_rows: int) -> str:
    one = (
        "("
        + ", ".join(
            f"NULLIF(?, {SQLITE_ABSENT[c]!r})" if c in SQLITE_ABSENT else "?" for c in EVENT_COLUMNS
        )
        + ")"
    )
    return (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
        + ", ".join([one] * n_rows)
        + " ON CONFLICT (message_id) DO NOTHING"
    )


def _write_sqlite(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """Driver-level multi-row INSERTs: SQLAlchemy's per-row parameter processing
    costs more than SQLite's insert itself, so values are converted here once."""
    cur = conn.connection.driver_connection.cursor()
    try:
        return _insert_sqlite(cur, _sqlite_params(events, pids, source, now))
    finally:
        cur.close()


def _sqlite_params(events: list[Fields], pids: list[int], source: str, now: datetime) -> list:
    """The rows' bound values, one flat list."""
    return list(itertools.chain.from_iterable(_rows(events, pids, source, now, for_sqlite=True)))


def _insert_sqlite(
    cur: Any, flat: list, rows_per_statement: int = SQLITE_ROWS_PER_STATEMENT
) -> int:
    width = len(EVENT_COLUMNS)
    step = rows_per_statement * width
    inserted = 0
    for start in range(0, len(flat), step):
        params = flat[start : start + step]
        cur.execute(_sqlite_insert_sql(len(params) // width), params)
        inserted += cur.rowcount
    return inserted


def _rows(
    events: list[Fields],
    pids: list[int],
    source: str,
    now: datetime,
    *,
    for_sqlite: bool = False,
    props_json: bool = False,
) -> list[tuple]:
    """Column values in EVENT_COLUMNS order; properties as JSON text with
    ``props_json``; ``for_sqlite``: times as SQLite's text, properties as JSON
    text and missing fields as SQLITE_ABSENT's markers.

    The hottest loop of a bulk load, hence written out inline.
    """
    received: datetime | str = sqlite_time(now) if for_sqlite else now
    props_json = props_json or for_sqlite
    absent = SQLITE_ABSENT if for_sqlite else dict.fromkeys(SQLITE_ABSENT)
    no_session, no_product, no_value, no_currency, no_url, no_campaign = (
        absent[c] for c in ("session_id", "product_id", "value", "currency", "url", "campaign")
    )
    ring = crypto.keyring()
    rows = []
    append = rows.append
    for e, pid in zip(events, pids, strict=True):
        get = e.get
        type_ = e["type"]
        ts = get("ts")
        if ts is None:
            ts = received
        elif for_sqlite:
            ts = _sqlite_ts_of(get(TS_TEXT), ts)
        identify = type_ == IDENTIFY
        if props_json and (text := get(STORED_JSON)) is not None and not (identify and ring):
            props = text
        else:
            # An identify call keeps its traits as the event's properties,
            # with the personal ones sealed when a key is set.
            props = get("traits") if identify else get("properties", {})
            if identify and ring is not None:
                props = crypto.seal_traits(props, ring)
            if props_json:
                props = json_bytes(props).decode()
        append(
            (
                pid,
                type_,
                ts,
                # A field given as None (always so in an Event's fields) is
                # bound as None, which SQLite stores as NULL too.
                get("session_id", no_session),
                get("product_id", no_product),
                get("value", no_value),
                get("currency", no_currency),
                get("url", no_url),
                get("campaign", no_campaign),
                props,
                source,
                e["message_id"],
                received,
            )
        )
    return rows


def _write_core(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """Any other SQLAlchemy dialect: Core executemany (duplicates were checked before)."""
    rows = [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in _rows(events, pids, source, now)]
    return conn.execute(EVENTS.insert(), rows).rowcount


def _write_postgres_copy(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """COPY straight into events; duplicates were already dropped in this
    transaction. Should a concurrent writer have stored one of these since,
    the COPY fails on the unique key and the batch goes through a temp table
    and INSERT .. ON CONFLICT DO NOTHING instead."""
    from psycopg.errors import UniqueViolation

    cols = ", ".join(EVENT_COLUMNS)
    dbapi = conn.connection.driver_connection
    try:
        with conn.begin_nested(), dbapi.cursor() as cur:
            _copy_rows(cur, "events", events, pids, source, now)
            return len(events)
    except UniqueViolation:
        pass  # the savepoint is rolled back; nothing of this batch was stored
    with dbapi.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS events_stage "
            f"ON COMMIT DELETE ROWS AS SELECT {cols} FROM events WITH NO DATA"
        )
        _copy_rows(cur, "events_stage", events, pids, source, now)
        cur.execute(
            f"INSERT INTO events ({cols}) SELECT {cols} FROM events_stage "
            "ON CONFLICT (message_id) DO NOTHING"
        )
        inserted = cur.rowcount
        cur.execute("TRUNCATE events_stage")
    return inserted


def _copy_rows(
    cur: Any, table: str, events: list[Fields], pids: list[int], source: str, now: datetime
) -> None:
    with cur.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
        for row in _rows(events, pids, source, now, props_json=True):
            copy.write_row(row)
