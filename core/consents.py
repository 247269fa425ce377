"""Consent per purpose (email, tracking, ...): the current state per profile."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.models import utcnow
from core.db.tables import AUDIT, CONSENTS
from core.profiles import find_profile_id


def set_consent(engine: Engine, who: str, purpose: str, granted: bool, source: str) -> int:
    """Grant or withdraw a purpose for the person known by ``who``; returns the profile id."""
    now = utcnow()
    with engine.begin() as conn:
        pid = find_profile_id(conn, who)
        updated = conn.execute(
            CONSENTS.update()
            .where(CONSENTS.c.profile_id == pid, CONSENTS.c.purpose == purpose)
            .values(granted=granted, source=source, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(
                CONSENTS.insert().values(
                    profile_id=pid, purpose=purpose, granted=granted, source=source, updated_at=now
                )
            )
        conn.execute(
            AUDIT.insert().values(
                at=now,
                actor=source,
                action="consent.grant" if granted else "consent.withdraw",
                target=str(pid),
                details={"purpose": purpose},
            )
        )
    return pid


def granted(engine: Engine, profile_id: int, purpose: str) -> bool | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(CONSENTS.c.granted).where(
                CONSENTS.c.profile_id == profile_id, CONSENTS.c.purpose == purpose
            )
        ).scalar()
