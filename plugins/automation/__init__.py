"""Built-in plugin: the automation engine's built-in triggers, and the hooks that
start and move workflow runs as segment changes and events are committed.

Triggers (``trigger:`` in a workflow): ``segment_entered`` and
``segment_exited`` (a segment's name), ``event`` (a type, or ``{type, where,
key}``), ``schedule`` (``{cron, segment, timezone}``) and ``date_attribute``
(``{attribute, offset, annual}``); see plugins/automation/triggers.py.
"""

from __future__ import annotations

from core import hookimpl


@hookimpl
def register_triggers(register) -> None:
    from plugins.automation.triggers import TRIGGERS

    for trigger in TRIGGERS:
        register(trigger)


@hookimpl
def on_segment_change(changes, engine) -> None:
    from core import workflow_segment_changes

    workflow_segment_changes(engine, changes)


@hookimpl
def on_events_ingested(events, engine) -> None:
    from core import workflow_events

    workflow_events(engine, events)
