"""Summary figures about what is stored, for the CLI and the notebooks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import EVENTS, IDENTITIES, PROFILES


def database_summary(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        live = PROFILES.c.merged_into.is_(None)
        profiles = conn.execute(sa.select(sa.func.count()).where(live)).scalar_one()
        identified = conn.execute(
            sa.select(sa.func.count()).where(live, PROFILES.c.user_id.is_not(None))
        ).scalar_one()
        merged = conn.execute(
            sa.select(sa.func.count()).where(PROFILES.c.merged_into.is_not(None))
        ).scalar_one()
        # People first seen anonymously who later identified (merged or linked).
        linked = conn.execute(
            sa.select(sa.func.count(sa.distinct(IDENTITIES.c.profile_id)))
            .join(PROFILES, PROFILES.c.id == IDENTITIES.c.profile_id)
            .where(IDENTITIES.c.kind == "anonymous_id", PROFILES.c.user_id.is_not(None))
        ).scalar_one()
        by_type = dict(
            conn.execute(
                sa.select(EVENTS.c.type, sa.func.count())
                .group_by(EVENTS.c.type)
                .order_by(sa.func.count().desc(), EVENTS.c.type)
            ).all()
        )
        first, last = conn.execute(
            sa.select(sa.func.min(EVENTS.c.ts), sa.func.max(EVENTS.c.ts))
        ).one()
        revenue = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(EVENTS.c.value), 0.0)).where(
                EVENTS.c.type == "purchase"
            )
        ).scalar_one()
    return {
        "profiles": profiles,
        "identified": identified,
        "anonymous": profiles - identified,
        "merged": merged,
        "identified_after_anonymous": linked,
        "events": sum(by_type.values()),
        "by_type": by_type,
        "first_event": first.isoformat() if first else None,
        "last_event": last.isoformat() if last else None,
        "revenue": round(float(revenue), 2),
    }


def count_events(engine: Engine, *, exclude_source: str | None = None) -> int:
    """How many events are stored (leaving out those of ``exclude_source``)."""
    query = sa.select(sa.func.count()).select_from(EVENTS)
    if exclude_source is not None:
        query = query.where(EVENTS.c.source != exclude_source)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()
