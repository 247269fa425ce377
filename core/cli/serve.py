"""``segflow serve`` and ``segflow dashboard``: the long-running shells."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli.context import obj, out


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log every request (off by default: at thousands of events a second "
            "the log costs more than storing them; errors are logged either way).",
        ),
    ] = False,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            "--ssl-certfile",
            help="Serve HTTPS with this PEM certificate (its chain after it); needs --ssl-keyfile.",
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option("--ssl-keyfile", help="The certificate's PEM private key, unencrypted."),
    ] = None,
) -> None:
    """Run the ingestion API (Segment-compatible /v1, tracking pixel and links)."""
    from core.api import serve as run_server
    from core.tls import check_server_files

    check_server_files(ssl_certfile, ssl_keyfile)  # before the database is opened
    cli = obj(ctx)
    run_server(
        cli.engine(),
        cli.settings,
        host,
        port,
        access_log=access_log,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def dashboard(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(help="Which notebook in notebooks/: dashboard, segment_lab, campaigns, ..."),
    ] = "dashboard",
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 2718,
    headless: Annotated[
        bool, typer.Option("--headless/--no-headless", help="Do not open a browser.")
    ] = False,
    export_html: Annotated[
        Path | None,
        typer.Option("--export-html", help="Write a static HTML report to PATH instead."),
    ] = None,
) -> None:
    """Serve an analyst dashboard (a marimo app in notebooks/) on the database."""
    from core.notebooks import notebook_path, run_notebook

    cli = obj(ctx)
    notebook = notebook_path(name)  # an unknown name: one line listing the names, exit 2
    cli.engine()  # fail here, in one line, if the database cannot be opened
    status = run_notebook(
        notebook.name,
        cli.settings.database_url,
        host=host,
        port=port,
        headless=headless,
        export_html=export_html,
    )
    if status:
        raise typer.Exit(status)
    if export_html is not None:
        out.print(f"wrote {export_html}")
