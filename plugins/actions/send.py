"""``send``: render a template for the person and deliver it through a connector.

    - send: {template: cart_abandonment, via: outbox}

The delivery's idempotency key is the action's, so performing it again after a
crash finds the message already sent (or asks the connector) instead of
sending it twice. Marketing by default: the consent gate, frequency caps and
quiet hours apply; ``marketing: false`` for transactional email.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, field_validator

from core import PROFILES, Action, ActionCall, ActionResult, esp_connectors


class SendParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    via: str = "outbox"
    marketing: bool = True

    @field_validator("via")
    @classmethod
    def _known(cls, value: str) -> str:
        connectors = esp_connectors()
        if value not in connectors:
            raise ValueError(f"no connector named {value!r} ({', '.join(sorted(connectors))})")
        return value


def _validate(value: Any) -> SendParams:
    if isinstance(value, str):
        value = {"template": value}
    return SendParams.model_validate(value)


# deliver's outcome -> the action's result status
_RESULTS = {"sent": "done", "earlier": "done", "duplicates": "done", "skipped": "skipped",
            "deferred": "retry", "failed": "failed", "unknown": "failed"}  # fmt: skip


def perform_many(calls: list[ActionCall]) -> list[ActionResult]:
    # Imported when sending: loading the workflows (every tick) validates the
    # step's params but renders nothing, and rendering loads Jinja2 and Babel.
    from core import deliver, render_email

    results: dict[str, ActionResult] = {}
    by_via: dict[str, list[ActionCall]] = {}
    for call in calls:
        by_via.setdefault(call.params.via, []).append(call)
    for via, group in by_via.items():
        first = group[0]
        emails = []
        with first.engine.connect() as conn:
            addressed = _with_email(conn, [call.profile_id for call in group])
            for call in group:
                if call.profile_id not in addressed:
                    # Anonymous visitors, people known only by user id: nobody to send to.
                    results[call.key] = ActionResult("skipped", "no email address")
                    continue
                try:
                    email = render_email(
                        conn,
                        call.params.template,
                        call.profile_id,
                        message_key=call.key,
                        settings=call.settings,
                    )
                except Exception as exc:  # noqa: BLE001 - a template error fails this one
                    results[call.key] = ActionResult("failed", f"render: {exc}")
                    continue
                if not call.params.marketing:
                    from dataclasses import replace

                    email = replace(email, marketing=False)
                emails.append(email)

        def outcome(key: str, what: str, reason: str | None) -> None:
            if what == "earlier" and reason not in ("sent", None):
                status = "failed" if reason == "failed" else "done"
            else:
                status = _RESULTS.get(what, "failed")
            results[key] = ActionResult(status, None if status == "done" else reason or what)

        if emails:
            deliver(
                first.engine,
                emails,
                via=esp_connectors()[via],
                settings=first.settings,
                on_message=outcome,
            )
    return [results.get(c.key, ActionResult("retry", "not delivered")) for c in calls]


def _with_email(conn: Any, profile_ids: list[int]) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(profile_ids), 500):
        chunk = profile_ids[start : start + 500]
        found.update(
            conn.execute(
                sa.select(PROFILES.c.id).where(
                    PROFILES.c.id.in_(chunk), PROFILES.c.email.is_not(None)
                )
            ).scalars()
        )
    return found


def _perform(call: ActionCall) -> ActionResult:
    return perform_many([call])[0]


SEND = Action(
    "send",
    "render a template for the person and deliver it (once per key)",
    _validate,
    _perform,
    marketing=lambda p: p.marketing,
    perform_many=perform_many,
)
