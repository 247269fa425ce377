"""segflow core. Plugins import only what is exported here.

The plugin contract's types and ``hookimpl`` load at once; the engine's
functions (``ingest``, ``run_segments``, ...) load on first use, so a plugin
module, ``core.types`` or ``core.hookspecs`` can be imported without pulling in
the whole engine, and ``import core`` loads no Prefect, marimo or FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.hookspecs import hookimpl
from core.types import (
    Change,
    CommandError,
    ConditionKind,
    EventSource,
    RawRecord,
    ReadOptions,
    ScoreError,
    ScoreValue,
    ScoringModel,
    SqlContext,
    StoredEvent,
    UsageError,
)

# Exported name -> "module" or "module:attribute" (imported on first access).
_LAZY = {
    # settings
    "ConfigError": "core.config",
    "Settings": "core.config",
    # storage
    "EVENTS": "core.db.tables",
    "PROFILES": "core.db.tables",
    "delete_all_data": "core.maintenance",
    "count_events": "core.stats",
    "database_summary": "core.stats",
    "load_cursor": "core.source_state",
    "save_cursor": "core.source_state",
    # ingestion
    "Event": "core.events",
    "IngestReport": "core.events",
    "Rejection": "core.events",
    "RowMapper": "core.mapping",
    "ingest": "core.events",
    "validate_event": "core.events:validate",
    # segments and scores: the language's building blocks for plugins' own definitions
    "Duration": "core.segments.language",
    "EventTypes": "core.segments.language",
    "Where": "core.segments.language",
    "check_event_types": "core.segments.language:_check_types",
    "parse_duration": "core.segments.language",
    "where_sql": "core.segments.sql",
    "epoch_seconds": "core.segments.sqlfuncs",
    "json_key": "core.segments.sqlfuncs",
    "matches": "core.segments.values",
    "evaluate_profiles": "core.segments.realtime",
    "latest_score_sql": "core.scoring",
    "load_segment_files": "core.segments.store",
    "run_segments": "core.segments.store",
    "load_score_files": "core.scoring",
    "run_scores": "core.scoring",
    "store_scores": "core.scoring",
    # email tracking (the tracking source plugin serves these tokens)
    "PIXEL_GIF": "core.tracking",
    "BadToken": "core.tracking",
    "tracking_event": "core.tracking",
    "verify_token": "core.tracking:verify",
    "set_consent": "core.consents",
}

# Everything above, eager or lazy (a test checks the two agree).
__all__ = [
    "BadToken",
    "Change",
    "CommandError",
    "ConditionKind",
    "ConfigError",
    "Duration",
    "EVENTS",
    "Event",
    "EventSource",
    "EventTypes",
    "IngestReport",
    "PIXEL_GIF",
    "PROFILES",
    "RawRecord",
    "ReadOptions",
    "Rejection",
    "RowMapper",
    "ScoreError",
    "ScoreValue",
    "ScoringModel",
    "Settings",
    "SqlContext",
    "StoredEvent",
    "UsageError",
    "Where",
    "check_event_types",
    "count_events",
    "database_summary",
    "delete_all_data",
    "epoch_seconds",
    "evaluate_profiles",
    "hookimpl",
    "ingest",
    "json_key",
    "latest_score_sql",
    "load_cursor",
    "load_score_files",
    "load_segment_files",
    "matches",
    "parse_duration",
    "run_scores",
    "run_segments",
    "save_cursor",
    "set_consent",
    "store_scores",
    "tracking_event",
    "validate_event",
    "verify_token",
    "where_sql",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


if TYPE_CHECKING:
    from core.config import ConfigError, Settings
    from core.consents import set_consent
    from core.db.tables import EVENTS, PROFILES
    from core.events import Event, IngestReport, Rejection, ingest
    from core.events import validate as validate_event
    from core.maintenance import delete_all_data
    from core.mapping import RowMapper
    from core.scoring import latest_score_sql, load_score_files, run_scores, store_scores
    from core.segments.language import Duration, EventTypes, Where, parse_duration
    from core.segments.language import _check_types as check_event_types
    from core.segments.realtime import evaluate_profiles
    from core.segments.sql import where_sql
    from core.segments.sqlfuncs import epoch_seconds, json_key
    from core.segments.store import load_segment_files, run_segments
    from core.segments.values import matches
    from core.source_state import load_cursor, save_cursor
    from core.stats import count_events, database_summary
    from core.tracking import PIXEL_GIF, BadToken, tracking_event
    from core.tracking import verify as verify_token
