"""Performing the actions runs reached: the second half of the outbox.

Each pending action is performed through its plugin and its result recorded
(``done``, ``skipped``, ``failed``; a temporary failure stays ``pending`` for
the next run, up to MAX_ATTEMPTS). A crash after the plugin acted and before
the result was recorded leaves it pending: it is performed again under the
same idempotency key, which the plugins honour (a delivery of a key already
sent is recorded, not sent again; a webhook carries an Idempotency-Key header;
database actions commit with their result and so happen once).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core.automation.language import Registry, default_registry
from core.db.models import utcnow
from core.db.tables import WORKFLOW_ACTIONS, WORKFLOW_HISTORY
from core.ingestion.crashpoints import crash_point
from core.types import Action, ActionCall, ActionResult

BATCH = 200
MAX_ATTEMPTS = 5
REASON_MAX_LENGTH = 500


class ActionReport(BaseModel):
    """What performing did: results per action name, reasons with counts."""

    performed: dict[str, int] = {}
    done: int = 0
    skipped: dict[str, int] = {}
    failed: dict[str, int] = {}
    retry: dict[str, int] = {}

    def count(self, action: str, result: ActionResult) -> None:
        self.performed[action] = self.performed.get(action, 0) + 1
        if result.status == "done":
            self.done += 1
            return
        bucket = getattr(self, result.status)
        reason = result.reason or result.status
        bucket[reason] = bucket.get(reason, 0) + 1


_COLUMNS = ("id", "idempotency_key", "run_id", "profile_id", "workflow", "step", "action",
            "params", "attempts")  # fmt: skip


def perform_pending(
    engine: Engine,
    settings: Any,
    *,
    as_of: datetime | None = None,
    registry: Registry | None = None,
) -> ActionReport:
    """Perform every pending action, in batches; ``settings`` (core.Settings) is
    what the plugins read (connectors, the email settings)."""
    as_of = as_of or datetime.now(UTC)
    reg = registry or default_registry()
    report = ActionReport()
    last = 0
    while True:
        with engine.connect() as conn:
            rows = [
                dict(zip(_COLUMNS, r, strict=True))
                for r in conn.execute(
                    sa.select(*(WORKFLOW_ACTIONS.c[c] for c in _COLUMNS))
                    .where(WORKFLOW_ACTIONS.c.status == "pending", WORKFLOW_ACTIONS.c.id > last)
                    .order_by(WORKFLOW_ACTIONS.c.id)
                    .limit(BATCH)
                )
            ]
        if not rows:
            return report
        last = rows[-1]["id"]
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            groups[row["action"]].append(row)
        for name, items in groups.items():
            action = reg.actions.get(name)
            if action is None:
                result = ActionResult("retry", f"no loaded plugin registers the action {name!r}")
                _finish_all(engine, [(row, result) for row in items], report)
                continue
            _perform(engine, settings, as_of, action, items, report)


def _call(row: dict, action: Action, as_of: datetime, engine: Engine, settings: Any) -> ActionCall:
    return ActionCall(
        key=row["idempotency_key"],
        workflow=row["workflow"],
        run_id=row["run_id"],
        step=row["step"],
        profile_id=row["profile_id"],
        params=action.validate(row["params"]),
        as_of=as_of,
        engine=engine,
        settings=settings,
    )


def _perform(engine, settings, as_of, action: Action, rows: list[dict], report) -> None:
    calls = [_call(row, action, as_of, engine, settings) for row in rows]
    if action.transactional:
        for row, call in zip(rows, calls, strict=True):
            with engine.begin() as conn:
                result = _guard(lambda c=call, conn=conn: action.perform(replace(c, conn=conn)))
                crash_point("perform.performed")
                _finish(conn, row, result, action.name, report)
        return
    if action.perform_many is not None:
        results = _guard_many(action, calls)
    else:
        results = [_guard(lambda c=call: action.perform(c)) for call in calls]
    crash_point("perform.performed")
    _finish_all(engine, list(zip(rows, results, strict=True)), report, action.name)


def _guard(perform) -> ActionResult:
    try:
        result = perform()
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is the action's, not the run's
        return ActionResult("retry", f"{type(exc).__name__}: {exc}"[:REASON_MAX_LENGTH])
    return result if isinstance(result, ActionResult) else ActionResult()


def _guard_many(action: Action, calls: list[ActionCall]) -> list[ActionResult]:
    try:
        results = list(action.perform_many(calls))  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001
        reason = f"{type(exc).__name__}: {exc}"[:REASON_MAX_LENGTH]
        return [ActionResult("retry", reason) for _ in calls]
    if len(results) != len(calls):
        return [
            ActionResult(
                "retry",
                f"{action.name}: perform_many gave {len(results)} results for {len(calls)} actions",
            )
            for _ in calls
        ]
    return results


def _finish_all(engine: Engine, pairs, report: ActionReport, name: str | None = None) -> None:
    with engine.begin() as conn:
        for row, result in pairs:
            _finish(conn, row, result, name or row["action"], report)


def _finish(conn: Connection, row: dict, result: ActionResult, name: str, report) -> None:
    status = result.status
    attempts = row["attempts"] + 1
    if status == "retry" and attempts >= MAX_ATTEMPTS:
        status = "failed"
    if status not in ("done", "skipped", "failed", "retry"):
        status, result = "failed", ActionResult("failed", f"unknown result status {status!r}")
    now = utcnow()
    updated = conn.execute(
        WORKFLOW_ACTIONS.update()
        .where(WORKFLOW_ACTIONS.c.id == row["id"], WORKFLOW_ACTIONS.c.status == "pending")
        .values(
            status="pending" if status == "retry" else status,
            reason=(result.reason or None) and result.reason[:REASON_MAX_LENGTH],
            attempts=attempts,
            updated_at=now,
            done_at=None if status == "retry" else now,
        )
    )
    if updated.rowcount != 1:
        return  # another run recorded it first
    conn.execute(
        WORKFLOW_HISTORY.insert().values(
            run_id=row["run_id"],
            at=now,
            step=row["step"],
            what="performed",
            detail=f"{name}: {status}" + (f" ({result.reason})" if result.reason else ""),
        )
    )
    report.count(name, replace(result, status=status))
