"""Where a source left off (a poll's cursor, ...), kept in the source_states table.

A source saves its cursor only after the events it read up to there are
committed, so a restart resumes at the first thing not yet stored.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.models import utcnow
from core.db.tables import SOURCE_STATES


def load_cursor(engine: Engine, name: str) -> Any:
    """The cursor source ``name`` saved last, or None."""
    with engine.connect() as conn:
        state = conn.execute(
            sa.select(SOURCE_STATES.c.cursor).where(SOURCE_STATES.c.name == name)
        ).scalar()
    return (state or {}).get("cursor")


def save_cursor(engine: Engine, name: str, cursor: Any) -> None:
    """Store source ``name``'s cursor (any JSON value)."""
    with engine.begin() as conn:
        updated = conn.execute(
            SOURCE_STATES.update()
            .where(SOURCE_STATES.c.name == name)
            .values(cursor={"cursor": cursor}, updated_at=utcnow())
        ).rowcount
        if not updated:
            conn.execute(
                SOURCE_STATES.insert().values(
                    name=name, cursor={"cursor": cursor}, updated_at=utcnow()
                )
            )
