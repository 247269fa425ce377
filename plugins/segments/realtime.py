"""Built-in plugin: keep segment memberships current as events arrive.

Streaming ingestion (the API, small imports) re-evaluates each batch's
profiles; a bulk load (``segflow import`` of a big file) evaluates every
profile it touched once, at its end (``on_profiles_loaded``), through the
one-pass SQL evaluation. Switch it off with ``segflow import --no-realtime``
(no hook is called), or leave it out with SEGFLOW_LOAD_PLUGINS.
"""

from __future__ import annotations

from core import condition_kinds, hookimpl, segment_change_hook


@hookimpl
def on_events_ingested(events, engine) -> None:
    _evaluate({e.profile_id for e in events}, engine)


@hookimpl
def on_profiles_loaded(profile_ids, engine) -> None:
    _evaluate(set(profile_ids), engine)


def _evaluate(profile_ids: set[int], engine) -> None:
    # Imported here: every command that lists commands loads this plugin, and
    # the evaluator brings the segment engine and SQLAlchemy with it.
    from core import evaluate_profiles

    # Built per call, not cached: plugins may come and go (tests, reloads);
    # parsed definitions stay cached as long as the kinds are equal.
    evaluate_profiles(
        engine,
        profile_ids,
        kinds=condition_kinds(),
        on_change=segment_change_hook(engine),
    )
