"""segflow core. Plugins import only what is exported here."""

from core.errors import describe_validation_error, validation_reason
from core.hookspecs import hookimpl
from core.scoring import latest_score_sql
from core.segments.evaluate import EventRow, ProfileData
from core.segments.language import (
    Compare,
    Comparison,
    Duration,
    EventTypes,
    check_event_types,
    parse_duration,
)
from core.segments.sqlfuncs import epoch_seconds, json_key
from core.segments.values import matches
from core.segments.where import Filter, Where, where_matches, where_sql
from core.types import (
    EVENT_TYPE_MAX_LENGTH,
    SNAKE_NAME,
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
    is_snake_name,
)

__all__ = [
    "EVENT_TYPE_MAX_LENGTH",
    "SNAKE_NAME",
    "Change",
    "Compare",
    "Comparison",
    "ConditionKind",
    "Duration",
    "EventRow",
    "EventSource",
    "EventTypes",
    "Filter",
    "ProfileData",
    "RawRecord",
    "ReadOptions",
    "ScoreError",
    "ScoreValue",
    "ScoringModel",
    "SqlContext",
    "StoredEvent",
    "Where",
    "check_event_types",
    "describe_validation_error",
    "epoch_seconds",
    "hookimpl",
    "is_snake_name",
    "json_key",
    "latest_score_sql",
    "matches",
    "parse_duration",
    "validation_reason",
    "where_matches",
    "where_sql",
]
