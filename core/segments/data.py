"""Reading what the evaluators need from the database."""

from __future__ import annotations

from datetime import datetime

import orjson
from sqlalchemy.engine import Connection

from core.db.sql import param_mark
from core.segments.batch import db_time, time_reader
from core.segments.evaluate import EventRow, ProfileData


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
        # The rule of core.scoring.latest_score_sql: each model's value from its
        # latest run at or before as_of, that run found through (model, as_of).
        at = db_time(dialect.name, as_of)
        cur.execute(
            "SELECT s.model, s.value FROM scores s"
            f" WHERE s.profile_id = {mark} AND s.as_of <= {mark} AND s.as_of = ("
            f"SELECT max(r.as_of) FROM scores r WHERE r.model = s.model AND r.as_of <= {mark})"
            " ORDER BY s.id",
            (profile_id, at, at),
        )
        scores = {model: value for model, value in cur.fetchall()}
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
