"""Identity resolution: which profile an event belongs to, merging when ids link.

Rules (Segment's, made explicit):
- an event with ``user_id`` belongs to that user's profile; when it also
  carries an ``anonymous_id`` whose profile is still anonymous, that profile is
  merged into the user's (or simply gains the user id when the user is new);
- an anonymous id already tied to a *different* identified user is a shared
  device: the event goes to the user named, nothing is merged;
- an event with only ``anonymous_id`` belongs to that anonymous profile;
- ``email`` is an identity too: it finds the profile when no id is given, and
  an anonymous profile found by email is merged like an anonymous id. Two
  identified users are never merged because they share an email.

Resolution runs per batch: identities are looked up in bulk, decisions are
taken in memory in event order (new profiles get temporary negative handles),
then applied with a handful of bulk statements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.db.models import utcnow
from core.db.sql import fetch_in, sqlite_time
from core.db.tables import AUDIT, EVENTS, IDENTITIES, PROFILES
from core.privacy import crypto


@dataclass
class ResolveStats:
    created: int = 0
    merged: int = 0
    merges: list[tuple[int, int]] = field(default_factory=list)  # (from, into), real ids


class BatchResolver:
    """Resolves the identities of one batch of events inside one transaction.

    Profile attributes and emails are tracked in memory in event order too, so
    a batch ends in exactly the state that storing its events one by one
    would give (merges: the surviving profile's values win; identify traits:
    the later call wins, key by key).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.handle_of: dict[tuple[str, str], int] = {}
        self.user_of: dict[int, str | None] = {}
        self.attrs: dict[int, dict[str, Any]] = {}
        self.email_of: dict[int, str | None] = {}
        self.touched: set[int] = set()
        self.parent: dict[int, int] = {}
        self.new_identities: dict[tuple[str, str], int] = {}
        self.promoted: dict[int, str] = {}
        self.merges: list[tuple[int, int]] = []
        self._next_temp = -1
        self.real: dict[int, int] = {}
        self._known: dict[tuple[str | None, str | None, str | None], int] = {}

    # -- lookup ------------------------------------------------------------
    def prefetch(self, keys: set[tuple[str, str]]) -> None:
        ring = crypto.keyring()
        by_kind: dict[str, list[str]] = {}
        # Decisions are taken on addresses; what identities store for one
        # (its blind index under any key, or the address) maps back to it.
        address_of: dict[str, str] = {}
        for kind, value in keys:
            if kind == "email":
                for stored in crypto.email_lookups(value, ring):
                    address_of.setdefault(stored, value)
                    by_kind.setdefault(kind, []).append(stored)
            else:
                by_kind.setdefault(kind, []).append(value)
        for kind, values in by_kind.items():
            rows = fetch_in(
                self.conn,
                "SELECT i.value, p.id, p.user_id, p.attributes, p.email FROM identities i "
                "JOIN profiles p ON p.id = i.profile_id WHERE i.kind = ?",
                "i.value",
                values,
                (kind,),
            )
            for value, pid, user_id, attributes, email in rows:
                key = address_of.get(value, value) if kind == "email" else value
                self.handle_of[(kind, key)] = pid
                self.user_of[pid] = user_id
                # The driver hands JSON back as text on SQLite, decoded on PostgreSQL.
                self.attrs[pid] = crypto.unseal_traits(
                    (
                        orjson.loads(attributes)
                        if isinstance(attributes, str | bytes)
                        else attributes
                    )
                    or {},
                    ring,
                )
                self.email_of[pid] = crypto.unseal(email, ring)

    def find(self, handle: int | None) -> int | None:
        if handle is None:
            return None
        root = handle
        while root in self.parent:
            root = self.parent[root]
        while handle != root:  # path compression keeps long merge chains cheap
            self.parent[handle], handle = root, self.parent[handle]
        return root

    def _lookup(self, kind: str, value: str | None) -> int | None:
        if value is None:
            return None
        return self.find(self.handle_of.get((kind, value)))

    def _new(self, user_id: str | None) -> int:
        handle = self._next_temp
        self._next_temp -= 1
        self.user_of[handle] = user_id
        self.attrs[handle] = {}
        self.email_of[handle] = None
        return handle

    def _link(self, kind: str, value: str, handle: int) -> None:
        self.handle_of[(kind, value)] = handle
        self.new_identities[(kind, value)] = handle

    def _merge(self, source: int, into: int) -> None:
        self.parent[source] = into
        self.merges.append((source, into))
        self.attrs[into] = {**self.attrs[source], **self.attrs[into]}
        self.email_of[into] = self.email_of[into] or self.email_of[source]
        self.touched.add(into)

    # -- decisions -----------------------------------------------------------
    def resolve(
        self,
        user_id: str | None,
        anonymous_id: str | None,
        email: str | None,
        traits: dict[str, Any] | None = None,
        trait_email: str | None = None,
    ) -> int:
        """The handle of the profile an event with these ids belongs to.

        ``traits`` (from an identify call) are merged into its attributes;
        ``trait_email`` sets its address, a plain ``email`` only fills a gap.

        Without traits, the same ids a second time in a batch resolve to the
        same profile and change nothing, so the first answer is reused: the
        first call links every id it was given (or found it tied to an
        identified profile, which is never merged away), and merges only join
        profiles, never split them.
        """
        plain = traits is None and trait_email is None
        if plain and (known := self._known.get((user_id, anonymous_id, email))) is not None:
            return known
        email = email or trait_email
        by_anon = self._lookup("anonymous_id", anonymous_id)
        by_email = self._lookup("email", email)
        if user_id is not None:
            target = self._lookup("user_id", user_id)
            if target is None:
                if by_anon is not None and self.user_of[by_anon] is None:
                    target = by_anon
                    self.user_of[target] = user_id
                    if target > 0:
                        self.promoted[target] = user_id
                else:
                    target = self._new(user_id)
                self._link("user_id", user_id, target)
            elif by_anon is not None and by_anon != target and self.user_of[by_anon] is None:
                self._merge(by_anon, target)
        elif anonymous_id is not None:
            target = by_anon if by_anon is not None else by_email
            if target is None:
                target = self._new(None)
        else:
            target = by_email if by_email is not None else self._new(None)

        if anonymous_id is not None and by_anon is None:
            self._link("anonymous_id", anonymous_id, target)
        if email is not None:
            if by_email is None:
                self._link("email", email, target)
            elif by_email != target and self.user_of[by_email] is None:
                self._merge(by_email, target)
        if traits:
            self.attrs[target] = {**self.attrs[target], **traits}
            self.touched.add(target)
        if trait_email:
            self.email_of[target] = trait_email
            self.touched.add(target)
        elif email and not self.email_of[target]:
            self.email_of[target] = email
            self.touched.add(target)
        if plain:
            self._known[(user_id, anonymous_id, email)] = target
        return target

    # -- applying ---------------------------------------------------------------
    def apply(self, defer_moves: list[tuple[int, int]] | None = None) -> ResolveStats:
        """Write new profiles, promotions, merges, identities and attributes.

        With ``defer_moves``, merged profiles' events are not moved now; the
        (source, into) pairs are appended there for the caller to move later.
        """
        stats = ResolveStats()
        now = utcnow()
        temps = [h for h in self.user_of if h < 0 and self.find(h) == h]
        if temps:
            rows = [
                {
                    "user_id": self.user_of[h],
                    "attributes": self.attrs[h],
                    "email": self.email_of[h],
                    "created_at": now,
                    "updated_at": now,
                }
                for h in temps
            ]
            for h, pid in zip(temps, insert_profiles(self.conn, rows), strict=True):
                self.real[h] = pid
            stats.created = len(temps)
        for pid, user_id in self.promoted.items():
            self.conn.execute(
                PROFILES.update()
                .where(PROFILES.c.id == pid)
                .values(user_id=user_id, updated_at=now)
            )
        for source, into in self.merges:
            if source < 0:
                continue  # a profile created in this batch has nothing stored to move
            dst = self.profile_id(into)
            merge_profiles(self.conn, source, dst, now, move=defer_moves is None)
            if defer_moves is not None:
                defer_moves.append((source, dst))
            stats.merges.append((source, dst))
        stats.merged = len(stats.merges)
        if self.new_identities:
            rows = [
                {"kind": k, "value": v, "profile_id": self.profile_id(h), "created_at": now}
                for (k, v), h in self.new_identities.items()
            ]
            insert_identities(self.conn, rows)
        if touched := [h for h in {self.find(h) for h in self.touched} if h > 0]:
            self.conn.execute(
                _SET_ATTRIBUTES,
                [
                    {
                        "pid": h,
                        "set_attributes": self.attrs[h],
                        "set_email": self.email_of[h],
                        "now": now,
                    }
                    for h in touched
                ],
            )
        return stats

    def profile_id(self, handle: int) -> int:
        root = self.find(handle)
        return self.real.get(root, root)


