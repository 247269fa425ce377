"""``segflow init`` and ``segflow db``: the database and its schema."""

from __future__ import annotations

from typing import Annotated

import typer

from core.cli.context import Group, obj, out

app = typer.Typer(help="Database schema.", no_args_is_help=True, cls=Group)


def init(
    ctx: typer.Context,
    write_config: Annotated[
        bool, typer.Option("--config/--no-config", help="Write segflow.toml here.")
    ] = True,
) -> None:
    """Create the database (schema at the latest version) and a segflow.toml."""
    from core.config import config_path, init_project

    path = config_path()
    url, wrote = init_project(obj(ctx).settings.database_url, path if write_config else None)
    if wrote:
        out.print(f"wrote {path}")
    out.print(f"database ready: {url}")


@app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply schema migrations up to the latest."""
    from core.db import upgrade_schema

    before, after = upgrade_schema(obj(ctx).settings.database_url)
    if before == after:
        out.print(f"schema already at {after}")
    else:
        out.print(f"schema upgraded {before or '(empty)'} -> {after}")


@app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the schema revision of the database and of the code."""
    from core.db import schema_revisions

    database, code = schema_revisions(obj(ctx).settings.database_url)
    out.print(f"database: {database or '(empty)'}")
    out.print(f"code:     {code}")
