"""segflow core. Plugins import only what is exported here (and ``core.http``
for HTTP sources); import-linter holds them to it (tests/test_architecture.py).

The plugin contract's types, ``hookimpl`` and the error wording load at once;
the engine's functions (``ingest``, ``run_segments``, ...) load on first use, so
a plugin module, ``core.types`` or ``core.hookspecs`` can be imported without
pulling in the whole engine, and ``import core`` loads no Prefect, marimo or
FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import describe_validation_error, validation_reason
from core.hookspecs import hookimpl
from core.lazy import lazy_exports
from core.types import (
    EVENT_TYPE_MAX_LENGTH,
    SNAKE_NAME,
    Action,
    ActionCall,
    ActionResult,
    Change,
    CommandError,
    ConditionKind,
    DeliveryFailure,
    DeliveryInDoubt,
    Entry,
    EspConnector,
    EventSource,
    MonitorCheck,
    PermanentFailure,
    ProductEvent,
    ProductHistory,
    RawRecord,
    ReadOptions,
    Recommender,
    RecommenderTables,
    RecordResult,
    RemotePerson,
    RenderedEmail,
    ScoreError,
    ScoreValue,
    ScoringModel,
    SqlContext,
    StoredEvent,
    SyncApi,
    SyncEvent,
    SyncLimits,
    SyncPerson,
    SyncTarget,
    TemporaryFailure,
    Trigger,
    UsageError,
    is_snake_name,
)

_TABLES = (
    "PROFILES",
    "IDENTITIES",
    "EVENTS",
    "AUDIT",
    "CONSENTS",
    "SCORES",
    "SEGMENTS",
    "MEMBERSHIPS",
    "CHANGES",
    "SEGMENT_SIZES",
    "PRODUCTS",
    "PRODUCT_RELATED",
    "PRODUCT_POPULARITY",
    "MESSAGES",
    "SYNC_STATES",
)

# Exported name -> "module" or "module:attribute" (imported on first access).
_LAZY = {
    # settings and the registries plugins' own commands build at the edge
    "ConfigError": "core.config",
    "Settings": "core.config",
    "condition_kinds": "core.plugins",
    "events_ingested_hook": "core.plugins",
    "profiles_loaded_hook": "core.plugins",
    "scoring_models": "core.plugins",
    "segment_change_hook": "core.plugins",
    # storage: read-only table handles (write through the functions below)
    **{name: "core.db.tables" for name in _TABLES},
    "delete_all_data": "core.maintenance",
    # the audit log of admin actions (a plugin's own admin commands record theirs)
    "record_audit": "core.audit:record",
    "current_actor": "core.audit",
    "key_actor": "core.audit",
    "count_events": "core.stats",
    "database_summary": "core.stats",
    "load_cursor": "core.source_state",
    "save_cursor": "core.source_state",
    # ingestion
    "Event": "core.ingestion",
    "IngestReport": "core.ingestion",
    "Rejection": "core.ingestion",
    "RowMapper": "core.ingestion.mapping",
    "bulk_import_scope": "core.ingestion",
    "ingest": "core.ingestion",
    "validate_event": "core.ingestion:validate",
    "worth_bulk_loading": "core.ingestion",
    # segments and scores: the language's building blocks for plugins' own definitions
    "Compare": "core.segments.language",
    "Comparison": "core.segments.language",
    "Duration": "core.segments.language",
    "EventTypes": "core.segments.language",
    "check_event_types": "core.segments.language",
    "parse_duration": "core.segments.language",
    "Filter": "core.segments.where",
    "Where": "core.segments.where",
    "where_matches": "core.segments.where",
    "where_sql": "core.segments.where",
    "EventRow": "core.segments.evaluate",
    "ProfileData": "core.segments.evaluate",
    "epoch_seconds": "core.segments.sqlfuncs",
    "driver_rows": "core.db.sql",
    "SignatureError": "core.signatures",
    "verify_timestamped": "core.signatures",
    "marks": "core.db.sql",
    "time_reader": "core.segments.batch",
    "json_key": "core.segments.sqlfuncs",
    "matches": "core.segments.values",
    "evaluate_profiles": "core.segments.realtime",
    "load_segment_files": "core.segments.store",
    "run_segments": "core.segments.store",
    "latest_score_sql": "core.scoring",
    "load_score_files": "core.scoring",
    "run_scores": "core.scoring",
    "store_scores": "core.scoring",
    # email tracking (the tracking source plugin serves these tokens)
    "PIXEL_GIF": "core.tracking",
    "BadToken": "core.tracking",
    "tracking_event": "core.tracking",
    "verify_token": "core.tracking:verify",
    "set_consent": "core.consents",
    "set_consents": "core.consents",
    # the product catalogue and recommendations
    "PRODUCT_EVENT_TYPES": "core.catalog",
    "load_products": "core.catalog",
    "refresh_products": "core.catalog",
    "recommend": "core.recommendations",
    "refresh_recommendations": "core.recommendations",
    "recommenders": "core.plugins",
    # delivery: connectors, the consent gate, the messages outbox
    "esp_connectors": "core.plugins",
    "email_refusals": "core.consents",
    "DeliveryReport": "core.personalize.delivery",
    "deliver": "core.personalize.delivery",
    "send_segment": "core.personalize.delivery:send",
    "to_mime": "core.personalize.mime",
    # personalised email
    "render_email": "core.personalize.render",
    "TemplateError": "core.personalize.errors",
    # automation: the engine's entry points, and what actions write through
    "update_attributes": "core.profiles",
    "segment_members": "core.personalize.delivery",
    "run_tick": "core.automation.engine",
    "perform_pending": "core.automation.perform",
    "workflow_segment_changes": "core.automation.engine:on_segment_changes",
    "workflow_events": "core.automation.engine:on_events",
    "enter_from_history": "core.automation.engine",
    "load_workflow_files": "core.automation.language",
    "workflow_outcomes": "core.automation.report",
    # ESP / CRM sync: the client connectors call through, runs, verify
    "SyncClient": "core.sync.client",
    "SyncFailure": "core.sync.client",
    "KeyRefused": "core.sync.client",
    "TransportFailure": "core.sync.client",
    "SyncReport": "core.sync.engine",
    "run_sync": "core.sync.engine",
    "plan_sync": "core.sync.engine",
    "VerifyReport": "core.sync.verify",
    "verify_sync": "core.sync.verify",
    "sync_status": "core.sync.verify",
    # monitoring: checks report Alerts; the built-in ones are these functions
    "Alert": "core.monitoring.alerts",
    "MonitorSettings": "core.monitoring.settings",
    "run_checks": "core.monitoring.alerts",
    "open_alerts": "core.monitoring.alerts",
    "drift_alerts": "core.monitoring.drift",
    "freshness_alerts": "core.monitoring.freshness",
    "quality_alerts": "core.monitoring.quality",
    "misclassified_segments": "core.monitoring.campaigns",
    # TLS: every outgoing HTTPS client verifies with client_context (SEGFLOW_CA_BUNDLE)
    "TlsSetupError": "core.tls",
    "ca_context": "core.tls",
    "client_context": "core.tls",
    "untrusted": "core.tls",
    "refresh_outcomes": "core.monitoring.outcomes",
}

# Everything above, eager or lazy (a test checks the two agree).
__all__ = [
    "AUDIT",
    "BadToken",
    "CHANGES",
    "CONSENTS",
    "Change",
    "CommandError",
    "Compare",
    "Comparison",
    "ConditionKind",
    "ConfigError",
    "Duration",
    "EVENTS",
    "EVENT_TYPE_MAX_LENGTH",
    "Event",
    "EventRow",
    "EventSource",
    "EventTypes",
    "Filter",
    "IDENTITIES",
    "IngestReport",
    "MEMBERSHIPS",
    "PIXEL_GIF",
    "PROFILES",
    "ProfileData",
    "RawRecord",
    "RenderedEmail",
    "ReadOptions",
    "Rejection",
    "RowMapper",
    "SCORES",
    "SEGMENTS",
    "SEGMENT_SIZES",
    "PRODUCTS",
    "SNAKE_NAME",
    "ScoreError",
    "ScoreValue",
    "ScoringModel",
    "Settings",
    "SqlContext",
    "StoredEvent",
    "TemplateError",
    "UsageError",
    "Where",
    "bulk_import_scope",
    "check_event_types",
    "condition_kinds",
    "count_events",
    "current_actor",
    "database_summary",
    "delete_all_data",
    "describe_validation_error",
    "SignatureError",
    "driver_rows",
    "verify_timestamped",
    "epoch_seconds",
    "events_ingested_hook",
    "evaluate_profiles",
    "hookimpl",
    "ingest",
    "is_snake_name",
    "json_key",
    "key_actor",
    "marks",
    "time_reader",
    "latest_score_sql",
    "load_cursor",
    "load_score_files",
    "load_segment_files",
    "matches",
    "parse_duration",
    "profiles_loaded_hook",
    "record_audit",
    "render_email",
    "run_scores",
    "run_segments",
    "save_cursor",
    "scoring_models",
    "segment_change_hook",
    "set_consent",
    "set_consents",
    "store_scores",
    "tracking_event",
    "validate_event",
    "validation_reason",
    "verify_token",
    "where_matches",
    "where_sql",
    "worth_bulk_loading",
    "PRODUCT_EVENT_TYPES",
    "PRODUCT_POPULARITY",
    "PRODUCT_RELATED",
    "ProductEvent",
    "ProductHistory",
    "Recommender",
    "RecommenderTables",
    "load_products",
    "recommend",
    "recommenders",
    "refresh_products",
    "refresh_recommendations",
    "DeliveryFailure",
    "DeliveryInDoubt",
    "EspConnector",
    "PermanentFailure",
    "TemporaryFailure",
    "MESSAGES",
    "esp_connectors",
    "email_refusals",
    "DeliveryReport",
    "deliver",
    "send_segment",
    "to_mime",
    "Action",
    "ActionCall",
    "ActionResult",
    "Entry",
    "Trigger",
    "update_attributes",
    "segment_members",
    "run_tick",
    "perform_pending",
    "workflow_segment_changes",
    "workflow_events",
    "enter_from_history",
    "load_workflow_files",
    "workflow_outcomes",
    "SYNC_STATES",
    "RecordResult",
    "RemotePerson",
    "SyncApi",
    "SyncEvent",
    "SyncLimits",
    "SyncPerson",
    "SyncTarget",
    "SyncClient",
    "SyncFailure",
    "KeyRefused",
    "TransportFailure",
    "SyncReport",
    "run_sync",
    "plan_sync",
    "VerifyReport",
    "verify_sync",
    "sync_status",
    "Alert",
    "MonitorCheck",
    "MonitorSettings",
    "run_checks",
    "open_alerts",
    "refresh_outcomes",
    "drift_alerts",
    "freshness_alerts",
    "TlsSetupError",
    "ca_context",
    "client_context",
    "untrusted",
    "quality_alerts",
    "misclassified_segments",
]


__getattr__ = lazy_exports(__name__, _LAZY)


if TYPE_CHECKING:
    from core.audit import current_actor, key_actor
    from core.audit import record as record_audit
    from core.automation.engine import enter_from_history, run_tick
    from core.automation.engine import on_events as workflow_events
    from core.automation.engine import on_segment_changes as workflow_segment_changes
    from core.automation.language import load_workflow_files
    from core.automation.perform import perform_pending
    from core.automation.report import workflow_outcomes
    from core.catalog import PRODUCT_EVENT_TYPES, load_products, refresh_products
    from core.config import ConfigError, Settings
    from core.consents import email_refusals, set_consent, set_consents
    from core.db.sql import driver_rows, marks
    from core.db.tables import (
        AUDIT,
        CHANGES,
        CONSENTS,
        EVENTS,
        IDENTITIES,
        MEMBERSHIPS,
        MESSAGES,
        PRODUCT_POPULARITY,
        PRODUCT_RELATED,
        PRODUCTS,
        PROFILES,
        SCORES,
        SEGMENT_SIZES,
        SEGMENTS,
    )
    from core.ingestion import (
        Event,
        IngestReport,
        Rejection,
        bulk_import_scope,
        ingest,
        worth_bulk_loading,
    )
    from core.ingestion import validate as validate_event
    from core.ingestion.mapping import RowMapper
    from core.maintenance import delete_all_data
    from core.monitoring.alerts import Alert, open_alerts, run_checks
    from core.monitoring.campaigns import misclassified_segments
    from core.monitoring.drift import drift_alerts
    from core.monitoring.freshness import freshness_alerts
    from core.monitoring.outcomes import refresh_outcomes
    from core.monitoring.quality import quality_alerts
    from core.monitoring.settings import MonitorSettings
    from core.personalize.delivery import DeliveryReport, deliver, segment_members
    from core.personalize.delivery import send as send_segment
    from core.personalize.errors import TemplateError
    from core.personalize.mime import to_mime
    from core.personalize.render import render_email
    from core.plugins import (
        condition_kinds,
        esp_connectors,
        events_ingested_hook,
        profiles_loaded_hook,
        recommenders,
        scoring_models,
        segment_change_hook,
    )
    from core.profiles import update_attributes
    from core.recommendations import recommend, refresh_recommendations
    from core.scoring import latest_score_sql, load_score_files, run_scores, store_scores
    from core.segments.batch import time_reader
    from core.segments.evaluate import EventRow, ProfileData
    from core.segments.language import (
        Compare,
        Comparison,
        Duration,
        EventTypes,
        check_event_types,
        parse_duration,
    )
    from core.segments.realtime import evaluate_profiles
    from core.segments.sqlfuncs import epoch_seconds, json_key
    from core.segments.store import load_segment_files, run_segments
    from core.segments.values import matches
    from core.segments.where import Filter, Where, where_matches, where_sql
    from core.signatures import SignatureError, verify_timestamped
    from core.source_state import load_cursor, save_cursor
    from core.stats import count_events, database_summary
    from core.sync.client import KeyRefused, SyncClient, SyncFailure, TransportFailure
    from core.sync.engine import SyncReport, plan_sync, run_sync
    from core.sync.verify import VerifyReport, sync_status, verify_sync
    from core.tls import TlsSetupError, ca_context, client_context, untrusted
    from core.tracking import PIXEL_GIF, BadToken, tracking_event
    from core.tracking import verify as verify_token
