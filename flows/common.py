"""What the flows share: the retry rule, engines per task, the example folders.

Tasks take the database URL, not an engine: a task may run in another process
than its flow. Flows take it as ``DatabaseUrl`` and hand it to their subflows
as a ``SecretStr``: Prefect records every flow run's parameters, and records a
SecretStr as asterisks, so a PostgreSQL password never reaches its database
or UI. (A task's arguments are not recorded, only where they came from.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from core.config import ConfigError, Settings, load_settings
from core.db import make_engine, open_db
from core.types import UsageError
from flows.config import EXAMPLE_SCORES, EXAMPLE_SEGMENTS, EXAMPLE_WORKFLOWS

__all__ = ["EXAMPLE_SCORES", "EXAMPLE_SEGMENTS", "EXAMPLE_WORKFLOWS"]

# Wrong input (bad definitions, settings, arguments): a retry fails the same way.
# Definition errors of segments, scores and workflows are ValueErrors.
NOT_RETRIED: tuple[type[BaseException], ...] = (ValueError, UsageError, ConfigError)


def retry_unless(*errors: type[BaseException]) -> Callable[[Any, TaskRun, State], bool]:
    """A ``retry_condition_fn`` retrying every failure but ``errors``."""

    def should_retry(_task: Any, _task_run: TaskRun, state: State) -> bool:
        try:
            state.result()
        except errors:
            return False
        except Exception:  # noqa: BLE001 - anything else may be transient
            return True
        return True

    return should_retry


retry_transient = retry_unless(*NOT_RETRIED)

# The options of a task that writes to segflow's database: retried twice on a
# transient failure (not on wrong input), never skipped for a cached result
# (its writes are the point), nothing persisted by Prefect.
DB_TASK: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


# A flow's database URL parameter: None (segflow.toml, SEGFLOW_DATABASE_URL),
# a URL, or a URL as a SecretStr (what a flow gives its subflows).
DatabaseUrl = SecretStr | str | None


def plain_url(url: DatabaseUrl) -> str | None:
    """The URL a ``DatabaseUrl`` holds, or None."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def hidden(url: str) -> SecretStr:
    """``url`` as a subflow's parameter: recorded by Prefect as asterisks."""
    return SecretStr(url)


def flow_settings(database_url: DatabaseUrl) -> Settings:
    """The settings a flow runs with: segflow.toml and the environment, as for
    any command, with ``database_url`` (when given) as ``--db``; the schema
    is brought up to date once, before the tasks write."""
    settings = load_settings(plain_url(database_url))
    open_db(settings.database_url, auto_upgrade=settings.auto_upgrade).dispose()
    return settings


@contextlib.contextmanager
def database(url: str) -> Iterator[Engine]:
    """An engine for one task, its connections closed when the task ends."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def as_of_or_now(as_of: datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(UTC)
    if as_of.tzinfo is None:
        raise UsageError(f"as_of {as_of.isoformat()}: give a UTC offset")
    return as_of.astimezone(UTC)


def folder(path: str | Path | None, what: str) -> Path | None:
    """A definitions folder given as a parameter; UsageError when it is missing."""
    if path is None:
        return None
    found = Path(path)
    if not found.is_dir():
        raise UsageError(f"{what} folder {found}: no such directory")
    return found
