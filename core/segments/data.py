"""Reading what the evaluators need from the database."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.db.tables import CONSENTS, EVENTS, PROFILES
from core.segments.evaluate import EventRow, ProfileData


def load_profile_data(conn: Connection, profile_id: int, as_of: datetime) -> ProfileData:
    """One profile's events (up to as_of), attributes, consents and scores."""
    rows = conn.execute(
        sa.select(
            EVENTS.c.type,
            EVENTS.c.ts,
            EVENTS.c.session_id,
            EVENTS.c.product_id,
            EVENTS.c.value,
            EVENTS.c.currency,
            EVENTS.c.url,
            EVENTS.c.campaign,
            EVENTS.c.source,
            EVENTS.c.properties,
            EVENTS.c.message_id,
        )
        .where(EVENTS.c.profile_id == profile_id, EVENTS.c.ts <= as_of)
        .order_by(EVENTS.c.ts, EVENTS.c.id)
    )
    events = [
        EventRow(*r[:9], properties=r.properties or {}, message_id=r.message_id) for r in rows
    ]
    attributes = (
        conn.execute(
            sa.select(PROFILES.c.attributes).where(PROFILES.c.id == profile_id)
        ).scalar_one_or_none()
        or {}
    )
    consents = set(
        conn.execute(
            sa.select(CONSENTS.c.purpose).where(
                CONSENTS.c.profile_id == profile_id, CONSENTS.c.granted.is_(True)
            )
        ).scalars()
    )
    from core.scoring import scores_as_of

    scores = scores_as_of(conn, profile_id, as_of)
    return ProfileData(events=events, attributes=attributes, consents=consents, scores=scores)
