"""The sync client connectors call through, against a real HTTP server on
127.0.0.1 (the fakes' shared server): retries on 429 (Retry-After), 5xx and
dropped connections, never a retried POST that may have taken effect, the
token bucket, the sliding windows per rate group and the live rate headers."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from core.sync.client import (
    Backoff,
    SlidingWindows,
    SyncClient,
    SyncFailure,
    TokenBucket,
    TransportFailure,
)
from core.types import SyncLimits
from plugins.esp.fakes.server import FakeApi, Faults, Request, Response, running

FAST = Backoff(attempts=4, base=0.01, cap=0.05)


class Counter(FakeApi):
    """Counts POST /count; refuses the first ``refuse`` requests with ``status``."""

    name = "counter"

    def __init__(self, refuse: int = 0, status: int = 429, faults: Faults | None = None):
        super().__init__(faults)
        self.count = 0
        self.refuse = refuse
        self.status = status
        self.route("POST", "/count")(self.add)
        self.route("GET", "/count")(self.read)

    def add(self, request: Request) -> Response:
        if self.refuse:
            self.refuse -= 1
            return Response(self.status, {"error": "busy"}, {"Retry-After": "0.05"})
        self.count += 1
        return Response(200, {"count": self.count}, {"X-Left": "5", "X-Reset": "0"})

    def read(self, request: Request) -> Response:
        return Response(200, {"count": self.count})


def run(coro):
    return asyncio.run(coro)


async def send(url: str, method: str = "POST", *, limits=None, **kwargs) -> tuple[int, SyncClient]:
    client = SyncClient(url, limits or SyncLimits(requests_per_second=1000, burst=1000),
                        backoff=FAST, timeout=kwargs.pop("timeout", 5.0), **kwargs)  # fmt: skip
    async with client:
        response = await client.request(method, "/count")
        return response.status_code, client


def test_429_and_5xx_are_retried_until_they_pass():
    for status in (429, 503):
        api = Counter(refuse=2, status=status)
        with running(api) as url:
            code, client = run(send(url))
        assert code == 200 and api.count == 1
        assert client.stats.requests == 3 and client.stats.retries == 2
        assert client.stats.throttled == (2 if status == 429 else 0)


def test_retries_spent_raise_sync_failure_with_the_last_status():
    api = Counter(refuse=10, status=500)
    with running(api) as url, pytest.raises(SyncFailure) as caught:
        run(send(url))
    assert caught.value.status == 500 and "after 4 attempts" in str(caught.value)
    assert api.count == 0


def test_other_client_errors_go_back_to_the_connector_unretried():
    api = Counter(refuse=1, status=422)
    with running(api) as url:
        code, client = run(send(url))
    assert code == 422 and client.stats.requests == 1 and api.count == 0


def test_a_post_whose_connection_dropped_after_it_took_effect_is_not_sent_twice():
    api = Counter(faults=Faults(rate=1.0, kinds=("drop_after",)))
    with running(api) as url, pytest.raises(TransportFailure):
        run(send(url))
    assert api.count == 1  # it took effect once, and was not retried


def test_an_idempotent_request_is_retried_after_a_drop():
    api = Counter(faults=Faults(rate=0.5, seed=3, kinds=("drop",)))
    with running(api) as url:

        async def many():
            client = SyncClient(url, SyncLimits(requests_per_second=1000, burst=1000),
                                backoff=Backoff(attempts=10, base=0.01, cap=0.02))  # fmt: skip
            async with client:
                for _ in range(10):
                    r = await client.request("POST", "/count", idempotent=True)
                    assert r.status_code == 200
                return client

        client = run(many())
    dropped = sum(1 for _m, _p, what in api.log if what == "drop")
    assert dropped > 0 and api.count == 10
    assert client.stats.requests == 10 + dropped


def test_the_token_bucket_holds_the_rate():
    async def take(n: int) -> float:
        bucket = TokenBucket(rate=50, burst=5)
        start = time.monotonic()
        for _ in range(n):
            await bucket.take()
        return time.monotonic() - start

    # 5 at once from the burst, then 20 more at 50 a second: about 0.4 s.
    elapsed = run(take(25))
    assert 0.35 <= elapsed < 1.0


def test_live_rate_headers_pause_every_request_until_the_window_resets():
    api = Counter()

    def state(response: httpx.Response) -> tuple[int, float] | None:
        return 0, 0.3  # nothing left, the window resets in 0.3 s

    with running(api) as url:

        async def twice():
            client = SyncClient(url, SyncLimits(requests_per_second=1000, burst=1000),
                                rate_state=state, backoff=FAST)  # fmt: skip
            async with client:
                await client.request("POST", "/count")
                start = time.monotonic()
                await client.request("POST", "/count")
                return time.monotonic() - start, client

        elapsed, client = run(twice())
    assert elapsed >= 0.25 and client.stats.waited >= 0.25 and api.count == 2


def test_a_slow_answer_times_out_and_a_read_is_retried():
    api = Counter(faults=Faults(rate=1.0, kinds=("slow",), slow_seconds=0.5))
    with running(api) as url, pytest.raises(SyncFailure) as caught:
        run(send(url, "GET", timeout=0.1))
    assert "ReadTimeout" in str(caught.value) and "after 4 attempts" in str(caught.value)


def test_sliding_windows_hold_every_window():
    async def starts(n: int) -> list[float]:
        windows = SlidingWindows([(4, 0.1), (6, 0.3)], margin=0.0)
        origin = time.monotonic()
        out = []
        for _ in range(n):
            await windows.take()
            out.append(time.monotonic() - origin)
        return out

    at = run(starts(7))
    # 4 at once, the 5th and 6th when the short window frees, the 7th when the long one does.
    assert max(at[:4]) < 0.05
    assert 0.09 <= at[4] < 0.25 and 0.09 <= at[5] < 0.25
    assert at[6] >= 0.29


def test_a_rate_group_waiting_for_its_window_does_not_hold_up_another():
    api = Counter()
    limits = SyncLimits(concurrency=2, windows={"slow": ((2, 1.0),), "fast": ((100, 1.0),)})

    def group(_method: str, path: str) -> str:
        return "slow" if "slow" in path else "fast"

    with running(api) as url:

        async def both():
            client = SyncClient(url, limits, backoff=FAST, rate_group=group)
            async with client:
                start = time.monotonic()
                slow = [asyncio.ensure_future(client.request("POST", "/count?slow=1"))
                        for _ in range(4)]  # fmt: skip
                await asyncio.sleep(0.01)
                for _ in range(5):
                    await client.request("POST", "/count")
                fast = time.monotonic() - start
                await asyncio.gather(*slow)
                return fast, time.monotonic() - start

        fast, slow = run(both())
    assert api.count == 9
    # The slow group's last two wait a second for its window, holding both of its
    # connections; the other group's five go meanwhile.
    assert slow >= 0.95 and fast < slow - 0.3


def test_resize_paces_by_the_window_the_api_names_counting_what_was_sent():
    api = Counter()
    with running(api) as url:

        async def resized():
            client = SyncClient(url, SyncLimits(windows={"": ((100, 1.0),)}), backoff=FAST)
            async with client:
                await client.request("POST", "/count")
                client.resize("", [(3, 0.3)])
                start = time.monotonic()
                for _ in range(3):
                    await client.request("POST", "/count")
                return time.monotonic() - start

        # The request before the resize counts: the third after it waits for the window.
        assert run(resized()) >= 0.25
    assert api.count == 4


class Windowed(FakeApi):
    """At most ``n`` requests counted in any ``seconds`` (429 past them); the
    first ``fail`` meet a 500 before they are counted, as a 5xx or a dropped
    connection does at Klaviyo; every answer says what is left."""

    name = "windowed"

    def __init__(self, n: int, seconds: float, fail: int) -> None:
        super().__init__()
        self.n, self.seconds, self.fail = n, seconds, fail
        self.counted = 0
        self.route("POST", "/count")(self.add)

    def add(self, request: Request) -> Response:
        if self.fail:
            self.fail -= 1
            status = 500
        elif self.windows.take("w", self.n, self.seconds):
            self.counted += 1
            status = 200
        else:
            status = 429
        left, _reset = self.windows.state("w", self.n, self.seconds)
        return Response(status, {}, {"X-Left": str(left), "Retry-After": "1"})


def test_requests_the_api_did_not_count_give_their_window_slot_back():
    api = Windowed(3, 0.8, fail=2)
    limits = SyncLimits(concurrency=1, windows={"": ((3, 0.8),)})

    def state(response: httpx.Response) -> tuple[int, float] | None:
        return int(response.headers["X-Left"]), 0.0

    with running(api) as url:

        async def three():
            client = SyncClient(url, limits, rate_state=state, backoff=FAST)
            async with client:
                start = time.monotonic()
                for _ in range(3):
                    await client.request("POST", "/count")
                return time.monotonic() - start, client

        elapsed, client = run(three())
    # Two 500s and three answers: five sent, three counted; waiting for the
    # 500s' slots to leave the window would take 0.8 s, and a slot given back
    # too many would have met a 429.
    assert api.counted == 3 and client.stats.requests == 5 and client.stats.throttled == 0
    assert client.stats.uncounted == 2 and elapsed < 0.5
