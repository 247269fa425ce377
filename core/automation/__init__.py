"""Automation: workflows as data, runs in the database, exactly-once actions.

language.py  the workflow language (parse, validate, compile steps to nodes)
steps.py     the step machine: one run through its steps (shared with simulate)
rules.py     a workflow's rules evaluated with the segment evaluators
store.py     definitions and their versions
engine.py    triggers -> runs, the tick, writes (compare-and-set)
perform.py   pending actions -> plugins -> results
simulate.py  replaying stored history through a workflow, writing nothing
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

__all__ = [
    "ActionReport",
    "TickReport",
    "Workflow",
    "WorkflowError",
    "enter_from_history",
    "load_workflow_files",
    "on_events",
    "on_segment_changes",
    "perform_pending",
    "run_tick",
    "save_workflows",
    "simulate",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "ActionReport": "core.automation.perform",
        "perform_pending": "core.automation.perform",
        "TickReport": "core.automation.engine",
        "enter_from_history": "core.automation.engine",
        "on_events": "core.automation.engine",
        "on_segment_changes": "core.automation.engine",
        "run_tick": "core.automation.engine",
        "Workflow": "core.automation.language",
        "WorkflowError": "core.automation.language",
        "load_workflow_files": "core.automation.language",
        "save_workflows": "core.automation.store",
        "simulate": "core.automation.simulate",
    },
)

if TYPE_CHECKING:
    from core.automation.engine import (
        TickReport,
        enter_from_history,
        on_events,
        on_segment_changes,
        run_tick,
    )
    from core.automation.language import Workflow, WorkflowError, load_workflow_files
    from core.automation.perform import ActionReport, perform_pending
    from core.automation.simulate import simulate
    from core.automation.store import save_workflows
