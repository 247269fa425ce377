"""A small HTTP/1.1 load generator: keep-alive connections on one asyncio loop.

httpx spends more CPU per request than the server under test on a 2-core
machine, so the load itself would be what is measured. Requests here are
prebuilt bytes and a response is read by its Content-Length: a few
microseconds of client work each.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    # Wall-clock time (time.time()) each request was sent, by request index.
    sent: dict[int, float] = field(default_factory=dict)
    # Wall-clock time each request's answer was read, by request index.
    answered: dict[int, float] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return set(self.statuses) == {200}


def post_bytes(host: str, port: int, path: str, body: dict, key: str) -> bytes:
    """One POST with JSON body and HTTP Basic ``key:``, ready to write."""
    payload = orjson.dumps(body)
    auth = base64.b64encode(f"{key}:".encode()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    due: Sequence[float] | None,
) -> LoadResult:
    result = LoadResult(0.0)
    queue = list(enumerate(requests))
    queue.reverse()
    start = time.perf_counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                i, request = queue.pop()
                if due is not None:
                    wait = start + due[i] - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                t = time.perf_counter()
                result.sent[i] = time.time()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - t)
                result.answered[i] = time.time()
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result


def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    due: Sequence[float] | None = None,
) -> LoadResult:
    """Send every request over ``connections`` keep-alive connections.

    ``due``: seconds after the start at which request i may be sent (paced
    load); without it each connection sends its next request as soon as the
    previous one is answered.
    """
    return asyncio.run(_run(host, port, requests, connections, due))
