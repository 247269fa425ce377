"""segflow core. Plugins import only what is exported here."""

from core.hookspecs import hookimpl
from core.types import (
    Change,
    ConditionKind,
    EventSource,
    RawRecord,
    ReadOptions,
    ScoreError,
    ScoreValue,
    ScoringModel,
    SqlContext,
    StoredEvent,
)

__all__ = [
    "Change",
    "ConditionKind",
    "EventSource",
    "RawRecord",
    "ReadOptions",
    "ScoreError",
    "ScoreValue",
    "ScoringModel",
    "SqlContext",
    "StoredEvent",
    "hookimpl",
]
