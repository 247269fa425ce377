"""Polling source: pull events from a paginated HTTP JSON endpoint.

Each page is ``{"events": [...canonical events...], "next_cursor": "..."}``
(field names configurable); the request carries ``?cursor=<last cursor>``.
A page's events are committed before its cursor is saved, so a crash or a
restart resumes at the first page not yet stored, and anything fetched twice is
a duplicate by message_id. Transient failures (connection errors, 429, 5xx)
are retried with exponential backoff, honouring Retry-After.

Endpoints are configured in segflow.toml, one ``[[sources.poll]]`` table each
(``PollConfig``); ``segflow poll NAME`` runs one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict, Field

from core import (
    CommandError,
    EventSource,
    IngestReport,
    RawRecord,
    events_ingested_hook,
    hookimpl,
    untrusted,
)

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.engine import Engine

# httpx is imported where it is used: every command loads this plugin (for `poll`).
SECTION = "sources.poll"


class PollConfig(BaseModel):
    """A paginated HTTP JSON endpoint to pull events from (``segflow poll NAME``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str
    interval_seconds: float = Field(default=60.0, gt=0)
    headers: dict[str, str] = {}
    cursor_param: str = "cursor"
    items_field: str = "events"
    next_field: str = "next_cursor"
    max_attempts: int = Field(default=5, ge=1)


class PollError(RuntimeError):
    """The endpoint kept failing, or answered something that is not a page."""


@dataclass
class PollResult:
    pages: int = 0
    report: IngestReport = field(default_factory=IngestReport)
    cursor: Any = None


def fetch(
    client: httpx.Client,
    config: PollConfig,
    cursor: Any,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    import httpx

    params = {config.cursor_param: cursor} if cursor is not None else {}
    delay = 0.5
    for attempt in range(1, config.max_attempts + 1):
        try:
            response = client.get(config.url, params=params, headers=config.headers)
        except httpx.TransportError as exc:
            if refused := untrusted(exc):
                # Retrying cannot make the certificate trusted.
                raise PollError(f"{config.name}: {config.url}: {refused}") from None
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
    """Fetch pages from the stored cursor until the endpoint has nothing new;
    each page's events go to the plugins' ``on_events_ingested`` (real time)."""
    # Imported here: every command that lists commands loads this plugin.
    from core import client_context, ingest, load_cursor, save_cursor

    result = PollResult(cursor=load_cursor(engine, config.name))
    on_stored = events_ingested_hook(engine)
    own = client is None
    import httpx

    if client is None:
        transport = httpx.HTTPTransport(retries=2, verify=client_context())
        client = httpx.Client(timeout=30.0, transport=transport)
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
            result.report.add(
                ingest(engine, records, source=f"poll:{config.name}", on_stored=on_stored)
            )
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


def run(
    engine: Engine,
    config: PollConfig,
    *,
    once: bool = False,
    on_pass: Callable[[PollResult], None] = lambda result: None,
    on_error: Callable[[PollError], None] = lambda exc: None,
    sleep: Callable[[float], None] = time.sleep,
) -> PollResult:
    """Poll every ``interval_seconds`` until stopped, or one pass when ``once``.

    A failing pass is reported to ``on_error`` and tried again after the
    interval; with ``once`` it is a CommandError instead. Returns the last pass.
    """
    while True:
        try:
            result = poll_once(engine, config, sleep=sleep)
        except PollError as exc:
            if once:
                raise CommandError(str(exc)) from None
            on_error(exc)
        else:
            on_pass(result)
            if once:
                return result
        sleep(config.interval_seconds)


def poll_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"A [\\[{SECTION}]] entry of segflow.toml.")],
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
) -> None:
    """Pull events from a paginated HTTP endpoint every interval, resuming at its cursor."""
    cli = ctx.obj
    config = cli.settings.plugin_entry(SECTION, name, "poll")

    def passed(result: PollResult) -> None:
        r = result.report
        cli.out.print(
            f"{name}: {result.pages} page(s), {r.accepted:,} new events, "
            f"{r.duplicates:,} duplicates, {len(r.rejected):,} rejected"
        )

    def failed(exc: PollError) -> None:
        cli.err.print(
            f"poll {name}: {exc}; trying again in {config.interval_seconds:g} s", markup=False
        )

    result = run(cli.engine(), config, once=once, on_pass=passed, on_error=failed)
    if result.report.rejected:
        raise typer.Exit(1)


@hookimpl
def register_settings(register) -> None:
    register(SECTION, list[PollConfig])


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("poll")(poll_command)
    cli.add_command(typer.main.get_command(commands), "poll")


@hookimpl
def register_event_sources(register) -> None:
    register(EventSource("polling", f"Pull paginated JSON from HTTP endpoints ([[{SECTION}]])"))