# One executemany for the profiles a batch changed (thousands, on a big load).
_SET_ATTRIBUTES = (
    PROFILES.update()
    .where(PROFILES.c.id == sa.bindparam("pid"))
    .values(
        attributes=sa.bindparam("set_attributes", type_=PROFILES.c.attributes.type),
        email=sa.bindparam("set_email", type_=PROFILES.c.email.type),
        updated_at=sa.bindparam("now", type_=PROFILES.c.updated_at.type),
    )
)


PROFILE_COLUMNS = ("user_id", "email", "attributes", "created_at", "updated_at")
IDENTITY_COLUMNS = ("kind", "value", "sealed", "profile_id", "created_at")


def _sealed_profile(row: dict[str, Any], ring: crypto.Keyring | None) -> dict[str, Any]:
    if ring is None:
        return row
    return {
        **row,
        "email": crypto.seal(row["email"], ring),
        "attributes": crypto.seal_traits(row["attributes"], ring),
    }


def _stored_identity(row: dict[str, Any], ring: crypto.Keyring | None) -> dict[str, Any]:
    """An identity row as stored: an email as its blind index, the address sealed."""
    if row["kind"] != "email" or ring is None or row["value"].startswith(crypto.INDEX):
        return {"sealed": None, **row}
    return {**row, "value": ring.index(row["value"]), "sealed": ring.seal(row["value"])}


