"""The demo's workflows: the example cart recovery, browse follow-up and win-back
workflows acting on the demo store.

They are saved before the segments run, so people entering ``engaged_browsers``
and ``lapsed_customers`` start their runs as it happens; the last day's carts
start theirs from the stored events (the import itself runs no hooks). The
demo then moves a day on, so the waits end, and delivers to the outbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from core import (
    enter_from_history,
    load_workflow_files,
    perform_pending,
    run_tick,
    workflow_outcomes,
)

EXAMPLE_WORKFLOWS = Path(__file__).resolve().parents[2] / "examples" / "workflows"
# How far the demo moves the clock on: past the cart wait and the next morning.
LATER = timedelta(days=1)


def save_demo_workflows(engine: Engine, now: datetime, directory: Path | None = None) -> list[str]:
    definitions = load_workflow_files(directory or EXAMPLE_WORKFLOWS)
    run_tick(engine, as_of=now, definitions=definitions)
    return sorted(definitions)


def run_demo_workflows(
    engine: Engine, settings: Any, now: datetime, names: list[str]
) -> dict[str, Any]:
    """Enter the last day's carts, tick a day later, perform (given ``settings``
    with a secret key); what happened per workflow."""
    enter_from_history(engine, now - LATER, now, as_of=now)
    later = now + LATER
    run_tick(engine, as_of=later)
    performed = perform_pending(engine, settings, as_of=later) if settings is not None else None
    return {
        "as_of": later.isoformat(),
        "workflows": workflow_outcomes(engine, names),
        "performed": performed.model_dump() if performed is not None else None,
    }
