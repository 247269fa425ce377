"""Built-in plugin: keep segment memberships current as events arrive.

Switch it off for bulk loads with ``segflow import --no-realtime`` (the hook
is not called), or leave it out with SEGFLOW_LOAD_PLUGINS.
"""

from __future__ import annotations

from core import condition_kinds, evaluate_profiles, hookimpl, segment_change_hook


@hookimpl
def on_events_ingested(events, engine) -> None:
    # Built per batch, not cached: plugins may come and go (tests, reloads);
    # parsed definitions stay cached as long as the kinds are equal.
    evaluate_profiles(
        engine,
        {e.profile_id for e in events},
        kinds=condition_kinds(),
        on_change=segment_change_hook(engine),
    )
