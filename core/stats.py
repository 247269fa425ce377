"""Summary figures about what is stored, for the CLI and the notebooks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import EVENT_COUNTS, EVENTS, IDENTITIES, PROFILES


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
        # Counts and revenue from what ingestion keeps per day and type; the
        # first and last times from one index seek per type.
        c = EVENT_COUNTS.c
        total = sa.func.sum(c.events)
        by_type = dict(
            conn.execute(
                sa.select(c.type, total)
                .group_by(c.type)
                .having(total > 0)
                .order_by(total.desc(), c.type)
            ).all()
        )
        by_type = {t: int(n) for t, n in by_type.items()}
        first = last = None
        for type_ in by_type:
            of_type = sa.select(EVENTS.c.ts).where(EVENTS.c.type == type_).limit(1)
            early = conn.execute(of_type.order_by(EVENTS.c.ts)).scalar()
            late = conn.execute(of_type.order_by(EVENTS.c.ts.desc())).scalar()
            first = early if first is None or (early and early < first) else first
            last = late if last is None or (late and late > last) else last
        revenue = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(c.value), 0.0)).where(c.type == "purchase")
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
