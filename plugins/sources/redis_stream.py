"""Redis Streams source: consume events with a consumer group.

Entries carry the canonical event as JSON in one field (``event`` by
default). Entries are acknowledged only after their events are committed, so
a crash between reading and committing loses nothing: the unacknowledged
entries are read again (pending list first) and anything stored twice is a
duplicate by message_id. Entries that are not valid events are acknowledged
and copied to ``<stream>:rejected`` with the reason, so they never block the
stream and are never silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import redis
from sqlalchemy.engine import Engine

from core import EventSource, RawRecord, hookimpl
from core.config import StreamConfig
from core.ingest import IngestReport, ingest


@dataclass
class ConsumeResult:
    entries: int = 0
    report: IngestReport = field(default_factory=IngestReport)


def ensure_group(client: redis.Redis, config: StreamConfig) -> None:
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
    """Read what is pending for this consumer, then new entries; store; acknowledge."""
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
            report = ingest(engine, records, source=f"stream:{config.name}")
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


@hookimpl
def register_event_sources(register) -> None:
    register(
        EventSource("redis_stream", "Redis Streams with a consumer group ([[segflow.streams]])")
    )
