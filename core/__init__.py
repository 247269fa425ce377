"""segflow core. Plugins import only what is exported here."""

from core.hookspecs import hookimpl
from core.scoring import ScoreValue, ScoringModel
from core.segments.conditions import ConditionKind, SqlContext
from core.sources import EventSource, RawRecord, ReadOptions

__all__ = [
    "ConditionKind",
    "EventSource",
    "RawRecord",
    "ReadOptions",
    "ScoreValue",
    "ScoringModel",
    "SqlContext",
    "hookimpl",
]
