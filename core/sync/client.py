"""The HTTP client connectors sync through: pooled, rate-limited, retrying.

One ``SyncClient`` per target and run. Every request waits for a token of the
target's bucket (``SyncLimits.requests_per_second`` with ``burst``) and for a
connection slot (``concurrency``), or, for an API that counts requests in
sliding windows per group of endpoints (``SyncLimits.windows``), for a slot
of its group and room in each of the group's windows; when the connector
reads the live rate headers (``SyncApi.rate_state``) and none are left, the
group's requests wait for the window to reset. 429, 5xx, timeouts and
dropped connections are retried with exponential backoff and jitter (a
429's Retry-After is honoured); other answers go back to the connector,
which maps them to per-record results.

A request that may have reached the API before its connection dropped is
retried only when the connector says it is idempotent (``idempotent=True``,
the default for PUT, DELETE and reads): a retried POST could otherwise be
applied twice. ``TransportFailure`` reports the others, and the connector
decides (an event with a unique id may be resent; a job id is looked up).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from core.tls import client_context, untrusted
from core.types import SyncLimits

if TYPE_CHECKING:
    import httpx

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class SyncFailure(Exception):
    """A request that still failed after its retries (``status``: the last
    answer's, None for a transport error); its records are retried next run."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KeyRefused(SyncFailure):
    """The API answered 401: it refuses the key itself, so every other request
    of the run would be refused too; the run stops at the first."""


class TransportFailure(SyncFailure):
    """The connection failed after the request may have reached the API, and
    the request was not marked idempotent, so it was not retried."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to base * 2**n,
    capped; ``attempts`` tries in all."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, asked: float | None = None) -> float:
        if asked is not None:
            # What the API asked for, and a little more, so parallel requests do not
            # all come back in the same instant.
            return min(self.cap, asked) + self.rng.uniform(0, self.base)
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, max(1, burst), clock
        self.tokens = float(self.burst)
        self.stamp = clock()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            while True:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class SlidingWindows:
    """At most ``n`` requests in any ``seconds``, for every ``(n, seconds)``:
    the windows an API counts in. Each window is kept ``margin`` seconds
    longer, as the API counts a request when it arrives, a little after it
    was sent."""

    def __init__(
        self,
        windows: Sequence[tuple[int, float]],
        clock: Callable[[], float] = time.monotonic,
        margin: float = 0.05,
    ) -> None:
        self.windows = [(max(1, n), seconds + margin, deque[float]()) for n, seconds in windows]
        self.clock = clock
        self.lock = asyncio.Lock()
        # Slots whose requests are not answered yet: the API may count them still.
        self.unanswered: list[float] = []

    def answered(self, at: float) -> float:
        """The request whose slot was taken at ``at`` is answered (or its
        connection failed): the API counted it, if it did, at some time up to
        now, so the slot is held until a window after now. Held from when it
        was sent, a slot came free here while the API, counting a request that
        reached it late, had none, and the client waited for a reset it did not
        need. The slot's time from now on."""
        now = self.clock()
        with contextlib.suppress(ValueError):
            self.unanswered.remove(at)
        for _n, _seconds, hits in self.windows:
            with contextlib.suppress(ValueError):
                hits.remove(at)
            # The latest time in the window: the hits stay in order.
            hits.append(now)
        return now

    def release(self, at: float) -> None:
        """Give back the slot taken at ``at`` (the API refused it uncounted)."""
        for _n, _seconds, hits in self.windows:
            with contextlib.suppress(ValueError):
                hits.remove(at)

    def reconcile(self, left: int, sent_at: float, held: float | None = None) -> int:
        """The API's answer to the request sent at ``sent_at`` (its slot's time
        now ``held``) says ``left`` are left in its longest window: forget those
        of ours answered before it was sent that it cannot have counted (refused
        or dropped before it counted them), oldest first, so room is never
        given back sooner than it frees. How many."""
        n, seconds, hits = max(self.windows, key=lambda w: w[1])
        now = self.clock()
        # Ours answered before it was sent, and itself, less all it counted (which
        # may include some sent later or still unanswered), were surely not
        # counted: one sent earlier but not answered yet may only now be reaching
        # its counter.
        waiting = set(self.unanswered)
        answered = [t for t in hits if now - seconds < t <= sent_at and t not in waiting]
        if held is not None and held in hits:
            answered.append(held)
        excess = len(answered) - (n - max(0, left))
        forgotten = 0
        for at in answered[: max(0, excess)]:
            self.release(at)
            forgotten += 1
        return forgotten

    def full(self) -> bool:
        """Whether a window is full: the API's count of none left is this client's."""
        now = self.clock()
        return any(sum(1 for t in hits if t > now - s) >= n for n, s, hits in self.windows)

    async def take(self) -> float:
        """Wait for room in every window; the time the slot was taken at."""
        async with self.lock:
            while True:
                now = self.clock()
                wait = 0.0
                for n, seconds, hits in self.windows:
                    while hits and hits[0] <= now - seconds:
                        hits.popleft()
                    if len(hits) >= n:
                        wait = max(wait, hits[0] + seconds - now)
                if wait <= 0:
                    for _n, _seconds, hits in self.windows:
                        hits.append(now)
                    self.unanswered.append(now)
                    return now
                await asyncio.sleep(wait)


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429s met
    uncounted: int = 0  # slots given back as the API's rate headers did not count them
    waited: float = 0.0  # seconds spent waiting on live rate headers and Retry-After


class SyncClient:
    """``await client.request(method, path, ...)`` -> httpx.Response (any status
    but the retried ones, which raise ``SyncFailure`` once retries are spent)."""

    def __init__(
        self,
        base_url: str,
        limits: SyncLimits,
        *,
        headers: Mapping[str, str] | None = None,
        rate_state: Callable[[httpx.Response], tuple[int, float] | None] | None = None,
        backoff: Backoff | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_group: Callable[[str, str], str] | None = None,
    ) -> None:
        self.limits = limits
        self.bucket = TokenBucket(limits.requests_per_second, limits.burst)
        self.slots = asyncio.Semaphore(limits.concurrency)
        # Groups the API counts apart are paced apart: one waiting for its window
        # holds none of another's connections.
        self.rate_group = rate_group
        self.windows = {g: SlidingWindows(w) for g, w in limits.windows.items()}
        self.group_slots = {g: asyncio.Semaphore(limits.concurrency) for g in self.windows}
        self.rate_state = rate_state
        self.backoff = backoff or Backoff()
        self.stats = ClientStats()
        self._paused_until: dict[str, float] = {}
        # Set at the first 401; every later request raises it unsent, even where
        # a connector maps a failed call to its records and carries on.
        self.refused: KeyRefused | None = None
        connections = limits.concurrency * max(1, len(self.windows))
        # Imported here: the connector plugins that import this module load with
        # every command, and httpx costs more at start-up than most commands.
        import httpx

        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=transport,
            verify=client_context(),
        )

    def resize(self, group: str, windows: Sequence[tuple[int, float]]) -> None:
        """Pace ``group`` by ``windows`` from now on (what the API's answers say
        its limit is), counting what was already sent in them."""
        old = self.windows.get(group)
        self.windows[group] = new = SlidingWindows(windows)
        self.group_slots.setdefault(group, asyncio.Semaphore(self.limits.concurrency))
        if old is not None and old.windows:
            sent = max((hits for _n, _s, hits in old.windows), key=len)
            for _n, _s, hits in new.windows:
                hits.extend(sent)

    async def __aenter__(self) -> SyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def request(
        self, method: str, url: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        if self.refused is not None:
            raise self.refused
        method = method.upper()
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        last = "no attempt"
        import httpx

        if "json" in kwargs:
            # Encoded once for all the attempts, by orjson: httpx's json.dumps of a
            # bulk call's body costs a good share of a large sync's CPU.
            kwargs["content"] = orjson.dumps(kwargs.pop("json"), option=orjson.OPT_NON_STR_KEYS)
            if "content-type" not in self.http.headers:
                kwargs["headers"] = {"Content-Type": "application/json"} | dict(
                    kwargs.get("headers") or {}
                )
        group = self.rate_group(method, url) if self.rate_group is not None else ""
        windows = self.windows.get(group)
        slots = self.group_slots.get(group, self.slots)
        for attempt in range(self.backoff.attempts):
            await self._wait_for_window(group)
            if windows is None:
                await self.bucket.take()
            async with slots:
                if windows is not None:
                    # Counted when it goes out, not while it waited for a connection.
                    sent_at = await windows.take()
                self.stats.requests += 1
                try:
                    try:
                        response = await self.http.request(method, url, **kwargs)
                    finally:
                        if windows is not None:
                            held = windows.answered(sent_at)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    if refused := untrusted(exc):
                        raise SyncFailure(f"{method} {url}: {refused}") from None
                    # Never reached the API: always safe to try again.
                    last = f"{type(exc).__name__}: {exc}"
                    response = None
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    if not safe:
                        raise TransportFailure(f"{method} {url}: {last}") from None
                    response = None
            asked = None
            if response is not None:
                if response.status_code == 429 and windows is not None:
                    # A refused request takes no slot in the API's counters.
                    windows.release(held)
                if windows is not None:
                    self._read_rate(response, group, sent_at, held)
                else:
                    self._read_rate(response, group)
                if response.status_code == 401:
                    self.refused = KeyRefused(f"{method} {url.split('?')[0]}: HTTP 401", 401)
                    raise self.refused
                if response.status_code not in RETRIED_STATUS:
                    return response
                last = f"HTTP {response.status_code}"
                if response.status_code == 429:
                    self.stats.throttled += 1
                    asked = _retry_after(response)
            if attempt + 1 < self.backoff.attempts:
                self.stats.retries += 1
                wait = self.backoff.delay(attempt, asked)
                self.stats.waited += wait if asked is not None else 0.0
                await asyncio.sleep(wait)
        status = response.status_code if response is not None else None
        raise SyncFailure(f"{method} {url}: {last} after {self.backoff.attempts} attempts", status)

    def _read_rate(
        self,
        response: httpx.Response,
        group: str = "",
        sent_at: float | None = None,
        held: float | None = None,
    ) -> None:
        if self.rate_state is None:
            return
        state = self.rate_state(response)
        if state is not None:
            left, reset = state
            windows = self.windows.get(group)
            if windows is not None and sent_at is not None:
                # Requests that met a 5xx or a dropped connection before the API
                # counted them hold no slot there: waiting for them wastes the window.
                self.stats.uncounted += windows.reconcile(left, sent_at, held)
            if left <= 0 and reset > 0 and not (windows is not None and windows.full()):
                # None left while our own windows have room: another client of the
                # key used them, and only the API knows when they come back.
                until = time.monotonic() + reset
                self._paused_until[group] = max(self._paused_until.get(group, 0.0), until)

    async def _wait_for_window(self, group: str = "") -> None:
        pause = self._paused_until.get(group, 0.0) - time.monotonic()
        if pause > 0:
            self.stats.waited += pause
            await asyncio.sleep(pause)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
