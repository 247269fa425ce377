"""Built-in plugin: keep segment memberships current as events arrive.

Switch it off for bulk loads with ``segflow import --no-realtime`` (the hook
is not called), or leave it out with SEGFLOW_LOAD_PLUGINS.
"""

from __future__ import annotations

from core import evaluate_profiles, hookimpl


@hookimpl
def on_events_ingested(events, engine) -> None:
    evaluate_profiles(engine, {e.profile_id for e in events})
