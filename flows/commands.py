"""``segflow deploy`` and ``segflow server``, and the ``[deploy]`` settings.

A built-in plugin (in DEFAULT_PLUGINS) rather than a ``core.cli`` module: the
flows import core, so core importing them would tie the engine to its Prefect
shell. Like any plugin it imports only core's public API, and Prefect only
when one of its commands runs (every command that lists commands loads it).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from core import CommandError, hookimpl
from flows.config import DeploySettings

SECTION = "deploy"
DEFAULT_PORT = 4200
NO_API = (
    "no Prefect API to serve to: start one with `segflow server` and export "
    "PREFECT_API_URL=http://127.0.0.1:{port}/api, or set PREFECT_API_URL to an existing "
    "Prefect server (or Prefect Cloud). Without it Prefect runs a temporary server for "
    "this process alone, whose scheduler does not run: schedules would never fire."
)


def deploy_command(
    ctx: typer.Context,
    list_only: Annotated[
        bool,
        typer.Option(
            "--list", "--dry-run", help="Print the deployments and their schedules; serve nothing."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Serve every flow as a Prefect deployment with its schedule (segflow.toml: deploy).

    Runs until stopped (Ctrl-C), then pauses the schedules. Needs a Prefect API
    (PREFECT_API_URL): `segflow server` starts one.
    """
    cli = ctx.obj
    settings = cli.settings
    deploy: DeploySettings = settings.plugin(SECTION)
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import build_deployments, describe, record_serving, serve_deployments

    api = PREFECT_API_URL.value()
    if not list_only and not api:
        raise CommandError(NO_API.format(port=DEFAULT_PORT))
    deployments = build_deployments(settings)
    rows = [describe(d) for d in deployments]
    if as_json:
        cli.print_json(rows)
    else:
        from rich.table import Table

        verb = "would serve" if list_only else f"serving to {api}"
        table = Table("deployment", "schedule", title=f"{verb}: {len(rows)}")
        table.add_column("parameters", overflow="fold")
        for row in rows:
            params = "\n".join(f"{k}={v}" for k, v in row["parameters"].items())
            table.add_row(row["deployment"], row["schedule"], params)
        cli.out.print(table)
    if list_only:
        return
    # The runs start in subprocesses with this environment: a --db must reach them.
    if settings.source == "--db":
        os.environ["SEGFLOW_DATABASE_URL"] = settings.database_url
    record_serving(cli.engine(), deploy.name, rows)
    cli.out.print("Ctrl-C stops serving (and pauses the schedules)")
    serve_deployments(deployments, limit=deploy.limit)
    cli.out.print("stopped serving; the schedules are paused until `segflow deploy` runs again")


def server_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = DEFAULT_PORT,
) -> None:
    """Start a local Prefect server (UI and API, scheduler on, analytics off).

    It becomes `prefect server start` (same process), so Ctrl-C or SIGTERM
    reach the server itself. Prefect keeps its own data in PREFECT_HOME
    (default ~/.prefect).
    """
    url = f"http://{host}:{port}"
    lines = [
        f"starting a Prefect server on {url} (the UI; the API at {url}/api), analytics off",
        f"point segflow deploy and the flows at it: export PREFECT_API_URL={url}/api",
        "to use an existing Prefect server or Prefect Cloud instead, skip this command and "
        "set PREFECT_API_URL to its API",
        "without PREFECT_API_URL, flows run on a temporary Prefect server living as long "
        "as their process: schedules never fire there",
    ]
    current = os.environ.get("PREFECT_API_URL")
    if current and current.rstrip("/") != f"{url}/api":
        lines.append(f"note: PREFECT_API_URL is {current} in this shell, not this server")
    for line in lines:
        ctx.obj.out.print(line, markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    args = [sys.executable, "-m", "prefect", "server", "start"]
    args += ["--host", host, "--port", str(port), "--analytics-off"]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    try:
        os.execve(sys.executable, args, env)
    except OSError as exc:
        raise CommandError(f"could not start `prefect server start`: {exc}") from None


@hookimpl
def register_settings(register) -> None:
    register(SECTION, DeploySettings)


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("deploy")(deploy_command)
    commands.command("server")(server_command)
    group = typer.main.get_command(commands)
    for name in ("deploy", "server"):
        cli.add_command(group.commands[name], name)
