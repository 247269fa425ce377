"""What the ``segflow workflows`` commands show, one library call each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.automation.engine import run_tick
from core.automation.language import Workflow, WorkflowError, default_registry
from core.automation.perform import perform_pending
from core.automation.simulate import Simulation, simulate
from core.automation.store import Definitions
from core.db.tables import WORKFLOW_ACTIONS, WORKFLOW_HISTORY, WORKFLOW_STATES
from core.profiles import find_profile_id


def _runs_by(conn, column, *where) -> dict[str, int]:
    rows = conn.execute(sa.select(column, sa.func.count()).where(*where).group_by(column)).all()
    return {str(k): n for k, n in rows if k is not None}


def workflow_list(engine: Engine) -> list[dict[str, Any]]:
    reg = default_registry()
    with engine.connect() as conn:
        defs = Definitions(conn, reg)
        out = []
        for name, version in sorted(defs.latest.items()):
            wf = defs.get(name, version)
            out.append(
                {
                    "name": name,
                    "version": version,
                    "trigger": wf.trigger.name,
                    "description": wf.description,
                    "runs": _runs_by(
                        conn, WORKFLOW_STATES.c.status, WORKFLOW_STATES.c.workflow == name
                    ),
                }
            )
    return out


def tick_and_perform(
    engine: Engine,
    settings: Any,
    *,
    as_of: datetime,
    definitions: dict[str, Workflow] | None = None,
    perform: bool = True,
) -> dict[str, Any]:
    """A tick, then (``perform``) the pending actions: what ``run-tick`` and the
    automate flow do."""
    report = run_tick(engine, settings, as_of=as_of, definitions=definitions)
    result = report.model_dump(mode="json")
    result["performed"] = (
        perform_pending(engine, settings, as_of=as_of).model_dump() if perform else None
    )
    return result


def workflow_status(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        defs = Definitions(conn, default_registry())
        if name not in defs.latest:
            known = ", ".join(sorted(defs.latest)) or "none stored"
            raise WorkflowError(f"no workflow named {name!r} ({known})")
        wf = defs.get(name, defs.latest[name])
        of = WORKFLOW_STATES.c.workflow == name
        return {
            "name": name,
            "version": defs.latest[name],
            "trigger": wf.trigger.name,
            "runs": _runs_by(conn, WORKFLOW_STATES.c.status, of),
            "steps": _runs_by(
                conn, WORKFLOW_STATES.c.step, of, WORKFLOW_STATES.c.status == "active"
            ),
            "arms": _runs_by(conn, WORKFLOW_STATES.c.arm, of),
            "actions": {
                f"{a} {s}": n
                for (a, s), n in (
                    ((a, s), n)
                    for a, s, n in conn.execute(
                        sa.select(
                            WORKFLOW_ACTIONS.c.action, WORKFLOW_ACTIONS.c.status, sa.func.count()
                        )
                        .where(WORKFLOW_ACTIONS.c.workflow == name)
                        .group_by(WORKFLOW_ACTIONS.c.action, WORKFLOW_ACTIONS.c.status)
                    )
                )
            },
        }


def simulate_workflow(
    engine: Engine,
    name: str,
    start: datetime,
    end: datetime,
    definitions: dict[str, Workflow] | None = None,
) -> Simulation:
    """Simulate the stored workflow ``name`` (or the one in ``definitions``)."""
    reg = default_registry()
    if definitions and name in definitions:
        wf = definitions[name]
    else:
        with engine.connect() as conn:
            defs = Definitions(conn, reg)
            if name not in defs.latest:
                known = ", ".join(sorted({*defs.latest, *(definitions or {})})) or "none"
                raise WorkflowError(f"no workflow named {name!r} ({known})")
            wf = defs.get(name, defs.latest[name])
    return simulate(engine, wf, start, end, registry=reg)


def person_history(engine: Engine, who: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        pid = find_profile_id(conn, who)
        runs = [
            dict(r)
            for r in conn.execute(
                sa.select(WORKFLOW_STATES)
                .where(WORKFLOW_STATES.c.profile_id == pid)
                .order_by(WORKFLOW_STATES.c.id)
            ).mappings()
        ]
        for run in runs:
            run["history"] = [
                dict(h)
                for h in conn.execute(
                    sa.select(
                        WORKFLOW_HISTORY.c.at,
                        WORKFLOW_HISTORY.c.step,
                        WORKFLOW_HISTORY.c.what,
                        WORKFLOW_HISTORY.c.detail,
                    )
                    .where(WORKFLOW_HISTORY.c.run_id == run["id"])
                    .order_by(WORKFLOW_HISTORY.c.id)
                ).mappings()
            ]
    return runs


def workflow_outcomes(engine: Engine, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per workflow: people entered, waiting (active runs), sent (send actions
    done), held out, exited, completed, and skips and deferrals by reason (cap,
    quiet hours) from the runs' history."""
    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        defs = Definitions(conn, default_registry())
        for name in names or sorted(defs.latest):
            of = WORKFLOW_STATES.c.workflow == name
            by_status = _runs_by(conn, WORKFLOW_STATES.c.status, of)
            actions = {
                (a, s): n
                for a, s, n in conn.execute(
                    sa.select(WORKFLOW_ACTIONS.c.action, WORKFLOW_ACTIONS.c.status, sa.func.count())
                    .where(WORKFLOW_ACTIONS.c.workflow == name)
                    .group_by(WORKFLOW_ACTIONS.c.action, WORKFLOW_ACTIONS.c.status)
                )
            }
            held: dict[str, dict[str, int]] = {"skipped": {}, "deferred": {}}
            for what, detail, n in conn.execute(
                sa.select(WORKFLOW_HISTORY.c.what, WORKFLOW_HISTORY.c.detail, sa.func.count())
                .join(WORKFLOW_STATES, WORKFLOW_STATES.c.id == WORKFLOW_HISTORY.c.run_id)
                .where(of, WORKFLOW_HISTORY.c.what.in_(("skipped", "deferred")))
                .group_by(WORKFLOW_HISTORY.c.what, WORKFLOW_HISTORY.c.detail)
            ):
                reason = (detail or what).split(": until")[0]
                held[what][reason] = held[what].get(reason, 0) + n
            out[name] = {
                "entered": sum(by_status.values()),
                "waiting": by_status.get("active", 0),
                "sent": actions.get(("send", "done"), 0),
                "not_sent": sum(n for (a, s), n in actions.items() if a == "send" and s != "done"),
                "held_out": by_status.get("held_out", 0),
                "exited": by_status.get("exited", 0),
                "completed": by_status.get("completed", 0),
                "actions": {f"{a} {s}": n for (a, s), n in sorted(actions.items())},
                **held,
            }
    return out
