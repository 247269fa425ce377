"""``segflow keys``: API keys with scopes."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import Group, err, obj, out
from core.types import UsageError

app = typer.Typer(help="API keys with scopes.", no_args_is_help=True, cls=Group)


@app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A name to tell the key by.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: events:write, profiles:read, admin.")
    ],
) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from core.keys import create_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    try:
        info, key = create_key(obj(ctx).engine(), name, wanted)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    err.print(
        f"created key {info.name!r} ({info.prefix}) with scopes {', '.join(info.scopes)}; "
        "store it now, it is not shown again:"
    )
    print(key)


@app.command("list")
def keys_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Keys by name, prefix, scopes and state (never the keys themselves)."""
    from core.keys import list_keys

    rows = [k.as_dict() for k in list_keys(obj(ctx).engine())]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "prefix", "scopes", "created", "last used", "state")
    for r in rows:
        table.add_row(
            r["name"],
            r["prefix"],
            ", ".join(r["scopes"]),
            r["created_at"][:19],
            (r["last_used_at"] or "")[:19],
            "revoked" if r["revoked"] else "active",
        )
    out.print(table)


@app.command("revoke")
def keys_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a key: it stops working at once."""
    from core.keys import revoke_key

    info = revoke_key(obj(ctx).engine(), name)
    out.print(f"revoked {info.name!r} ({info.prefix})")


@app.command("rotate")
def keys_rotate(ctx: typer.Context, name: str) -> None:
    """Give a key a new secret (same name and scopes); the old one stops working
    at once. The new key is printed once, alone on the last line."""
    from core.keys import rotate_key

    info, key = rotate_key(obj(ctx).engine(), name)
    err.print(
        f"rotated key {info.name!r} (now {info.prefix}); store it now, it is not shown again:"
    )
    print(key)
