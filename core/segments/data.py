"""Reading what the evaluators need from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from core.db.sql import param_mark
from core.segments.batch import db_time, time_reader
from core.segments.evaluate import EventRow, ProfileData


def latest_scores(cur: Any, mark: str, profile_id: int, at: Any) -> dict[str, float]:
    """The profile's value of each scoring model as of ``at`` (driver form), by
    the rule of core.scoring.latest_score_sql: the model's latest run at or
    before then, that run found through (model, as_of)."""
    cur.execute(
        "SELECT s.model, s.value FROM scores s"
        f" WHERE s.profile_id = {mark} AND s.as_of <= {mark} AND s.as_of = ("
        f"SELECT max(r.as_of) FROM scores r WHERE r.model = s.model AND r.as_of <= {mark})"
        " ORDER BY s.id",
        (profile_id, at, at),
    )
    return {model: value for model, value in cur.fetchall()}


def load_profile_data(conn: Connection, profile_id: int, as_of: datetime) -> ProfileData:
    """One profile's events (up to as_of), attributes, consents and scores.

    Read through the driver: a real-time call is a few small statements, and
    SQLAlchemy's per-statement and per-row work would be most of its cost.
    """
    dialect = conn.dialect
    mark = param_mark(dialect)
    parse = time_reader(dialect.name)
    cur = conn.connection.cursor()
    try:
        cur.execute(
            "SELECT type, ts, session_id, product_id, value, currency, url, campaign, source,"
            f" properties, message_id FROM events WHERE profile_id = {mark} AND ts <= {mark}"
            " ORDER BY ts, id",
            (profile_id, db_time(dialect.name, as_of)),
        )
        rows = cur.fetchall()
        cur.execute(f"SELECT attributes FROM profiles WHERE id = {mark}", (profile_id,))
        found = cur.fetchone()
        cur.execute(
            f"SELECT purpose FROM consents WHERE profile_id = {mark} AND granted = {mark}",
            (profile_id, True),
        )
        consents = {r[0] for r in cur.fetchall()}
        scores = latest_scores(cur, mark, profile_id, db_time(dialect.name, as_of))
    finally:
        cur.close()
    events = []
    for r in rows:
        ts = parse(r[1])
        props = r[9]
        if isinstance(props, str | bytes):
            props = orjson.loads(props)
        events.append(EventRow(r[0], ts, *r[2:9], properties=props or {}, message_id=r[10]))
    attributes = found[0] if found else None
    if isinstance(attributes, str | bytes):
        attributes = orjson.loads(attributes)
    return ProfileData(events=events, attributes=attributes or {}, consents=consents, scores=scores)
