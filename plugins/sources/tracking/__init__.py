"""Email and site tracking over HTTP: the open pixel, signed click links,
one-click unsubscribe (RFC 8058) and the site snippet.

Routes, mounted on the ingestion API like any HTTP source:

- ``GET /t/o/{token}.gif``: records ``email_open``, answers a 1x1 GIF;
- ``GET /t/c/{token}``: records ``email_click``, redirects to the destination
  signed inside the token (never an open redirect);
- ``GET /t/u/{token}``: a confirmation page (mail scanners follow links, so a
  GET never unsubscribes); ``POST`` records ``unsubscribe`` and withdraws the
  email consent;
- ``GET /t/segflow.js``: the snippet a site includes (see ``snippet.html``
  beside this module), which sends page, product, scroll and time events to
  the Segment-compatible ``/v1`` API.

Tokens are made and checked by ``core.tracking`` (templates sign them), with
the installation's ``secret_key``. A bad token is a 404, like any unknown URL.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes'
# annotations (``request: Request``) at mount time, and Request is imported
# inside mount so that loading this plugin does not load FastAPI.
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import (
    PIXEL_GIF,
    BadToken,
    EventSource,
    hookimpl,
    tracking_event,
    verify_token,
)

SNIPPET = Path(__file__).parent / "segflow.js"
UNSUBSCRIBE_FORM = (
    "<!doctype html><title>Unsubscribe</title><form method=post>"
    "<input type=hidden name=List-Unsubscribe value=One-Click>"
    "<p>Stop receiving these emails?</p><button>Unsubscribe</button></form>"
)
UNSUBSCRIBED = "<!doctype html><title>Unsubscribed</title><p>You are unsubscribed."


def mount(router: Any, api: Any) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    from core.http import PUBLIC, SIGNED, ApiError, requires

    def secret() -> str:
        if not api.settings.secret_key:
            raise ApiError(503, "tracking is not configured (secret_key)")
        return api.settings.secret_key

    def checked(kind: str, token: str) -> dict[str, Any]:
        try:
            return verify_token(kind, token, secret())
        except BadToken:
            # 404, not 400: a bad token looks like any unknown URL.
            raise ApiError(404, "not found") from None

    def record(kind: str, token: str, request: Request) -> dict[str, Any]:
        data = checked(kind, token)
        extra = {"user_agent": request.headers.get("user-agent", "")[:255]}
        api.ingest([tracking_event(kind, data, datetime.now(UTC), extra)], f"tracking:{kind}")
        return data

    @router.get("/t/segflow.js", include_in_schema=False, openapi_extra=requires(PUBLIC))
    def snippet() -> Response:
        return Response(
            SNIPPET.read_bytes(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300"},
        )

    @router.get("/t/o/{token}.gif", include_in_schema=False, openapi_extra=requires(SIGNED))
    def open_pixel(token: str, request: Request) -> Response:
        record("open", token, request)
        return Response(
            PIXEL_GIF,
            media_type="image/gif",
            headers={"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache"},
        )

    @router.get("/t/c/{token}", include_in_schema=False, openapi_extra=requires(SIGNED))
    def click(token: str, request: Request) -> RedirectResponse:
        data = record("click", token, request)
        return RedirectResponse(data["d"], status_code=302)

    @router.get("/t/u/{token}", include_in_schema=False, openapi_extra=requires(SIGNED))
    def unsubscribe_page(token: str) -> HTMLResponse:
        checked("unsubscribe", token)
        return HTMLResponse(UNSUBSCRIBE_FORM)

    @router.post("/t/u/{token}", include_in_schema=False, openapi_extra=requires(SIGNED))
    def unsubscribe(token: str, request: Request) -> HTMLResponse:
        """RFC 8058 one-click: the mail client POSTs List-Unsubscribe=One-Click."""
        from core import set_consent  # the consent store loads SQLAlchemy; only here

        data = record("unsubscribe", token, request)
        set_consent(api.engine, data.get("u") or data["e"], "email_marketing", False, "unsubscribe")
        return HTMLResponse(UNSUBSCRIBED)


@hookimpl
def register_event_sources(register) -> None:
    register(
        EventSource(
            "tracking",
            "Email open pixel, signed clicks, unsubscribe, site snippet (/t/...)",
            mount=mount,
        )
    )
