"""The privacy routes of the HTTP API (admin scope): a person's export and erasure.

    GET  /v1/privacy/export/{user_id}  -> the export document (core.privacy.export)
    POST /v1/privacy/erase/{user_id}   -> the erasure report (core.privacy.erase)
    POST /v1/consents  (events:write)  -> a person's consent decisions, stored as an
                                          identify event with traits.consent
    POST /v1/consents/cmp  (signed)    -> the same, from a consent-management
                                          platform (core.privacy.cmp)

Both consent routes store their decisions through ``consent_event``: one
identify event, so a CMP's withdrawal takes effect exactly as the API's does
(the gate at once, marketing workflow runs ended by the hook that follows).

Unknown person: 404. Imported by ``core.api.create_app`` only (it loads FastAPI).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI, Request

from core.api import SIGNED, ApiContext, ApiError, requires
from core.ingestion import Event
from core.profiles import ProfileNotFound
from core.signatures import SignatureError
from core.types import CommandError

log = logging.getLogger(__name__)

SCOPE = "admin"
# A key that may send events may already send identify traits.consent.
CONSENT_SCOPE = "events:write"


def mount(app: FastAPI, ctx: ApiContext) -> None:
    @app.get("/v1/privacy/export/{user_id}", tags=["privacy"], openapi_extra=requires(SCOPE))
    def export(user_id: str, request: Request) -> dict[str, Any]:
        from core.audit import key_actor
        from core.privacy.export import export_audited

        info = ctx.authorize(request, SCOPE)
        try:
            return export_audited(ctx.engine, ctx.settings, user_id, actor=key_actor(info.name))
        except ProfileNotFound as exc:
            raise ApiError(404, str(exc), "user_id") from None
        except CommandError as exc:
            raise ApiError(500, str(exc)) from None

    @app.post("/v1/privacy/erase/{user_id}", tags=["privacy"], openapi_extra=requires(SCOPE))
    def erase(user_id: str, request: Request) -> dict[str, Any]:
        from core.audit import key_actor
        from core.privacy.erase import erase_everywhere

        info = ctx.authorize(request, SCOPE)
        try:
            report = erase_everywhere(ctx.engine, ctx.settings, user_id, actor=key_actor(info.name))
        except ProfileNotFound as exc:
            raise ApiError(404, str(exc), "user_id") from None
        except CommandError as exc:
            raise ApiError(500, str(exc)) from None
        return report.model_dump()

    @app.post("/v1/consents", tags=["privacy"], openapi_extra=requires(CONSENT_SCOPE))
    def consents(body: dict[str, Any], request: Request) -> dict[str, Any]:
        info = ctx.authorize(request, CONSENT_SCOPE)
        ids = {k: body[k] for k in ("user_id", "anonymous_id", "email") if body.get(k)}
        event, change = consent_event(ids, body.get("consent"), body.get("ts"))
        ctx.ingest([event], f"api:{info.name}")
        return {"recorded": change.purposes, "version": change.version}

    @app.post("/v1/consents/cmp", tags=["privacy"], openapi_extra=requires(SIGNED))
    async def cmp_webhook(request: Request) -> dict[str, Any]:
        from core.privacy import cmp

        config = ctx.settings.privacy.consent.cmp
        if config is None:
            raise ApiError(404, "no CMP webhook is configured ([privacy.consent.cmp])")
        secret = os.environ.get(config.secret_env)
        if not secret:
            where = f"the environment variable {config.secret_env} ([privacy.consent.cmp])"
            raise ApiError(503, f"the CMP webhook's secret is not set: {where}")
        body = await request.body()
        try:
            cmp.verify(
                body, request.headers.get(cmp.SIGNATURE_HEADER), secret, config.tolerance_seconds
            )
        except SignatureError as exc:
            raise ApiError(401, str(exc)) from None
        try:
            found = cmp.decisions(cmp.parse(body), config.purposes)
        except cmp.CmpBodyError as exc:
            raise ApiError(422 if exc.field else 400, str(exc), exc.field) from None
        if found.ignored:
            # Ids, not people: a purpose the CMP has and the mapping lacks.
            log.info("CMP webhook: %d purpose id(s) not mapped: %s", len(found.ignored),
                     ", ".join(sorted(set(found.ignored))))  # fmt: skip
        if found.purposes:
            decided = {**found.purposes, "version": found.version, "source": cmp.SOURCE}
            event, _change = consent_event(
                found.ids, decided, found.at.isoformat(), found.message_id
            )
            await ctx.ingest_async([event], cmp.SOURCE)
        return {
            "recorded": found.purposes,
            "version": found.version,
            "ignored": len(found.ignored),
            "ignored_ids": found.ignored,
        }


def consent_event(
    ids: dict[str, Any], decisions: Any, ts: Any, message_id: str | None = None
) -> tuple[Event, Any]:
    """The identify event carrying ``decisions`` as traits.consent, validated,
    and the change it makes; ApiError 400 naming the field when unreadable."""
    from core.api import checked_event
    from core.privacy.policy import ConsentChange, consent_change

    event: dict[str, Any] = {"type": "identify", **ids, "traits": {"consent": decisions}}
    if ts:
        event["ts"] = ts
    if message_id:
        event["message_id"] = message_id
    change = consent_change(event)
    if not isinstance(change, ConsentChange):
        raise ApiError(400, change or "no consent given", "body")
    return checked_event(event, "body"), change