def insert_profiles(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert profile rows (PROFILE_COLUMNS); their new ids, in row order.

    A big load creates a profile for every few events: on SQLite and
    PostgreSQL the rows go to the driver as they are, since SQLAlchemy's
    per-row parameter processing costs more than the insert.
    """
    if not rows:
        return []
    ring = crypto.keyring()
    rows = [_sealed_profile(row, ring) for row in rows]
    if conn.dialect.name == "sqlite":
        return _insert_profiles_sqlite(conn, rows)
    if conn.dialect.name == "postgresql":
        return _insert_profiles_postgres(conn, rows)
    result = conn.execute(
        PROFILES.insert().returning(PROFILES.c.id, sort_by_parameter_order=True), rows
    )
    return [pid for (pid,) in result]


def _sqlite_values(row: dict[str, Any], columns: tuple[str, ...]) -> tuple:
    """A row's values as SQLAlchemy would bind them on SQLite (JSON as the
    engine's text, times as SQLite's DateTime text)."""
    values = []
    for c in columns:
        v = row[c]
        if isinstance(v, datetime):
            v = sqlite_time(v)
        elif isinstance(v, dict):
            v = _json_text(v)
        values.append(v)
    return tuple(values)


def _json_text(value: dict[str, Any]) -> str:
    # What the engine's json_serializer writes (core.db), so both read back alike.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _insert_profiles_sqlite(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    # The first insert takes the write lock, which this transaction keeps
    # until it ends, and SQLite gives a new row the largest id plus one: the
    # ids after the first are free, so the rest go in with their ids given.
    cur = conn.connection.driver_connection.cursor()
    try:
        cols = ", ".join(PROFILE_COLUMNS)
        marks = ", ".join("?" * len(PROFILE_COLUMNS))
        cur.execute(
            f"INSERT INTO profiles ({cols}) VALUES ({marks}) RETURNING id",
            _sqlite_values(rows[0], PROFILE_COLUMNS),
        )
        first = cur.fetchone()[0]
        ids = list(range(first, first + len(rows)))
        if len(rows) > 1:
            cur.executemany(
                f"INSERT INTO profiles (id, {cols}) VALUES (?, {marks})",
                [
                    (pid, *_sqlite_values(row, PROFILE_COLUMNS))
                    for pid, row in zip(ids[1:], rows[1:], strict=True)
                ],
            )
    finally:
        cur.close()
    return ids


def _insert_profiles_postgres(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    # Ids drawn from the table's sequence first, then one COPY with them given.
    with conn.connection.driver_connection.cursor() as cur:
        cur.execute(
            "SELECT nextval(pg_get_serial_sequence('profiles', 'id')) FROM generate_series(1, %s)",
            (len(rows),),
        )
        ids = [pid for (pid,) in cur.fetchall()]
        with cur.copy(f"COPY profiles (id, {', '.join(PROFILE_COLUMNS)}) FROM STDIN") as copy:
            for pid, row in zip(ids, rows, strict=True):
                copy.write_row(
                    (
                        pid,
                        row["user_id"],
                        row["email"],
                        _json_text(row["attributes"]),
                        row["created_at"],
                        row["updated_at"],
                    )
                )
    return ids


def insert_identities(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert identity rows (IDENTITY_COLUMNS but ``sealed``, which is made
    here for emails), through the driver where it can."""
    if not rows:
        return
    ring = crypto.keyring()
    rows = [_stored_identity(row, ring) for row in rows]
    if conn.dialect.name == "sqlite":
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.executemany(
                f"INSERT INTO identities ({', '.join(IDENTITY_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                [_sqlite_values(row, IDENTITY_COLUMNS) for row in rows],
            )
        finally:
            cur.close()
    elif conn.dialect.name == "postgresql":
        with (
            conn.connection.driver_connection.cursor() as cur,
            cur.copy(f"COPY identities ({', '.join(IDENTITY_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(tuple(row[c] for c in IDENTITY_COLUMNS))
    else:
        conn.execute(IDENTITIES.insert(), rows)


def move_events(conn: Connection, source: int, into: int) -> None:
    conn.execute(EVENTS.update().where(EVENTS.c.profile_id == source).values(profile_id=into))


def merge_profiles(
    conn: Connection, source: int, into: int, now: datetime | None = None, move: bool = True
) -> None:
    """Move everything of profile ``source`` to ``into`` and leave a tombstone.

    ``move=False`` leaves the events for the caller to move (see move_events).
    """
    now = now or utcnow()
    src = conn.execute(
        sa.select(PROFILES.c.attributes, PROFILES.c.email).where(PROFILES.c.id == source)
    ).one()
    dst = conn.execute(
        sa.select(PROFILES.c.attributes, PROFILES.c.email).where(PROFILES.c.id == into)
    ).one()
    # The identified profile's attributes win; the anonymous one only fills gaps.
    attributes = {**(src.attributes or {}), **(dst.attributes or {})}
    if move:
        move_events(conn, source, into)
    conn.execute(
        IDENTITIES.update().where(IDENTITIES.c.profile_id == source).values(profile_id=into)
    )
    conn.execute(PROFILES.update().where(PROFILES.c.merged_into == source).values(merged_into=into))
    conn.execute(
        PROFILES.update()
        .where(PROFILES.c.id == into)
        .values(attributes=attributes, email=dst.email or src.email, updated_at=now)
    )
    conn.execute(
        PROFILES.update()
        .where(PROFILES.c.id == source)
        .values(merged_into=into, attributes={}, email=None, updated_at=now)
    )
    conn.execute(
        AUDIT.insert().values(
            at=now,
            actor="identity",
            action="profile.merge",
            target=str(into),
            details={"from": source, "into": into},
        )
    )
