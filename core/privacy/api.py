"""The privacy routes of the HTTP API (admin scope): a person's export and erasure.

    GET  /v1/privacy/export/{user_id}  -> the export document (core.privacy.export)
    POST /v1/privacy/erase/{user_id}   -> the erasure report (core.privacy.erase)
    POST /v1/consents  (events:write)  -> a person's consent decisions, stored as an
                                          identify event with traits.consent

Unknown person: 404. Imported by ``core.api.create_app`` only (it loads FastAPI).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from core.api import ApiContext, ApiError, requires
from core.profiles import ProfileNotFound
from core.types import CommandError

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
        from core.api import checked_event
        from core.privacy.policy import ConsentChange, consent_change

        info = ctx.authorize(request, CONSENT_SCOPE)
        decisions = body.get("consent")
        ids = {k: body[k] for k in ("user_id", "anonymous_id", "email") if body.get(k)}
        event = {"type": "identify", **ids, "traits": {"consent": decisions}}
        if body.get("ts"):
            event["ts"] = body["ts"]
        change = consent_change(event)
        if not isinstance(change, ConsentChange):
            raise ApiError(400, change or "no consent given", "body")
        ctx.ingest([checked_event(event, "body")], f"api:{info.name}")
        return {"recorded": change.purposes, "version": change.version}
