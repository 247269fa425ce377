"""The HTTP ingestion API (FastAPI): a thin shell over core.

Sources that receive events over HTTP are plugins: each registered
``EventSource`` with ``mount`` adds its routes (the Segment-compatible API,
GA4, webhooks, the email tracking pixel and links). This module adds what every
source shares: keys, errors, rate and size limits, group commit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings
from core.ingestion import CommitterClosed, Event, GroupCommitter, IngestError, Rejection, validate
from core.keys import KeyInfo, ScopeError, UnknownKey, touch, verify_key
from core.types import RawRecord

log = logging.getLogger(__name__)

# A key checked less than this long ago is not read again (see verify_key).
KEY_CHECK_SECONDS = 1.0
TOUCH_EVERY = 60.0  # seconds between last_used_at updates of one key
# Segment's documented limits: 32 KB per call, 500 KB per batch.
MAX_BODY_BYTES = 512 * 1024
TOO_LARGE = f"request body over {MAX_BODY_BYTES} bytes"


# How each route is authorised, in its OpenAPI operation (``requires``).
AUTH_FIELD = "x-segflow-auth"
SIGNED = "signed"
PUBLIC = "public"


def requires(auth: str, **openapi: Any) -> dict[str, Any]:
    """A route's ``openapi_extra``, naming how it is authorised: a key scope
    (``events:write``, ``profiles:read``, ``admin``; the handler calls
    ``api.authorize(request, scope)``), ``signed`` (an HMAC-signed body or URL
    token the handler verifies) or ``public``. Every route declares one, and
    tests/test_access_control.py checks each declaration against the live
    server, so a route added without its check fails there.

    The error answers the route can give are documented with it, so a client
    (or schemathesis, tests/test_hostile_openapi.py) can hold the server to
    them."""
    codes = ERRORS_BY_AUTH.get(auth, ERRORS_BY_AUTH["scope"])
    responses = {str(code): {"description": ERROR_TEXT[code], **ERROR_BODY} for code in codes}
    responses.update(openapi.pop("responses", {}))
    return {AUTH_FIELD: auth, "responses": responses, **openapi}


ERROR_TEXT = {
    400: "the body or a parameter is not valid (the answer names which)",
    401: "no key, or an unknown, revoked or expired one",
    403: "the key lacks the route's scope, or the signature does not match",
    404: "no such webhook or person",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    422: "a parameter is missing or of the wrong type",
    429: "the key's rate limit is reached (Retry-After says when to retry)",
}
# Errors answer {"error": ..., "field": ...}; GA4's routes answer in the
# Measurement Protocol's own {"validationMessages": [...]} shape.
ERROR_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}
ERRORS_BY_AUTH = {
    PUBLIC: (413,),
    SIGNED: (400, 401, 403, 404, 413, 422),
    # Key scopes: anything else is a scope.
    "scope": (400, 401, 403, 404, 413, 422, 429),
}


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        body = {"error": message} | ({"field": field} if field else {})
        super().__init__(status_code=status, detail=body)


class RateLimiter:
    """A token bucket per API key: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)
        self.lock = threading.Lock()

    def take(self, key_id: int) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        now = time.monotonic()
        with self.lock:
            tokens, at = self.buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1:
                self.buckets[key_id] = (tokens - 1, now)
                return 0.0
            self.buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate


@dataclass
class ApiContext:
    """What source plugins use to authorise requests and store events."""

    engine: Engine
    settings: Settings
    committer: GroupCommitter
    limiter: RateLimiter | None = None
    touched: dict[int, float] = field(default_factory=dict)

    def authorize(self, request: Request, scope: str, body_key: str | None = None) -> KeyInfo:
        """The API key from HTTP Basic (``key:``), ``Bearer``, or the body."""
        if body_key is not None and not isinstance(body_key, str):
            raise ApiError(400, "the write key must be a string", "writeKey")
        key = body_key or _key_from_header(request.headers.get("authorization", ""))
        if not key:
            raise ApiError(401, "missing API key (HTTP Basic 'key:' or Bearer)")
        try:
            info = verify_key(self.engine, key, scope, max_age=KEY_CHECK_SECONDS)
        except UnknownKey as exc:
            raise ApiError(401, str(exc)) from None
        except ScopeError as exc:
            raise ApiError(403, str(exc)) from None
        if self.limiter is not None and (wait := self.limiter.take(info.id)):
            retry = max(1, math.ceil(wait))
            exc = ApiError(
                429,
                f"rate limit of {self.settings.api_rate_limit:g} requests/s "
                f"for key {info.name!r} reached; retry after {retry} s",
            )
            exc.headers = {"Retry-After": str(retry)}
            raise exc
        now = time.monotonic()
        # last_used_at is for people reading `segflow keys list`: once a minute is
        # plenty, and a write per request would queue behind SQLite's one writer.
        if now - self.touched.get(info.id, -TOUCH_EVERY) >= TOUCH_EVERY:
            self.touched[info.id] = now
            # Off the event loop: the write may wait for SQLite's lock.
            threading.Thread(target=_touch_quietly, args=(self.engine, info.id)).start()
        return info

    def ingest(self, events: list[Event | dict[str, Any]], source: str) -> None:
        """Store events; returns once they are committed. Blocks: for sync routes.

        Dicts are validated first (ApiError 400 naming the event). The
        ``on_events_ingested`` hook (real-time segments) runs afterwards on the
        committer's hook thread, not before this returns.
        """
        self.committer.store(_validated(events), source)

    async def ingest_async(self, events: list[Event | dict[str, Any]], source: str) -> None:
        """``ingest`` for async routes: waits without holding up the event loop."""
        await asyncio.wrap_future(self.committer.submit(_validated(events), source))


