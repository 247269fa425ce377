"""Reading what the evaluators need from the database."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
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
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE profile_id = {mark} AND ts <= {mark}"
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
    attributes = found[0] if found else None
    return ProfileData(
        events=[_event_row(r, parse) for r in rows],
        attributes=_attributes(attributes),
        consents=consents,
        scores=scores,
    )


_EVENT_COLUMNS = (
    "type, ts, session_id, product_id, value, currency, url, campaign, source, properties,"
    " message_id"
)


def _event_row(r: Any, parse: Any) -> EventRow:
    props = r[9]
    if isinstance(props, str | bytes):
        props = orjson.loads(props)
    return EventRow(r[0], parse(r[1]), *r[2:9], properties=props or {}, message_id=r[10])


def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return value or {}


# People read in one go, and held at most (their events are in memory).
LOAD_CHUNK = 200
MAX_LOADED = 5000


class ProfilesLoader:
    """What ``load_profile_data`` reads, for several people at once.

    ``want(pids, until)`` names people whose data may be asked for at times up
    to ``until``; the first ``get`` of one of them reads all of them in four
    statements (their events up to ``until``, attributes, consents, and who
    has scores), and each ``get(pid, at)`` then keeps the events up to ``at``.
    Scores are read per (person, time), and only for people who have any: a
    score's value as of a time depends on the model's runs up to then.
    Anyone not wanted, or asked about past ``until``, is read alone.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._wanted: dict[int, datetime] = {}
        self._loaded: dict[int, tuple[datetime, list[EventRow], dict[str, Any], set[str]]] = {}
        self._scored: set[int] = set()

    def want(self, pids: Iterable[int], until: datetime) -> None:
        for pid in pids:
            held = self._loaded.get(pid)
            if held is None or held[0] < until:
                self._wanted[pid] = max(until, self._wanted.get(pid, until))

    def get(self, pid: int, at: datetime) -> ProfileData:
        if pid in self._wanted and self._wanted[pid] >= at:
            self._load(pid)
        held = self._loaded.get(pid)
        if held is None or held[0] < at:
            return load_profile_data(self.conn, pid, at)
        _until, events, attributes, consents = held
        cut = bisect.bisect_right(events, at, key=lambda e: e.ts)
        scores = {}
        if pid in self._scored:
            dialect = self.conn.dialect
            cur = self.conn.connection.cursor()
            try:
                scores = latest_scores(cur, param_mark(dialect), pid, db_time(dialect.name, at))
            finally:
                cur.close()
        return ProfileData(
            events=events[:cut], attributes=dict(attributes), consents=set(consents), scores=scores
        )

    def _load(self, pid: int) -> None:
        """Read ``pid`` and up to LOAD_CHUNK - 1 others wanted as far ahead."""
        until = self._wanted[pid]
        chunk = [pid] + [p for p, u in self._wanted.items() if u == until and p != pid]
        chunk = sorted(chunk[:LOAD_CHUNK])
        for p in chunk:
            del self._wanted[p]
        if len(self._loaded) > MAX_LOADED:
            self._loaded.clear()
        dialect = self.conn.dialect
        cur = self.conn.connection.cursor()
        try:
            self._load_chunk(cur, param_mark(dialect), time_reader(dialect.name), chunk, until)
        finally:
            cur.close()

    def _load_chunk(
        self, cur: Any, mark: str, parse: Any, pids: list[int], until: datetime
    ) -> None:
        ids = ", ".join([mark] * len(pids))
        cur.execute(
            f"SELECT profile_id, {_EVENT_COLUMNS} FROM events"
            f" WHERE profile_id IN ({ids}) AND ts <= {mark} ORDER BY profile_id, ts, id",
            (*pids, db_time(self.conn.dialect.name, until)),
        )
        events: dict[int, list[EventRow]] = {pid: [] for pid in pids}
        for r in cur.fetchall():
            events[r[0]].append(_event_row(r[1:], parse))
        cur.execute(f"SELECT id, attributes FROM profiles WHERE id IN ({ids})", pids)
        attributes = {pid: _attributes(value) for pid, value in cur.fetchall()}
        cur.execute(
            f"SELECT profile_id, purpose FROM consents WHERE profile_id IN ({ids})"
            f" AND granted = {mark}",
            (*pids, True),
        )
        consents: dict[int, set[str]] = defaultdict(set)
        for pid, purpose in cur.fetchall():
            consents[pid].add(purpose)
        cur.execute(f"SELECT DISTINCT profile_id FROM scores WHERE profile_id IN ({ids})", pids)
        self._scored.update(r[0] for r in cur.fetchall())
        for pid in pids:
            self._loaded[pid] = (until, events[pid], attributes.get(pid, {}), consents[pid])
