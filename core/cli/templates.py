"""``segflow templates``: list the email templates, export their segment-aware blocks."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import Group, obj, out


class Esp(StrEnum):
    mailchimp = "mailchimp"
    klaviyo = "klaviyo"


app = typer.Typer(help="Email templates (Jinja2, in templates/).", no_args_is_help=True, cls=Group)


@app.command("list")
def templates_list(ctx: typer.Context) -> None:
    """The email templates: name, version, whether marketing, description."""
    from core.personalize.render import templates_for

    templates = templates_for(obj(ctx).settings)
    table = Table("template", "version", "marketing", "description")
    for name in templates.names():
        t = templates.get(name)
        table.add_row(name, t.version, "yes" if t.marketing else "no", t.description)
    out.print(table)


@app.command("export")
def templates_export(
    ctx: typer.Context,
    template: Annotated[str, typer.Argument(help="Template name, e.g. cart_abandonment.")],
    to: Annotated[Esp, typer.Option("--to", help="The ESP's template language.")],
    block: Annotated[
        str | None, typer.Option("--block", help="Only this block (default: all).")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write to FILE instead of printing.")
    ] = None,
) -> None:
    """The template's segment-aware blocks as Mailchimp merge tags or Klaviyo tags."""
    from core.personalize.export import export_template

    exported = export_template(template, to.value, settings=obj(ctx).settings, block=block)
    if out_file is None:
        typer.echo(exported.text, nl=False)
        return
    out_file.write_text(exported.text, encoding="utf-8")
    out.print(f"wrote {out_file}", markup=False, highlight=False)
