"""``segflow audit``: who did what, and when (admin actions, newest first)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from core.cli.context import Json, obj, out
from core.types import UsageError


def _since(value: str | None) -> datetime | None:
    """``--since 24h`` (a duration back from now) or an ISO 8601 time."""
    if value is None:
        return None
    from core.segments.language import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {value!r}: give a duration (30m, 24h, 7d) or an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        raise UsageError(f"--since {value!r}: give a UTC offset (e.g. 2026-11-01T00:00:00Z)")
    return parsed.astimezone(UTC)


def audit_cmd(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="Only records since: 24h, 7d or ISO 8601.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor (a trailing * matches a prefix).")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            "--action", help="Only this action, e.g. key.create or key.* (any kind of record)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    as_json: Json = False,
) -> None:
    """Admin actions, newest first: who (OS user, SEGFLOW_ACTOR, key:NAME,
    prefect:RUN), what, on what, when (docs/audit.md)."""
    from core.audit import list_records

    records = list_records(
        obj(ctx).engine(), since=_since(since), actor=actor, action=action, limit=limit
    )
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json") for r in records]))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("when (UTC)", "actor", "action", "target", "details", title="audit")
    table.columns[4].overflow = "fold"
    for r in records:
        details = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in r.details.items())
        table.add_row(
            r.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            escape(r.actor),
            r.action,
            escape(r.target or ""),
            escape(details),
        )
    out.print(table)
