"""``segflow privacy rotate-key``: every sealed value and blind index under the
current key (core/privacy/crypto.py).

Run with the new key as ``SEGFLOW_ENCRYPTION_KEY`` and the old one(s) in
``SEGFLOW_ENCRYPTION_OLD_KEYS``; run on a store written without a key, it is
the first encryption (plaintext values are sealed, email identities become
blind indexes). Each table is read in primary-key order, a chunk at a time,
and each chunk is rewritten in its own transaction. A value names the key
that sealed it, so a rotation killed at any point leaves values under old and
new keys that both open, and running it again rewrites only what is not under
the current key yet: it ends as an uninterrupted run would. Once it reports
nothing left, the old keys are no longer needed.

While it runs, ingestion keeps working: lookups try every key of the ring, and
new values are sealed under the current key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core.db.models import JSONType, OpenedJSON, SealedTraits
from core.db.tables import (
    EVENTS,
    IDENTITIES,
    MESSAGES,
    PRIVACY_DELETIONS,
    PROFILES,
    SYNC_STATES,
)
from core.ingestion.crashpoints import crash_point
from core.privacy import crypto
from core.privacy.crypto import EncryptionKeyError, Keyring
from core.privacy.erase import reclaim

CHUNK = 500
_JSON_TYPES = (SealedTraits, OpenedJSON)

# How a column's new value is written past its column type.
_RAW = {"text": sa.Text(), "traits": JSONType, "index": sa.Text()}


@dataclass(frozen=True)
class _Spec:
    table: sa.Table
    columns: dict[str, str]  # column -> text | traits | index
    where: Any = None
    key: tuple[str, ...] = ("id",)


SPECS = (
    _Spec(PROFILES, {"email": "text", "attributes": "traits"}),
    _Spec(IDENTITIES, {"value": "index", "sealed": "text"}, IDENTITIES.c.kind == "email"),
    _Spec(EVENTS, {"properties": "traits"}, EVENTS.c.type == "identify"),
    _Spec(SYNC_STATES, {"email": "text"}, key=("connector", "profile_id")),
    _Spec(MESSAGES, {"subject": "text"}),
    _Spec(PRIVACY_DELETIONS, {"email": "text"}),
)


class RotateReport(BaseModel):
    key_id: str
    # Rows rewritten per table (values under an old key, or not sealed yet).
    rewritten: dict[str, int] = {}
    # Email identities dropped because another row already holds the same
    # address under the current key.
    duplicates: int = 0
    # Email identities whose address cannot be recovered (a blind index under
    # an old key with no sealed address beside it): left as they are.
    unrecoverable: int = 0
    # Rows another writer changed between this run's read and its write: not
    # rewritten here (a writer seals under the current key; run again to be sure).
    changed_meanwhile: int = 0


@dataclass
class _Chunk:
    updates: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[Any] = field(default_factory=list)


def rotate_keys(
    engine: Engine,
    *,
    chunk: int = CHUNK,
    ring: Keyring | None = None,
    progress: Callable[[str, int], None] | None = None,
    vacuum: bool = True,
) -> RotateReport:
    """Rewrite every sealed value and email blind index under the ring's
    current key (the environment's when ``ring`` is None). With ``vacuum``
    the files are rebuilt after, so no copy of a value under the old key (or
    of plaintext, on a first encryption) is left in their free space."""
    ring = ring or crypto.keyring()
    if ring is None:
        raise EncryptionKeyError(
            f"rotate-key needs the new key in {crypto.KEY_ENV} (and the old ones in "
            f"{crypto.OLD_KEYS_ENV})"
        )
    report = RotateReport(key_id=ring.kid)
    for spec in SPECS:
        report.rewritten[spec.table.name] = _rotate_table(engine, spec, ring, chunk, report)
        if progress is not None:
            progress(spec.table.name, report.rewritten[spec.table.name])
    reclaim(engine, vacuum=vacuum)
    return report


def _rotate_table(
    engine: Engine, spec: _Spec, ring: Keyring, chunk: int, report: RotateReport
) -> int:
    key_cols = [spec.table.c[k] for k in spec.key]
    # Read as stored, as text (JSON too), past the column types that open values.
    raw = [_as_text(spec.table.c[c]).label(c) for c in spec.columns]
    query = sa.select(*key_cols, *raw).order_by(*key_cols).limit(chunk)
    if spec.where is not None:
        query = query.where(spec.where)
    # Compare and set: a row is rewritten only if it still holds what was
    # read, so a value a writer changed meanwhile is never put back.
    update = (
        spec.table.update()
        .where(*(spec.table.c[k] == sa.bindparam(f"k_{k}") for k in spec.key))
        .where(
            *(
                sa.or_(
                    _as_text(spec.table.c[c]) == sa.bindparam(f"o_{c}", type_=sa.Text()),
                    sa.and_(spec.table.c[c].is_(None), sa.bindparam(f"n_{c}", type_=sa.Boolean())),
                )
                for c in spec.columns
            )
        )
        .values({c: sa.bindparam(f"v_{c}", type_=_RAW[kind]) for c, kind in spec.columns.items()})
    )
    last: tuple | None = None
    rewritten = 0
    while True:
        with engine.begin() as conn:
            page = query if last is None else query.where(sa.tuple_(*key_cols) > sa.tuple_(*last))
            rows = conn.execute(page).mappings().all()
            if not rows:
                return rewritten
            last = tuple(rows[-1][k] for k in spec.key)
            work = _plan(conn, spec, rows, ring, report)
            done = conn.execute(update, work.updates).rowcount if work.updates else 0
            report.changed_meanwhile += len(work.updates) - done
            for row_id in work.deletes:
                conn.execute(IDENTITIES.delete().where(IDENTITIES.c.id == row_id))
            rewritten += done + len(work.deletes)
        crash_point("privacy.rotated")


def _as_text(column: sa.Column) -> Any:
    if isinstance(column.type, _JSON_TYPES):
        return sa.cast(column, sa.Text())
    return sa.type_coerce(column, sa.Text())


def _decoded(value: Any, kind: str) -> Any:
    return orjson.loads(value) if kind == "traits" and isinstance(value, str) else value


def _guard(spec: _Spec, row: Any) -> dict[str, Any]:
    """The bound values of the update's key and compare-and-set conditions."""
    out = {f"k_{k}": row[k] for k in spec.key}
    for c in spec.columns:
        out[f"o_{c}"] = row[c]
        out[f"n_{c}"] = row[c] is None
    return out


def _plan(conn: Connection, spec: _Spec, rows: list, ring: Keyring, report: RotateReport) -> _Chunk:
    work = _Chunk()
    if spec.table is IDENTITIES:
        return _plan_identities(conn, spec, rows, ring, report)
    for row in rows:
        old = {c: _decoded(row[c], kind) for c, kind in spec.columns.items()}
        new = {c: _fresh(old[c], kind, ring) for c, kind in spec.columns.items()}
        if any(new[c] is not old[c] for c in spec.columns):
            work.updates.append({**_guard(spec, row), **{f"v_{c}": v for c, v in new.items()}})
    return work


def _current(value: Any, ring: Keyring) -> bool:
    return isinstance(value, str) and value.startswith(f"{crypto.SEALED}{ring.kid}:")


def _fresh(value: Any, kind: str, ring: Keyring) -> Any:
    """The value under the current key; the very same object when it already is."""
    if value is None:
        return value
    if kind == "text":
        return value if _current(value, ring) else ring.seal(crypto.unseal(value, ring))
    if not isinstance(value, dict):
        return value
    stale = [
        k
        for k, v in value.items()
        if isinstance(v, str)
        and not _current(v, ring)
        and (k in crypto.PII_TRAITS or crypto.is_sealed(v))
    ]
    if not stale:
        return value
    return {k: ring.seal(crypto.unseal(v, ring)) if k in stale else v for k, v in value.items()}


def _plan_identities(
    conn: Connection, spec: _Spec, rows: list, ring: Keyring, report: RotateReport
) -> _Chunk:
    work = _Chunk()
    prefix = f"{crypto.INDEX}{ring.kid}:"
    wanted: dict[int, tuple[str, str]] = {}
    by_id = {row["id"]: row for row in rows}
    for row in rows:
        value, sealed = row["value"], row["sealed"]
        if value.startswith(prefix) and _current(sealed, ring):
            continue
        if sealed:
            address = crypto.unseal(sealed, ring)
        elif not value.startswith(crypto.INDEX):
            address = value
        else:
            report.unrecoverable += 1
            continue
        wanted[row["id"]] = (ring.index(address), ring.seal(address))
    if not wanted:
        return work
    taken = dict(
        conn.execute(
            sa.select(IDENTITIES.c.value, IDENTITIES.c.id).where(
                IDENTITIES.c.kind == "email",
                IDENTITIES.c.value.in_({index for index, _ in wanted.values()}),
            )
        ).all()
    )
    for row_id, (index, sealed) in wanted.items():
        holder = taken.get(index)
        if holder is not None and holder != row_id:
            # The address is already there under the current key (a second
            # spelling of it, indexed alike): one identity is enough.
            work.deletes.append(row_id)
            report.duplicates += 1
            continue
        taken[index] = row_id
        work.updates.append({**_guard(spec, by_id[row_id]), "v_value": index, "v_sealed": sealed})
    return work