def checked_event(raw: Any, where: str) -> Event:
    """One event dict validated, or ApiError 400 naming ``where`` and the field."""
    checked = validate(RawRecord(where, raw))
    if isinstance(checked, Rejection):
        raise ApiError(400, checked.reason, where)
    return checked


def _validated(events: list[Event | dict[str, Any]]) -> list[Event]:
    return [
        e if isinstance(e, Event) else checked_event(e, f"event {i}") for i, e in enumerate(events)
    ]


def _touch_quietly(engine: Engine, key_id: int) -> None:
    try:
        touch(engine, key_id)
    except Exception:  # noqa: BLE001 - a missed last_used_at is not worth a failed request
        log.warning("could not record the use of API key %s", key_id, exc_info=True)


class SizeLimit:
    """413 for a body over MAX_BODY_BYTES: at once when its declared length is,
    else (chunked) as soon as the bytes read pass the limit.

    Plain ASGI rather than ``@app.middleware``: that wrapper costs more per
    request than a single-event track call itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > MAX_BODY_BYTES:
                    await JSONResponse({"error": TOO_LARGE}, status_code=413)(scope, receive, send)
                    return
                # Within the limit; the server holds the body to its length.
                await self.app(scope, receive, send)
                return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > MAX_BODY_BYTES:
                    # Raised inside the route's body read: answered as JSON 413.
                    raise ApiError(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)


def _key_from_header(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user, _, _password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    from core.plugins import event_sources, events_ingested_hook

    committer = GroupCommitter(engine, events_ingested_hook(engine))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Store what requests already handed over before the process ends.
        await asyncio.to_thread(committer.close)

    app = FastAPI(title="segflow ingestion API", version="1", lifespan=lifespan)
    ctx = ApiContext(
        engine, settings, committer, RateLimiter(settings.api_rate_limit, settings.api_burst)
    )
    app.state.segflow = ctx

    app.add_middleware(SizeLimit)

    # Starlette's own HTTPException too: FastAPI raises it for a body it cannot
    # parse (nested too deep, not UTF-8), which answered {"detail": ...}.
    @app.exception_handler(HTTPException)
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError):
        # The first problem, in the {"error", "field"} shape every other error has.
        first = next(iter(exc.errors()), {})
        field = ".".join(str(part) for part in first.get("loc", ())) or None
        body = {"error": str(first.get("msg", "invalid request"))}
        return JSONResponse(body | ({"field": field} if field else {}), status_code=422)

    @app.exception_handler(IngestError)
    async def not_stored(_request: Request, exc: IngestError):
        # Nothing of the request was stored (its group was retried alone).
        return JSONResponse({"error": f"events not stored: {exc}"}, status_code=500)

    @app.exception_handler(CommitterClosed)
    async def closing(_request: Request, _exc: CommitterClosed):
        return JSONResponse(
            {"error": "the server is shutting down; retry"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.get("/health", openapi_extra=requires(PUBLIC))
    def health() -> dict[str, str]:
        return {"status": "ok"}

    from core.privacy.api import mount as mount_privacy

    mount_privacy(app, ctx)

    for source in event_sources().values():
        if source.mount is not None:
            router = APIRouter(tags=[source.name])
            source.mount(router, ctx)
            app.include_router(router)
    return app


# Query parameters that carry a key (GA4's api_secret, ...) and paths whose
# last part is a signed token naming a person: never written to a log.
SECRET_PARAMS = frozenset({"api_secret", "writekey", "key", "token", "api_key"})
TOKEN_PATH = re.compile(r"^(/t/[ocu]/)[^/?]+")


def redact_path(path: str) -> str:
    """A request target as logs may show it: key-bearing query values and
    tracking tokens replaced."""
    base, sep, query = path.partition("?")
    base = TOKEN_PATH.sub(r"\1[token]", base)
    if not sep:
        return base
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        secret = eq and unquote_plus(name).lower() in SECRET_PARAMS
        parts.append(f"{name}=[redacted]" if secret else part)
    return base + "?" + "&".join(parts)


class RedactAccessLog(logging.Filter):
    """uvicorn's access log lines with ``redact_path`` applied to the request target."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with the access log redacted."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactAccessLog}
    config["handlers"]["access"]["filters"] = ["redact"]
    return config


def serve(
    engine: Engine,
    settings: Settings,
    host: str,
    port: int,
    access_log: bool = False,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
) -> None:
    """Run the ingestion API with uvicorn until stopped; over HTTPS when given
    a certificate and its key (TlsSetupError naming the option when unusable)."""
    import gc

    import uvicorn

    from core.tls import check_server_files

    check_server_files(ssl_certfile, ssl_keyfile)
    app = create_app(engine, settings)
    # Everything loaded so far lives as long as the server: frozen, a full
    # collection no longer walks it, which removed 100 ms stalls from the
    # request-to-segment-change latency (bench/api.py).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        log_config=log_config(),
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
