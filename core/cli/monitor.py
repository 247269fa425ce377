"""``segflow monitor``: the open alerts (exit 1 when any), and ``check`` to run
the monitoring checks now (what the daily monitor flow does)."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cli.context import Group, Json, err, obj, out
from core.types import UsageError

app = typer.Typer(
    help="Monitoring: open alerts (exit status 1 when any); `check` runs the checks.",
    invoke_without_command=True,
    cls=Group,
)


@app.callback()
def monitor(ctx: typer.Context, as_json: Json = False) -> None:
    """Print the open alerts; exit status 1 when there are any, 0 otherwise."""
    if ctx.invoked_subcommand is not None:
        return
    from core.monitoring.alerts import open_alerts

    _print_alerts(open_alerts(obj(ctx).engine()), as_json)


@app.command("check")
def check(
    ctx: typer.Context,
    day: Annotated[
        str | None, typer.Option("--day", help="The UTC day to check (YYYY-MM-DD); default today.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Run every monitoring check now, store the alerts, then print the open ones."""
    from core.monitoring.alerts import open_alerts, run_checks

    context = obj(ctx)
    engine = context.engine()
    report = run_checks(engine, context.settings, _day(day))
    for name, reason in sorted(report.errors.items()):
        err.print(f"error: check {name} failed: {reason}", markup=False, highlight=False)
    alerts = open_alerts(engine)
    if as_json:
        out.print_json(
            json.dumps({"run": report.as_dict(), "open": _jsonable(alerts)}, default=str)
        )
        raise typer.Exit(1 if alerts or report.errors else 0)
    opened = sum(len(v) for v in report.opened.values())
    resolved = sum(len(v) for v in report.resolved.values())
    out.print(
        f"{len(report.checks)} checks on {report.day.isoformat()}: "
        f"{opened} opened, {resolved} resolved"
    )
    _print_alerts(alerts, False, failed=bool(report.errors))


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--day {value!r}: not a date (YYYY-MM-DD)") from None


def _jsonable(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in a.items()} for a in alerts
    ]


def _print_alerts(alerts: list[dict[str, Any]], as_json: bool, failed: bool = False) -> None:
    if as_json:
        out.print_json(json.dumps(_jsonable(alerts), default=str))
    elif not alerts:
        out.print("no open alerts")
    else:
        table = Table(
            "severity", "check", "subject", "since", "day", "message", title="open alerts"
        )
        for a in alerts:
            style = "bold red" if a["severity"] == "critical" else "yellow"
            table.add_row(
                f"[{style}]{a['severity']}[/]",
                a["check"],
                a["subject"],
                a["first_seen"].strftime("%Y-%m-%d %H:%M"),
                a["day"].isoformat(),
                a["message"],
            )
        out.print(table)
    if alerts or failed:
        raise typer.Exit(1)
