"""``segflow render``: preview a person's email in a browser (tracking off)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli.context import AsOf, err, obj, out, parse_as_of


def render(
    ctx: typer.Context,
    template: Annotated[str, typer.Argument(help="Template name, e.g. cart_abandonment.")],
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file to write (default previews/TEMPLATE-PROFILE.html)."),
    ] = None,
    as_of: AsOf = None,
) -> None:
    """Render TEMPLATE for a person as a preview: no tracking, nothing recorded."""
    from core.personalize.preview import write_preview

    cli = obj(ctx)
    preview = write_preview(
        cli.engine(),
        template,
        user_id,
        settings=cli.settings,
        out=out_file,
        as_of=parse_as_of(as_of) if as_of else None,
    )
    email = preview.email
    out.print(f"subject: {email.subject}", markup=False, highlight=False)
    out.print(
        f"wrote {preview.html_path} ({len(email.html.encode()) / 1024:.1f} KB) and "
        f"{preview.text_path}; open the HTML in a browser",
        markup=False,
        highlight=False,
    )
    if preview.warning:
        err.print(f"warning: {preview.warning}", markup=False, highlight=False)
