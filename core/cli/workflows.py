"""``segflow workflows``: validate, list, tick, status, simulate and history."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cli.context import AsOf, Group, Json, obj, out, parse_as_of

app = typer.Typer(help="Automated workflows.", no_args_is_help=True, cls=Group)

Directory = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Folder of workflow YAML files (saved as new versions when changed)."
    ),
]


def _files(directory: Path | None) -> dict[str, Any] | None:
    from core.automation import load_workflow_files

    return load_workflow_files(directory) if directory is not None else None


@app.command("validate")
def validate(
    directory: Annotated[Path, typer.Option("--dir", help="Folder of workflow YAML files.")] = Path(
        "workflows"
    ),
) -> None:
    """Check every workflow in DIR; the first error names file, line and path."""
    workflows = _files(directory) or {}
    for name, wf in sorted(workflows.items()):
        out.print(f"ok  {name}: {len(wf.nodes)} steps, trigger {wf.trigger.name}")
    out.print(f"{len(workflows)} workflows valid")


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: Json = False) -> None:
    """Stored workflows: latest version, trigger, runs by status."""
    from core.automation.report import workflow_list

    rows = workflow_list(obj(ctx).engine())
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("workflow", "version", "trigger", "active", "completed", "exited", "held out")
    for r in rows:
        s = r["runs"]
        table.add_row(
            r["name"],
            str(r["version"]),
            r["trigger"],
            *(f"{s.get(k, 0):,}" for k in ("active", "completed", "exited", "held_out")),
        )
    out.print(table)


@app.command("run-tick")
def run_tick_cmd(
    ctx: typer.Context,
    directory: Directory = None,
    as_of: AsOf = None,
    perform: Annotated[
        bool, typer.Option(help="Perform the actions the tick recorded (send, ...).")
    ] = True,
    as_json: Json = False,
) -> None:
    """Start what schedules trigger, move every due run, then perform pending actions."""
    from core.automation.report import tick_and_perform

    cli = obj(ctx)
    result = tick_and_perform(
        cli.engine(),
        cli.settings,
        as_of=parse_as_of(as_of),
        definitions=_files(directory),
        perform=perform,
    )
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    table = Table(
        "workflow",
        "entered",
        "advanced",
        "actions",
        "completed",
        "exited",
        "held out",
        "skipped",
        "deferred",
        title=f"tick as of {result['as_of']}",
    )
    for name, c in sorted(result["workflows"].items()):
        table.add_row(
            name,
            *(
                str(c[k])
                for k in ("entered", "advanced", "actions", "completed", "exited", "held_out")
            ),
            _reasons(c["skipped"]),
            _reasons(c["deferred"]),
        )
    out.print(table)
    if result.get("performed") is not None:
        p = result["performed"]
        out.print(
            f"performed {sum(p['performed'].values())} actions: {p['done']} done"
            + "".join(f", {k} {_reasons(p[k])}" for k in ("skipped", "failed", "retry") if p[k])
        )
    if result.get("performed") and result["performed"]["failed"]:
        raise typer.Exit(1)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "-"


@app.command("status")
def status(ctx: typer.Context, name: str, as_json: Json = False) -> None:
    """One workflow: runs by status, active runs by step, arms, actions by result."""
    from core.automation.report import workflow_status

    result = workflow_status(obj(ctx).engine(), name)
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    out.print(f"{name} v{result['version']} ({result['trigger']})")
    for title, key in (
        ("runs", "runs"),
        ("waiting at step", "steps"),
        ("arms", "arms"),
        ("actions", "actions"),
    ):
        table = Table(title, "count")
        for k, v in sorted(result[key].items()):
            table.add_row(k, f"{v:,}")
        out.print(table)


@app.command("simulate")
def simulate_cmd(
    ctx: typer.Context,
    name: str,
    start: Annotated[
        str | None, typer.Option("--from", help="Start (ISO 8601); default 7 days before --to.")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="End (ISO 8601); default now.")] = None,
    directory: Directory = None,
    runs: Annotated[int, typer.Option(help="Runs to show one by one.")] = 20,
    as_json: Json = False,
) -> None:
    """Replay stored events through a workflow without sending: who would enter,
    which branch each took, what they would receive and when."""
    from core.automation.report import simulate_workflow

    until = parse_as_of(end, "--to")
    since = parse_as_of(start, "--from") if start else until - timedelta(days=7)
    result = simulate_workflow(obj(ctx).engine(), name, since, until, _files(directory))
    if as_json:
        out.print_json(result.model_dump_json())
        return
    out.print(
        f"{name}: {result.triggered:,} triggered, {result.entered:,} would enter "
        f"between {since.isoformat()} and {until.isoformat()}"
    )
    for label, counts in (
        ("not entered", result.not_entered),
        ("outcome", result.outcomes),
        ("arm", result.arms),
        ("actions", result.actions),
    ):
        if counts:
            out.print(f"  {label}: {_reasons(counts)}")
    for run in result.runs[:runs]:
        out.print(
            f"- {run.user_id or run.profile_id} {run.key} entered {run.entered_at.isoformat()}"
            f" -> {run.status}{' (' + run.reason + ')' if run.reason else ''}"
        )
        for a in run.actions:
            out.print(f"    {a.at.isoformat()} {a.action} {json.dumps(a.params)}")


@app.command("history")
def history(ctx: typer.Context, user_id: str, as_json: Json = False) -> None:
    """A person's workflow runs, step by step (USER_ID, email or profile id)."""
    from core.automation.report import person_history

    result = person_history(obj(ctx).engine(), user_id)
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    if not result:
        out.print(f"{user_id}: no workflow runs")
    for run in result:
        out.print(
            f"{run['workflow']} v{run['version']} run {run['id']}"
            f"{' key ' + run['entry_key'] if run['entry_key'] else ''}: {run['status']}"
            f"{' (' + run['reason'] + ')' if run['reason'] else ''}"
        )
        for h in run["history"]:
            out.print(f"  {h['at']} {h['step'] or ''} {h['what']} {h['detail'] or ''}")
