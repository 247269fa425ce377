"""segflow core. Plugins import only what is exported here."""

from core.hookspecs import hookimpl
from core.scoring import ScoreError, ScoreValue, ScoringModel
from core.segments.conditions import ConditionKind, SqlContext
from core.sources import EventSource, RawRecord, ReadOptions

__all__ = [
    "ConditionKind",
    "EventSource",
    "RawRecord",
    "ReadOptions",
    "ScoreError",
    "ScoreValue",
    "ScoringModel",
    "SqlContext",
    "hookimpl",
]
