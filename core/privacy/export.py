"""Access and portability: everything held about a person, as one JSON document.

    {"subject": {"user_id", "profile_ids"}, "exported_at",
     "segments": {segment id: name},   # of the memberships and their history
     "tables": {table: [row, ...]}}    # every person table, empty ones included

Rows are the tables' columns as stored (datetimes in ISO 8601, UTC), so the
document is what the database holds, not a summary of it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import audit
from core.db.tables import SEGMENTS
from core.privacy.erase import need_key, subject_of
from core.privacy.person import Person, find_person, person_tables


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def rows_of(conn: sa.Connection, person: Person) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, selector in person_tables():
        key = [c for c in table.primary_key.columns] or list(table.c)
        rows = conn.execute(sa.select(table).where(selector(person)).order_by(*key)).mappings()
        tables[table.name] = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return tables


def export_person(
    engine: Engine, key: str, *, secret_key: str | None = None, actor: str | None = None
) -> dict[str, Any]:
    """Everything held about the person ``key`` names (user id, anonymous id or
    email); ProfileNotFound when no one is known by it.

    With ``secret_key`` (the CLI and the API always pass it) the export is
    audited: a ``privacy.export`` record by ``actor`` naming the person by the
    keyed hash an erasure would, written in the transaction that read them."""
    with engine.begin() as conn:
        person = find_person(conn, key)
        tables = rows_of(conn, person)
        ids = {r["segment_id"] for name in ("memberships", "membership_changes")
               for r in tables.get(name, [])}  # fmt: skip
        query = sa.select(SEGMENTS.c.id, SEGMENTS.c.name).where(SEGMENTS.c.id.in_(ids))
        names = {sid: name for sid, name in conn.execute(query)}
        if secret_key is not None:
            counts = {name: len(rows) for name, rows in tables.items() if rows}
            subject = subject_of(secret_key, key, person)
            audit.record(conn, actor, "privacy.export", subject, {"rows": counts})
    return {
        "subject": {"user_id": person.user_id, "profile_ids": list(person.profile_ids)},
        "exported_at": datetime.now(UTC).isoformat(),
        # What the segment ids of memberships and their history stand for.
        "segments": {str(sid): names[sid] for sid in sorted(names)},
        "tables": tables,
    }


def export_audited(
    engine: Engine, settings: Any, key: str, *, actor: str | None = None
) -> dict[str, Any]:
    """``export_person``, audited, keyed by the settings' secret key (the CLI's
    and the API's export): no secret key, no export."""
    secret = need_key(settings.secret_key, "an export", "the audit record naming the person")
    return export_person(engine, key, secret_key=secret, actor=actor)
