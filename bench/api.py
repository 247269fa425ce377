"""The ingestion API under load from a local load generator.

A real server (``segflow serve``, uvicorn, one process) on 127.0.0.1 with a
fresh SQLite database; the load generator is threads with httpx clients in
this process. Baseline in the same run: the same events through the bulk
import path (``core.events.ingest``) in-process.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import common
from bench.common import Result, ratio

TITLE = "Ingestion API under load"
SEGMENT = "name: fresh_carts\nrule: {event: add_to_cart, within: 1h}\n"


def describe(quick: bool) -> str:
    n = sizes(quick)
    return "\n".join(
        [
            "- server: `segflow serve` (uvicorn, 1 process) on 127.0.0.1, fresh SQLite, real-time "
            "segment evaluation on; load: httpx clients on 4 threads of this process "
            "(2 cores shared)",
            f"- batch: {n['batches']} requests of 100 Segment track calls to /v1/batch; "
            f"track: {n['tracks']} single /v1/track requests; latency: add_to_cart calls paced at "
            f"200 requests/s for {n['paced']} requests, each answered after its segment change "
            "is recorded (the real-time hook runs before the 200)",
            "- baseline: the same batch events through `ingest()` in-process "
            "(the bulk import path)",
            "- targets: /v1/batch >= 10,000 events/s; /v1/track >= 1,500 requests/s; "
            "request-to-segment-change p99 < 50 ms at 200 requests/s",
        ]
    )


def sizes(quick: bool) -> dict[str, int]:
    return {
        "batches": 40 if quick else 200,
        "tracks": 400 if quick else 3000,
        "paced": 200 if quick else 1000,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(i: int, kind: str = "Product Viewed") -> dict:
    return {
        "type": "track",
        "userId": f"u{i % 5000}",
        "event": kind,
        "messageId": f"{kind}-{i}",
        "properties": {"product_id": f"P{i % 200}", "price": 10.0},
    }


def run_threads(work: list, fn, threads: int = 4) -> list[float]:
    """Run fn(item) over work on threads; per-item latencies in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [work[i::threads] for i in range(threads)]

    def worker(items):
        local = []
        for item in items:
            t = time.perf_counter()
            fn(item)
            local.append(time.perf_counter() - t)
        with lock:
            latencies.extend(local)

    ts = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return latencies


def run(quick: bool) -> list[Result]:
    from core.db import open_db
    from core.events import ingest
    from core.keys import create_key
    from core.segments.store import load_segment_files, run_segments

    n = sizes(quick)
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-api-"))
    db = f"sqlite:///{work}/api.db"
    engine = open_db(db)
    _, key = create_key(engine, "bench", ["events:write"])
    (work / "segments").mkdir()
    (work / "segments" / "s.yaml").write_text(SEGMENT)
    from datetime import UTC, datetime

    run_segments(engine, datetime.now(UTC), definitions=load_segment_files(work / "segments"))
    (work / "segflow.toml").write_text(
        f'[segflow]\ndatabase_url = "{db}"\nsecret_key = "bench-secret-key-0123456789"\n'
        "api_rate_limit = 1000000\napi_burst = 1000000\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "serve", "--port", str(port)],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(common.ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/health").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("segflow serve did not start") from None
                time.sleep(0.1)
        clients = threading.local()

        def client() -> httpx.Client:
            if not hasattr(clients, "c"):
                clients.c = httpx.Client(base_url=base, auth=(key, ""), timeout=30)
            return clients.c

        batches = [[call(b * 100 + i) for i in range(100)] for b in range(n["batches"])]

        def post_batch(batch):
            client().post("/v1/batch", json={"batch": batch}).raise_for_status()

        t0 = time.perf_counter()
        run_threads(batches, post_batch)
        batch_s = time.perf_counter() - t0

        tracks = [
            {k: v for k, v in call(10**7 + i).items() if k != "type"} for i in range(n["tracks"])
        ]
        t0 = time.perf_counter()
        run_threads(tracks, lambda body: client().post("/v1/track", json=body).raise_for_status())
        track_s = time.perf_counter() - t0

        paced = [
            {k: v for k, v in call(2 * 10**7 + i, "Product Added").items() if k != "type"}
            | {"userId": f"carter{i}"}
            for i in range(n["paced"])
        ]
        start = time.perf_counter()

        def paced_post(item):
            body, due = item
            wait = start + due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            client().post("/v1/track", json=body).raise_for_status()

        latencies = run_threads([(b, i / 200.0) for i, b in enumerate(paced)], paced_post)
        p99 = statistics.quantiles(latencies, n=100)[98]
        p50 = statistics.median(latencies)
    finally:
        server.terminate()
        server.wait(timeout=30)

    base_engine = open_db(f"sqlite:///{work}/baseline.db")
    from plugins.sources.segment_spec import to_event

    events = [to_event("track", c, "x") for b in batches for c in b]
    t0 = time.perf_counter()
    ingest(base_engine, events, notify=False)
    baseline_s = time.perf_counter() - t0
    total = n["batches"] * 100

    baseline = Result("bulk import path, same events (baseline)", total, baseline_s, 1.0)
    batch = Result("/v1/batch, 100 events a request", total, batch_s, ratio(batch_s, baseline_s))
    batch.check(min_rate=10_000)
    track = Result(
        "/v1/track, one event a request",
        n["tracks"],
        track_s,
        ratio(track_s * total / n["tracks"], baseline_s),
    )
    track.check(min_rate=1_500)
    track.notes.append(f"{n['tracks'] / track_s:,.0f} requests/s")
    latency = Result(
        "request to recorded segment change at 200 requests/s", n["paced"], sum(latencies)
    )
    latency.target = "p99 < 50 ms"
    latency.notes.append(f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    latency.passed = p99 < 0.050
    if not latency.passed:
        latency.failures.append(f"p99 {p99 * 1000:.1f} ms")
    return [baseline, batch, track, latency]
