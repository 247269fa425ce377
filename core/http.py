"""The documented helpers for HTTP event sources (``EventSource.mount``).

A source's ``mount(router, api)`` gets ``api``, an ``ApiContext``
(``authorize``, ``ingest``, ``ingest_async``, ``settings``, ``engine``); it
answers errors with ``ApiError(status, message, field=None)`` (JSON
``{"error": ..., "field": ...}``) and validates one event dict with
``checked_event(raw, where)``. Import this module only inside ``mount``:
it loads FastAPI, which ``import core`` must not.
"""

from core.api import ApiContext, ApiError, checked_event

__all__ = ["ApiContext", "ApiError", "checked_event"]
