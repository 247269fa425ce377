"""``webhook``: POST the run's context to a URL, with retries.

    - webhook: {url: "https://crm.example.com/hooks/segflow", body: {list: vip}}

The request carries an ``Idempotency-Key`` header (the action's key), the same
on every retry and after a crash, so a receiver that honours it acts once.
Temporary failures (connection errors, timeouts, 429 and 5xx) are retried with
backoff (``Retry-After`` honoured up to ``max_wait``); other 4xx answers fail
the action; still failing after the retries, it stays pending for the next run.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from core import Action, ActionCall, ActionResult, TlsSetupError, client_context, untrusted


class WebhookParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=10)
    backoff: float = Field(default=0.5, ge=0, le=60)
    max_wait: float = Field(default=30.0, ge=0, le=300)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _perform(call: ActionCall, sleep=time.sleep) -> ActionResult:
    # Imported here: every command that loads the plugins loads this module.
    import httpx

    p: WebhookParams = call.params
    payload = {
        "key": call.key,
        "workflow": call.workflow,
        "run_id": call.run_id,
        "step": call.step,
        "profile_id": call.profile_id,
        "data": p.body,
    }
    headers = {**p.headers, "Idempotency-Key": call.key}
    last = ""
    try:
        verify = client_context()
    except TlsSetupError as exc:
        # The installation's CA setting, not the call, is wrong: try again once it is fixed.
        return ActionResult("retry", str(exc))
    with httpx.Client(timeout=p.timeout, verify=verify) as client:
        for attempt in range(p.retries + 1):
            wait = p.backoff * 2**attempt
            try:
                response = client.request(p.method, str(p.url), json=payload, headers=headers)
            except httpx.TransportError as exc:
                if refused := untrusted(exc):
                    # Retrying cannot make the certificate trusted: pending until it is.
                    return ActionResult("retry", f"{p.url}: {refused}")
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return ActionResult(detail={"status": response.status_code})
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
                    return ActionResult("failed", last)
                wait = max(wait, min(_retry_after(response) or 0.0, p.max_wait))
            if attempt < p.retries:
                sleep(min(wait, p.max_wait))
    return ActionResult("retry", f"{last} (after {p.retries + 1} attempts)")


WEBHOOK = Action(
    "webhook",
    "call a URL with the run's context (Idempotency-Key header, retries)",
    WebhookParams.model_validate,
    _perform,
)
