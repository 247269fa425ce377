"""Housekeeping on the stored data."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from core.db import DatabaseError
from core.db.tables import EVENTS

DEMO_SOURCE = "demo"


def delete_all_data(engine: Engine) -> None:
    """Empty every table, children first; the schema and its version stay."""
    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name == "profiles":
                conn.execute(table.update().values(merged_into=None))
            conn.execute(table.delete())


def reset_demo(engine: Engine) -> None:
    """Delete a previous demo run; refuse when the database holds anything else."""
    with engine.connect() as conn:
        other = conn.execute(
            sa.select(sa.func.count()).where(EVENTS.c.source != DEMO_SOURCE)
        ).scalar_one()
    if other:
        raise DatabaseError(
            f"refusing to reset: the database holds {other:,} events that are not demo "
            "data; run the demo on another database (--db sqlite:///demo.db)"
        )
    delete_all_data(engine)
