"""Reading profiles: find one by any of its ids and summarise it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.tables import EVENTS, IDENTITIES, PROFILES
from core.privacy import crypto

RECENT_EVENTS = 20


class ProfileNotFound(LookupError):
    pass


def find_profile_id(conn: Connection, key: str) -> int:
    """Profile id for a user id, an anonymous id or an email, following merges."""
    pid = conn.execute(sa.select(PROFILES.c.id).where(PROFILES.c.user_id == key)).scalar()
    if pid is None:
        pid = conn.execute(
            sa.select(IDENTITIES.c.profile_id)
            .where(IDENTITIES.c.value.in_([key, *crypto.email_lookups(key)]))
            .order_by(IDENTITIES.c.kind.desc())
            .limit(1)
        ).scalar()
    if pid is None:
        raise ProfileNotFound(f"no profile with user id, anonymous id or email {key!r}")
    for _ in range(100):  # merged_into chains are compressed on merge; this is a guard
        nxt = conn.execute(sa.select(PROFILES.c.merged_into).where(PROFILES.c.id == pid)).scalar()
        if nxt is None:
            return pid
        pid = nxt
    raise ProfileNotFound(f"profile merge chain for {key!r} does not end")


def profile_labels(conn: Connection, ids: list[int] | None = None) -> dict[int, str]:
    """How people are named to users: user id, else their first anonymous id."""
    anon = (
        sa.select(sa.func.min(IDENTITIES.c.value))
        .where(IDENTITIES.c.profile_id == PROFILES.c.id, IDENTITIES.c.kind == "anonymous_id")
        .scalar_subquery()
    )
    query = sa.select(PROFILES.c.id, sa.func.coalesce(PROFILES.c.user_id, anon))
    query = query.where(PROFILES.c.merged_into.is_(None)).order_by(PROFILES.c.id)
    if ids is not None:
        query = query.where(PROFILES.c.id.in_(ids))
    # Profiles known only by email get their number.
    return {pid: label or f"#{pid}" for pid, label in conn.execute(query)}


def _event_json(row: Any) -> dict[str, Any]:
    out = {
        "type": row.type,
        "ts": row.ts.isoformat(),
        "session_id": row.session_id,
        "product_id": row.product_id,
        "value": row.value,
        "currency": row.currency,
        "url": row.url,
        "campaign": row.campaign,
        "properties": row.properties or {},
        "source": row.source,
        "message_id": row.message_id,
    }
    return {k: v for k, v in out.items() if v is not None}


def profile_summary(engine: Engine, key: str, recent: int = RECENT_EVENTS) -> dict[str, Any]:
    """The stable JSON shape of ``segflow profile show --json``."""
    with engine.connect() as conn:
        pid = find_profile_id(conn, key)
        prof = conn.execute(sa.select(PROFILES).where(PROFILES.c.id == pid)).one()
        # An email identity shows its address, not the blind index it is found by.
        identities = [
            {"kind": k, "value": v}
            for k, v in sorted(
                (k, sealed or v)
                for k, v, sealed in conn.execute(
                    sa.select(IDENTITIES.c.kind, IDENTITIES.c.value, IDENTITIES.c.sealed).where(
                        IDENTITIES.c.profile_id == pid
                    )
                )
            )
        ]
        counts = dict(
            conn.execute(
                sa.select(EVENTS.c.type, sa.func.count())
                .where(EVENTS.c.profile_id == pid)
                .group_by(EVENTS.c.type)
                .order_by(EVENTS.c.type)
            ).all()
        )
        first_seen, last_seen = conn.execute(
            sa.select(sa.func.min(EVENTS.c.ts), sa.func.max(EVENTS.c.ts)).where(
                EVENTS.c.profile_id == pid
            )
        ).one()
        rows = conn.execute(
            sa.select(EVENTS)
            .where(EVENTS.c.profile_id == pid)
            .order_by(EVENTS.c.ts.desc(), EVENTS.c.id.desc())
            .limit(recent)
        ).all()
        merged_from = (
            conn.execute(
                sa.select(PROFILES.c.id)
                .where(PROFILES.c.merged_into == pid)
                .order_by(PROFILES.c.id)
            )
            .scalars()
            .all()
        )
    return {
        "profile_id": pid,
        "user_id": prof.user_id,
        "anonymous": prof.user_id is None,
        "email": prof.email,
        "attributes": prof.attributes or {},
        "identities": identities,
        "event_counts": counts,
        "total_events": sum(counts.values()),
        "first_seen": first_seen.isoformat() if first_seen else None,
        "last_seen": last_seen.isoformat() if last_seen else None,
        "merged_from": list(merged_from),
        "created_at": prof.created_at.isoformat(),
        "recent_events": [_event_json(r) for r in rows],
    }


def profile_scores(engine: Engine, key: str) -> list[dict[str, Any]]:
    """A person's latest scores (by user id, anonymous id or email), with components."""
    from core.scoring import latest_scores

    with engine.connect() as conn:
        return latest_scores(conn, find_profile_id(conn, key))


def update_attributes(
    conn: Connection,
    profile_id: int,
    set_: dict[str, Any] | None = None,
    unset: list[str] | tuple[str, ...] = (),
    change: Any = None,
) -> dict[str, Any]:
    """Set and remove attributes of one profile in ``conn``'s transaction; the
    profile counts as changed for the next incremental segment run. ``change``
    (attributes -> attributes), optional, edits them further (a tag list).
    Returns the new attributes."""
    from datetime import UTC, datetime

    import orjson

    row = conn.execute(sa.select(PROFILES.c.attributes).where(PROFILES.c.id == profile_id)).first()
    if row is None:
        raise ProfileNotFound(f"no profile with id {profile_id}")
    attrs = row[0]
    if isinstance(attrs, str | bytes):
        attrs = orjson.loads(attrs)
    attrs = {**(attrs or {}), **(set_ or {})}
    for key in unset:
        attrs.pop(key, None)
    if change is not None:
        attrs = change(attrs)
    conn.execute(
        PROFILES.update()
        .where(PROFILES.c.id == profile_id)
        .values(attributes=attrs, updated_at=datetime.now(UTC))
    )
    return attrs
