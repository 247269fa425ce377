"""``segflow profile``: look at one person."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import Group, obj, out

app = typer.Typer(help="Look at profiles.", no_args_is_help=True, cls=Group)


@app.command("show")
def profile_show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")] = False,
    recent: Annotated[int, typer.Option(help="How many recent events.")] = 20,
) -> None:
    """A profile: attributes, identities, event counts and recent events."""
    from core.profiles import profile_summary

    summary = profile_summary(obj(ctx).engine(), user_id, recent=recent)
    if as_json:
        obj(ctx).print_json(summary)
        return
    who = summary["user_id"] or f"anonymous profile #{summary['profile_id']}"
    out.print(f"[bold]{who}[/bold]  {summary['email'] or ''}")
    out.print(f"first seen {summary['first_seen']}, last seen {summary['last_seen']}")
    attrs = Table("attribute", "value", title="attributes")
    for k, v in summary["attributes"].items():
        attrs.add_row(k, str(v))
    ids = Table("kind", "value", title="identities")
    for i in summary["identities"]:
        ids.add_row(i["kind"], i["value"])
    counts = Table("type", "events", title="events by type")
    for k, v in summary["event_counts"].items():
        counts.add_row(k, f"{v:,}")
    recent_t = Table("ts", "type", "product", "value", "url", title="recent events")
    for e in summary["recent_events"]:
        recent_t.add_row(
            e["ts"], e["type"], e.get("product_id", ""), str(e.get("value", "")), e.get("url", "")
        )
    for t in (attrs, ids, counts, recent_t):
        out.print(t)
