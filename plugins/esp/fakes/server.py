"""What the ESP/CRM fakes share: a real HTTP server on 127.0.0.1, routes,
rate-limit windows and fault injection.

A fake is a ``FakeApi`` with routes; ``running(api)`` serves it on a free port
(a thread per connection, as the vendors' servers answer requests in
parallel) and yields its base URL. Handlers take a ``Request`` and return a
``Response``; they run under the API's lock, so a fake's state changes one
request at a time.

Faults are drawn per request from a seeded generator, so a run with the same
seed meets the same faults:

- ``429``: refused before anything changed, with the fake's own rate-limit
  headers (``FakeApi.too_many``);
- ``500``: refused before anything changed;
- ``slow``: answered after ``slow_seconds`` (a client with a shorter timeout
  gives up, not knowing whether the request took effect: it did);
- ``drop``: the connection closed before anything changed, no answer;
- ``drop_after``: the request took effect, then the connection was closed
  with no answer (what makes idempotency keys matter).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = ("429", "500", "slow", "drop", "drop_after")


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]  # the path's named groups
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ``BadRequest`` when it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serialisable, bytes, or None (no body)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class BadRequest(Exception):
    """A malformed request; the fake answers with its own error shape (``FakeApi.error``)."""


Handler = Callable[[Request], Response]


@dataclass
class Faults:
    """Fault injection: each request meets a fault with probability ``rate``,
    of a kind drawn from ``kinds``."""

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    slow_seconds: float = 2.0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate}: give a share between 0 and 1")
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} ({', '.join(FAULT_KINDS)})")
        self._random = random.Random(self.seed)

    def draw(self) -> str | None:
        if self.rate and self._random.random() < self.rate:
            return self._random.choice(self.kinds)
        return None


class Windows:
    """Sliding-window request counters: ``take(key, limit, seconds)`` counts a
    request against the window and says whether it is within the limit, and
    ``state`` tells what is left and when the window frees a slot."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._hits: dict[tuple[str, float], deque[float]] = defaultdict(deque)

    def _window(self, key: str, seconds: float) -> deque[float]:
        hits = self._hits[(key, seconds)]
        now = self.clock()
        while hits and hits[0] <= now - seconds:
            hits.popleft()
        return hits

    def take(self, key: str, limit: int, seconds: float) -> bool:
        hits = self._window(key, seconds)
        if len(hits) >= limit:
            return False
        hits.append(self.clock())
        return True

    def state(self, key: str, limit: int, seconds: float) -> tuple[int, float]:
        """(requests left in the window, seconds until the oldest leaves it)."""
        hits = self._window(key, seconds)
        reset = hits[0] + seconds - self.clock() if hits else 0.0
        return max(0, limit - len(hits)), max(0.0, reset)


class FakeApi:
    """Routes, state lock, rate windows and faults of one fake."""

    name = "fake"

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.windows = Windows()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        # Every request the fake answered or dropped: (method, path, status or fault).
        self.log: list[tuple[str, str, int | str]] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register a handler for ``method`` and a path pattern with ``{name}`` parts."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "/?$")

        def add(handler: Handler) -> Handler:
            self.routes.append((method.upper(), regex, handler))
            return handler

        return add

    # -- what each fake shapes its own way ------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        """None when the request's credentials are good, else the refusal."""
        return None

    def too_many(self, request: Request) -> Response:
        """The answer to a request refused by a rate limit (or an injected 429)."""
        return Response(429, {"error": "too many requests"}, {"Retry-After": "1"})

    def error(self, status: int, message: str) -> Response:
        """An error in the vendor's body shape."""
        return Response(status, {"error": message})

    def limit(self, request: Request) -> Response | None:
        """None when the request is within the rate limits (counting it), else a 429."""
        return None

    def decorate(self, request: Request, response: Response) -> None:
        """Add headers every answer carries (rate-limit state, ...)."""

    # -- dispatch ------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[Response | None, str | None]:
        """The response (None: drop the connection) and the fault met, if any."""
        fault = self.faults.draw()
        if fault == "drop":
            return None, fault
        found = self._find(request)
        if found is None:
            return self.error(404, f"no route for {request.method} {request.path}"), fault
        handler, params = found
        request.params = params
        refused = self.authorize(request)
        if refused is not None:
            return refused, fault
        with self.lock:
            if fault == "429":
                response = self.too_many(request)
            elif fault == "500":
                response = self.error(500, "internal error (injected)")
            else:
                response = self.limit(request)
                if response is None:
                    try:
                        response = handler(request)
                    except BadRequest as exc:
                        response = self.error(400, str(exc))
            self.decorate(request, response)
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        if fault == "drop_after":
            return None, fault
        return response, fault

    def _find(self, request: Request) -> tuple[Handler, dict[str, str]] | None:
        for method, regex, handler in self.routes:
            if method == request.method and (m := regex.match(request.path)):
                return handler, m.groupdict()
        return None


def _handler_class(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                self.command,
                url.path,
                {},
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
            response, fault = api.handle(request)
            with api.lock:
                api.log.append((self.command, url.path, fault or (response and response.status)))
            if response is None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if response.body is None:
                payload = b""
            elif isinstance(response.body, bytes):
                payload = response.body
            else:
                payload = json.dumps(response.body).encode()
            self.send_response(response.status)
            if payload:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's backlog of 5 drops the SYNs of a burst of parallel clients,
    # which then retry a second later: a vendor's server takes them all at once.
    request_queue_size = 128


@contextlib.contextmanager
def running(api: FakeApi, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``api`` on ``host:port`` (0: a free port) in a thread; yields its base URL."""
    server = _Server((host, port), _handler_class(api))
    thread = threading.Thread(target=server.serve_forever, name=f"fake-{api.name}", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_forever(api: FakeApi, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until interrupted (the ``segflow fake-esp`` command)."""
    with running(api, host, port) as url:
        print(f"fake {api.name} API on {url} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
