"""Polling source: pull events from a paginated HTTP JSON endpoint.

Each page is ``{"events": [...canonical events...], "next_cursor": "..."}``
(field names configurable); the request carries ``?cursor=<last cursor>``.
A page's events are committed before its cursor is saved, so a crash or a
restart resumes at the first page not yet stored, and anything fetched twice is
a duplicate by message_id. Transient failures (connection errors, 429, 5xx)
are retried with exponential backoff, honouring Retry-After.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import EventSource, RawRecord, hookimpl
from core.config import PollConfig
from core.db.models import utcnow
from core.db.tables import SOURCE_STATES
from core.ingest import IngestReport, ingest


class PollError(RuntimeError):
    """The endpoint kept failing, or answered something that is not a page."""


@dataclass
class PollResult:
    pages: int = 0
    report: IngestReport = field(default_factory=IngestReport)
    cursor: Any = None


def load_cursor(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        state = conn.execute(
            sa.select(SOURCE_STATES.c.cursor).where(SOURCE_STATES.c.name == name)
        ).scalar()
    return (state or {}).get("cursor")


def save_cursor(engine: Engine, name: str, cursor: Any) -> None:
    with engine.begin() as conn:
        updated = conn.execute(
            SOURCE_STATES.update()
            .where(SOURCE_STATES.c.name == name)
            .values(cursor={"cursor": cursor}, updated_at=utcnow())
        ).rowcount
        if not updated:
            conn.execute(
                SOURCE_STATES.insert().values(
                    name=name, cursor={"cursor": cursor}, updated_at=utcnow()
                )
            )


def fetch(
    client: httpx.Client,
    config: PollConfig,
    cursor: Any,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    params = {config.cursor_param: cursor} if cursor is not None else {}
    delay = 0.5
    for attempt in range(1, config.max_attempts + 1):
        try:
            response = client.get(config.url, params=params, headers=config.headers)
        except httpx.TransportError as exc:
            problem, wait = f"{type(exc).__name__}: {exc}", delay
        else:
            if response.status_code == 200:
                try:
                    page = response.json()
                except ValueError:
                    raise PollError(f"{config.name}: page is not JSON") from None
                if not isinstance(page, dict) or not isinstance(page.get(config.items_field), list):
                    raise PollError(f"{config.name}: page has no list {config.items_field!r}")
                return page
            if response.status_code not in (429, 500, 502, 503, 504):
                raise PollError(f"{config.name}: HTTP {response.status_code} from {config.url}")
            problem = f"HTTP {response.status_code}"
            retry_after = response.headers.get("retry-after", "")
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else delay
        if attempt == config.max_attempts:
            raise PollError(f"{config.name}: gave up after {attempt} attempts ({problem})")
        sleep(wait)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def poll_once(
    engine: Engine,
    config: PollConfig,
    *,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_pages: int = 10_000,
) -> PollResult:
    """Fetch pages from the stored cursor until the endpoint has nothing new."""
    result = PollResult(cursor=load_cursor(engine, config.name))
    own = client is None
    client = client or httpx.Client(timeout=30.0, transport=httpx.HTTPTransport(retries=2))
    try:
        while result.pages < max_pages:
            page = fetch(client, config, result.cursor, sleep)
            items = page[config.items_field]
            records = [
                RawRecord(
                    f"{config.name} page {result.pages + 1} item {i + 1}",
                    item if isinstance(item, dict) else None,
                    None if isinstance(item, dict) else "not an object",
                )
                for i, item in enumerate(items)
            ]
            result.report.add(ingest(engine, records, source=f"poll:{config.name}"))
            result.pages += 1
            next_cursor = page.get(config.next_field)
            if next_cursor is None or next_cursor == result.cursor or not items:
                break
            # Saved only after the page's events are committed: restarts resume here.
            save_cursor(engine, config.name, next_cursor)
            result.cursor = next_cursor
    finally:
        if own:
            client.close()
    return result


@hookimpl
def register_event_sources(register) -> None:
    register(EventSource("polling", "Pull paginated JSON from HTTP endpoints ([[segflow.polls]])"))
