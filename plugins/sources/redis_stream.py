"""Redis Streams source: consume events with a consumer group.

Entries carry the canonical event as JSON in one field (``event`` by
default). Entries are acknowledged only after their events are committed, so
a crash between reading and committing loses nothing: the unacknowledged
entries are read again (pending list first) and anything stored twice is a
duplicate by message_id. Entries that are not valid events are acknowledged
and copied to ``<stream>:rejected`` with the reason, so they never block the
stream and are never silently lost.

Streams are configured in segflow.toml, one ``[[sources.stream]]`` table each
(``StreamConfig``); ``segflow consume NAME`` consumes one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from pydantic import BaseModel, ConfigDict, Field

from core import (
    EventSource,
    IngestReport,
    RawRecord,
    events_ingested_hook,
    hookimpl,
)

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

# redis is imported where it is used: every command loads this plugin (for `consume`).
SECTION = "sources.stream"


class StreamConfig(BaseModel):
    """A Redis Stream to consume events from (``segflow consume NAME``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str = "redis://127.0.0.1:6379/0"
    stream: str
    group: str = "segflow"
    consumer: str = "segflow-1"
    # The entry field holding the event as JSON.
    field: str = "event"
    batch: int = Field(default=500, ge=1)
    block_ms: int = Field(default=5000, ge=0)


@dataclass
class ConsumeResult:
    entries: int = 0
    report: IngestReport = field(default_factory=IngestReport)


def ensure_group(client: redis.Redis, config: StreamConfig) -> None:
    import redis

    try:
        client.xgroup_create(config.stream, config.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _records(config: StreamConfig, entries) -> tuple[list[RawRecord], dict[str, bytes]]:
    records, raw_by_id = [], {}
    for entry_id, fields in entries:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        payload = fields.get(config.field.encode()) or fields.get(config.field)
        raw_by_id[eid] = payload
        where = f"{config.stream} {eid}"
        try:
            data = orjson.loads(payload) if payload is not None else None
        except orjson.JSONDecodeError:
            records.append(RawRecord(where, None, "entry is not JSON"))
            continue
        if not isinstance(data, dict):
            records.append(RawRecord(where, None, f"field {config.field!r} is not a JSON object"))
            continue
        records.append(RawRecord(where, data))
    return records, raw_by_id


def consume_once(
    engine: Engine,
    config: StreamConfig,
    client: redis.Redis | None = None,
    block_ms: int | None = None,
) -> ConsumeResult:
    """Read what is pending for this consumer, then new entries; store (the
    plugins' ``on_events_ingested`` sees them); acknowledge."""
    import redis

    from core import ingest  # here: every command that lists commands loads this plugin

    on_stored = events_ingested_hook(engine)

    client = client or redis.Redis.from_url(config.url)
    ensure_group(client, config)
    result = ConsumeResult()
    # "0" re-reads entries delivered to us before but never acknowledged (a crash).
    wait = config.block_ms if block_ms is None else block_ms
    # Redis reads BLOCK 0 as "forever"; 0 here means do not wait at all.
    for start, block in (("0", None), (">", wait or None)):
        while True:
            answer = client.xreadgroup(
                config.group,
                config.consumer,
                {config.stream: start},
                count=config.batch,
                block=block,
            )
            entries = answer[0][1] if answer else []
            if not entries:
                break
            records, raw_by_id = _records(config, entries)
            report = ingest(engine, records, source=f"stream:{config.name}", on_stored=on_stored)
            for rejection in report.rejected:
                eid = rejection.location.rsplit(" ", 1)[1]
                client.xadd(
                    f"{config.stream}:rejected",
                    {
                        "id": eid,
                        "reason": rejection.reason,
                        config.field: raw_by_id.get(eid) or b"",
                    },
                )
            # Committed: only now do the entries leave the pending list.
            client.xack(config.stream, config.group, *raw_by_id)
            result.entries += len(entries)
            result.report.add(report)
            if start == ">":
                block = None  # drain what is there, then return
    return result


def run(
    engine: Engine,
    config: StreamConfig,
    *,
    once: bool = False,
    on_batch: Callable[[ConsumeResult], None] = lambda result: None,
) -> ConsumeResult:
    """Consume until stopped (each read blocks up to ``block_ms``), or drain what
    is there and return when ``once``. ``on_batch`` sees every read that brought
    entries (and the single pass of ``once``)."""
    import redis

    client = redis.Redis.from_url(config.url)
    while True:
        result = consume_once(engine, config, client, block_ms=0 if once else None)
        if result.entries or once:
            on_batch(result)
        if once:
            return result


def consume_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"A [\\[{SECTION}]] entry of segflow.toml.")],
    once: Annotated[bool, typer.Option("--once", help="Drain what is there, then exit.")] = False,
) -> None:
    """Consume a Redis Stream with a consumer group; acknowledge after committing."""
    cli = ctx.obj
    config = cli.settings.plugin_entry(SECTION, name, "stream")

    def report(result: ConsumeResult) -> None:
        r = result.report
        cli.out.print(
            f"{name}: {result.entries:,} entries, {r.accepted:,} new events, "
            f"{r.duplicates:,} duplicates, {len(r.rejected):,} rejected"
        )

    run(cli.engine(), config, once=once, on_batch=report)


@hookimpl
def register_settings(register) -> None:
    register(SECTION, list[StreamConfig])


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("consume")(consume_command)
    cli.add_command(typer.main.get_command(commands), "consume")


@hookimpl
def register_event_sources(register) -> None:
    register(EventSource("redis_stream", f"Redis Streams with a consumer group ([[{SECTION}]])"))
