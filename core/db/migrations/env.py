"""Alembic environment: runs against the engine segflow hands over."""

from alembic import context
from sqlmodel import SQLModel

import core.db.models  # noqa: F401  (registers the tables on the metadata)

config = context.config
engine = config.attributes["engine"]
sqlite = engine.dialect.name == "sqlite"


def _foreign_keys(connection, on: bool) -> None:
    # SQLite ignores this pragma inside a transaction: set it between them.
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    connection.commit()


with engine.connect() as connection:
    if sqlite:
        # Batch mode rebuilds a table by copy, drop and rename; with foreign
        # keys on, dropping a table other rows refer to fails (an upgrade of
        # a store with people in it). The references are checked afterwards.
        _foreign_keys(connection, on=False)
    try:
        with connection.begin():
            context.configure(
                connection=connection,
                target_metadata=SQLModel.metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
                render_as_batch=sqlite,
            )
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"a migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            _foreign_keys(connection, on=True)
