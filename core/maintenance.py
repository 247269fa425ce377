"""Housekeeping on the stored data."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel


def delete_all_data(engine: Engine) -> None:
    """Empty every table, children first; the schema and its version stay."""
    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name == "profiles":
                conn.execute(table.update().values(merged_into=None))
            conn.execute(table.delete())
