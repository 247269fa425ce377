"""The documented helpers for HTTP event sources (``EventSource.mount``).

A source's ``mount(router, api)`` gets ``api``, an ``ApiContext``
(``authorize``, ``ingest``, ``ingest_async``, ``settings``, ``engine``); it
answers errors with ``ApiError(status, message, field=None)`` (JSON
``{"error": ..., "field": ...}``) and validates one event dict with
``checked_event(raw, where)``. Each route declares how it is authorised
with ``openapi_extra=requires(scope)`` (or ``requires(SIGNED)`` /
``requires(PUBLIC)``). Import this module only inside ``mount``:
it loads FastAPI, which ``import core`` must not.
"""

from core.api import PUBLIC, SIGNED, ApiContext, ApiError, checked_event, requires

__all__ = ["PUBLIC", "SIGNED", "ApiContext", "ApiError", "checked_event", "requires"]
