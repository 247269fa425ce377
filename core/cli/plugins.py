"""``segflow plugins``: what is loaded."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from core.cli.context import CommandContext, load_plugin_commands, out


def plugins(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List loaded plugins and the hooks each implements."""
    from core.plugins import plugin_report

    # Plugins' commands are added on demand; here, so a clash between two shows.
    load_plugin_commands(ctx)
    report = plugin_report()
    if as_json:
        CommandContext.print_json(report["plugins"])
        return
    table = Table("plugin", "version", "hooks")
    for row in report["plugins"]:
        version = row["version"] or ("built-in" if row["builtin"] else "")
        table.add_row(row["name"], version, ", ".join(row["hooks"]))
    out.print(table)
    if report["event_sources"]:
        st = Table("event source", "reads", "description")
        for s in report["event_sources"]:
            # Text, not markup: descriptions name sections like [[sources.poll]].
            st.add_row(s["name"], " ".join(s["suffixes"]), Text(s["description"]))
        out.print(st)
    if report["settings"]:
        st = Table("settings section", "model")
        for section, model in report["settings"].items():
            st.add_row(Text(f"[{section}]"), Text(model))
        out.print(st)
