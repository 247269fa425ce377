"""``segflow send TEMPLATE --segment NAME``: a personalised email to every member
of a segment, through a connector, once per person and campaign."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Annotated

import typer

from core.cli.context import Json, err, obj, out
from core.types import CommandError, UsageError


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr whose total is known only once the segment is read."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def send_cmd(
    ctx: typer.Context,
    template: Annotated[str, typer.Argument(help="The template to render (templates/).")],
    segment: Annotated[str, typer.Option("--segment", help="Send to this segment's members.")],
    via: Annotated[
        str, typer.Option("--via", help="Connector: outbox (files, the default), smtp, ...")
    ] = "outbox",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render and check; record and send nothing.")
    ] = False,
    campaign: Annotated[
        str | None,
        typer.Option(
            "--campaign", help="Name of this send (default today's date): a name sends once."
        ),
    ] = None,
    retry_unknown: Annotated[
        bool,
        typer.Option(
            "--retry-unknown",
            help="Send again messages a killed run may or may not have delivered.",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Send TEMPLATE to every member of a segment, once per person and campaign.

    Marketing email goes only to people with email consent and no unsubscribe
    since; the others are recorded as skipped. Exit status 1 when a message
    failed, was deferred or may not have gone out.
    """
    import core
    from core.personalize.delivery import send
    from core.plugins import esp_connectors

    render_email = getattr(core, "render_email", None)
    if render_email is None:
        raise CommandError("this installation cannot render email (no core.render_email)")
    connectors = esp_connectors()
    if via not in connectors:
        raise UsageError(f"--via {via!r}: no such connector ({', '.join(sorted(connectors))})")
    cli = obj(ctx)

    def render(conn, name: str, profile_id: int, key: str):
        return render_email(conn, name, profile_id, message_key=key, settings=cli.settings)

    with _progress(f"{'checking' if dry_run else 'sending'} {template}") as on_progress:
        report = send(
            cli.engine(),
            template,
            segment,
            via=connectors[via],
            settings=cli.settings,
            render=render,
            dry_run=dry_run,
            campaign=campaign,
            retry_unknown=retry_unknown,
            on_progress=on_progress,
        )
    if as_json:
        out.print_json(json.dumps(report.model_dump()))
    else:
        _summary(report)
    if report.failed or report.deferred or report.unknown:
        raise typer.Exit(1)


def _summary(report) -> None:
    from rich.table import Table

    verb = "would send" if report.dry_run else "sent"
    title = (
        f"{report.template} to {report.segment} ({report.members:,} members), "
        f"campaign {report.campaign}, via {report.via}"
    )
    table = Table("outcome", "messages", "reason", title=title)
    table.add_row(verb, f"{report.sent:,}", "")
    if report.recovered:
        table.add_row("", f"{report.recovered:,}", "of them confirmed after an interrupted run")
    for label, group in (
        ("skipped", report.skipped),
        ("deferred", report.deferred),
        ("failed", report.failed),
        ("done before", report.earlier),
    ):
        for reason, n in sorted(group.items(), key=lambda item: -item[1]):
            table.add_row(label, f"{n:,}", reason)
    if report.unknown:
        table.add_row("unknown", f"{len(report.unknown):,}", "may have gone out: --retry-unknown")
    out.print(table)
