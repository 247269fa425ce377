"""``sync``: a workflow step that syncs the person to a connector now.

    - sync: {connector: klaviyo}

It sends what changed for that person (profile, consent, the connector's
segments), as ``segflow sync run`` does for everyone; the action is done when
the connector confirmed them, skipped for a person without an email address.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, field_validator

from core import SYNC_STATES, Action, ActionCall, ActionResult, run_sync


class SyncParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connector: str

    @field_validator("connector")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("name a [[connectors]] entry")
        return value


def _validate(value: Any) -> SyncParams:
    if isinstance(value, str):
        value = {"connector": value}
    return SyncParams.model_validate(value)


def perform_many(calls: list[ActionCall]) -> list[ActionResult]:
    from plugins.sync.config import configured, connector_of, target_of

    by_connector: dict[str, list[ActionCall]] = {}
    for call in calls:
        by_connector.setdefault(call.params.connector, []).append(call)
    results: dict[str, ActionResult] = {}
    for name, group in by_connector.items():
        first = group[0]
        (config,) = configured(first.settings, name)
        target = target_of(config)
        pids = {c.profile_id for c in group}
        run_sync(first.engine, target, connector_of(config), only=pids)
        with first.engine.connect() as conn:
            states = {
                pid: (status, reason)
                for pid, status, reason in conn.execute(
                    sa.select(
                        SYNC_STATES.c.profile_id, SYNC_STATES.c.status, SYNC_STATES.c.reason
                    ).where(
                        SYNC_STATES.c.connector == target.name,
                        SYNC_STATES.c.profile_id.in_(sorted(pids)),
                    )
                )
            }
        for call in group:
            if call.profile_id not in states:
                results[call.key] = ActionResult("skipped", "no email address")
                continue
            status, reason = states[call.profile_id]
            results[call.key] = (
                ActionResult("done")
                if status == "ok"
                else ActionResult("retry" if status == "retry" else "failed", reason or status)
            )
    return [results[c.key] for c in calls]


def _perform(call: ActionCall) -> ActionResult:
    return perform_many([call])[0]


SYNC = Action(
    "sync",
    "sync the person to a connector of [[connectors]] now (profile, consent, segments)",
    _validate,
    _perform,
    perform_many=perform_many,
)
