"""``segflow sync run | status | verify``: parse, call core's sync, print."""

from __future__ import annotations

from typing import Annotated, Any

import typer

sync_app = typer.Typer(
    help="Sync people, consent and segments to ESPs and CRMs ([\\[connectors]])."
)


@sync_app.command("run")
def run_command(
    ctx: typer.Context,
    connector: Annotated[
        str | None, typer.Option(help="Only this [\\[connectors]] entry (default: all that sync).")
    ] = None,
    segment: Annotated[
        list[str] | None, typer.Option(help="Only these of its segments (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be sent; send nothing.")] = False,
    reconcile: Annotated[
        bool,
        typer.Option(help="Read the remote state first and diff against it (after verify failed)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send what changed since the last run: new, changed and removed people,
    memberships and segment events; failed records are tried again next run."""
    from core import KeyRefused, UsageError, run_sync
    from plugins.sync.config import configured, connector_of, target_of

    cli = ctx.obj
    engine = cli.engine()
    reports = []
    for config in configured(cli.settings, connector):
        target = target_of(config)
        try:
            with cli.progress(f"syncing {target.name}") as advance:
                report = run_sync(
                    engine,
                    target,
                    connector_of(config),
                    segments=segment or None,
                    dry_run=dry_run,
                    reconcile=reconcile,
                    progress=_stepper(advance),
                )
        except KeyRefused:
            raise UsageError(
                f"connector {target.name!r}: {target.kind} refused the key in "
                f"{config.api_key_env} (HTTP 401); nothing more was sent"
            ) from None
        reports.append(report.model_dump())
    if as_json:
        cli.print_json(reports)
    else:
        _print_runs(cli.out, reports)
    if any(r["failed"] or r["retry"] for r in reports):
        raise typer.Exit(1)


def _stepper(advance: Any) -> Any:
    """progress(done, total) -> advance(new ones)."""
    seen = [0]

    def progress(done: int, _total: int) -> None:
        advance(done - seen[0])
        seen[0] = done

    return progress


def _reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "-"


def _print_runs(out: Any, reports: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not reports:
        out.print("no connector syncs: add [[segflow.connectors]] to segflow.toml", markup=False)
        return
    dry = reports[0]["dry_run"]
    table = Table(
        "connector", "people", "upserted", "added", "removed", "events", "unchanged",
        "failed", "to retry", "seconds",
        title="sync (dry run: nothing sent)" if dry else "sync",
    )  # fmt: skip
    for r in reports:
        table.add_row(
            r["connector"], *(f"{r[k]:,}" for k in ("people", "upserted", "added", "removed",
                                                    "events", "unchanged")),
            _reasons(r["failed"]), _reasons(r["retry"]), f"{r['seconds']}",
        )  # fmt: skip
    out.print(table)
    for r in reports:
        if r.get("erased"):
            out.print(f"{r['connector']}: {r['erased']:,} erasures confirmed", markup=False)


@sync_app.command("status")
def status_command(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False):
    """Per connector: people synced, failures by reason, the last run."""
    from rich.table import Table

    from core import sync_status

    cli = ctx.obj
    rows = sync_status(cli.engine())
    if as_json:
        cli.print_json(rows)
        return
    table = Table("connector", "synced", "failed", "to retry", "last run", title="sync status")
    for r in rows:
        last = r.get("last_run") or {}
        when = f"{last.get('status', '-')} {str(last.get('finished_at') or '')[:19]}"
        table.add_row(
            r["connector"], f"{r['ok']:,}", _reasons(r["failed"]), _reasons(r["retry"]), when
        )
    cli.out.print(table)


@sync_app.command("verify")
def verify_command(
    ctx: typer.Context,
    connector: Annotated[str, typer.Option(help="The [\\[connectors]] entry to check.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Read the remote state back and report every difference from segflow's
    memberships and consent; exit 1 when there is one."""
    from rich.table import Table

    from core import verify_sync
    from plugins.sync.config import configured, connector_of, target_of

    cli = ctx.obj
    (config,) = configured(cli.settings, connector)
    report = verify_sync(cli.engine(), target_of(config), connector_of(config))
    if as_json:
        cli.print_json(report.model_dump())
    else:
        differences = report.differences
        cli.out.print(
            f"{report.connector}: {report.people:,} people in segflow, {report.remote:,} remotely,"
            f" {len(differences):,} differences"
        )
        if differences:
            table = Table("email", "what", "segflow", "remote", title="differences (first 50)")
            for d in differences[:50]:
                table.add_row(d.email, d.what, str(d.segflow), str(d.remote))
            cli.out.print(table)
    if not report.ok:
        raise typer.Exit(1)
