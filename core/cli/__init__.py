"""The ``segflow`` command line: a thin shell over core functions.

One module per command group; each command parses its arguments, calls one
library function and prints. Plugins add commands through the
``register_commands`` hook (``poll``, ``consume``, ``scores fit`` and ``demo``
come from built-in plugins that way), so the core never imports a plugin.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from core.cli import (
    audit,
    campaigns,
    catalog,
    db,
    import_,
    keys,
    monitor,
    plugins,
    privacy,
    profiles,
    recommend,
    render,
    scores,
    segments,
    send,
    serve,
    templates,
    workflows,
)
from core.cli.context import CommandContext, Group, err
from core.config import load_settings

if TYPE_CHECKING:
    import click

app = typer.Typer(
    name="segflow",
    help="Behaviour-based segmentation and personalised email.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (else SEGFLOW_DATABASE_URL, segflow.toml)."),
    ] = None,
) -> None:
    ctx.obj = CommandContext(load_settings(db))


app.command()(db.init)
app.add_typer(db.app, name="db")
app.command("import")(import_.import_cmd)
app.add_typer(profiles.app, name="profile")
app.command()(plugins.plugins)
app.add_typer(segments.app, name="segments")
app.add_typer(scores.app, name="scores")
app.add_typer(keys.app, name="keys")
app.command()(serve.serve)
app.command("dashboard")(serve.dashboard)
app.add_typer(catalog.app, name="catalog")
app.add_typer(recommend.app, name="recommend")
app.command("send")(send.send_cmd)
app.command()(render.render)
app.add_typer(templates.app, name="templates")
app.add_typer(workflows.app, name="workflows")
app.add_typer(campaigns.app, name="campaigns")
app.add_typer(monitor.app, name="monitor")
app.add_typer(privacy.app, name="privacy")
app.command("audit")(audit.audit_cmd)


def _register_plugin_commands(cli: click.Group) -> None:
    from core.plugins import get_manager

    get_manager().hook.register_commands(cli=cli)


def build_cli() -> TyperGroup:
    """The root command: the core's commands, then those plugins register.

    Built afresh for every run, so the plugins loaded now (SEGFLOW_LOAD_PLUGINS,
    test plugins) are the ones whose commands exist. The plugins' commands are
    added when first needed (``Group.get_command`` / ``list_commands``).
    """
    cli = typer.main.get_command(app)
    assert isinstance(cli, Group)  # the root has a callback: always a group
    cli.plugin_loader = _register_plugin_commands
    return cli


# Errors that end a command with one line and a status: "module:class" -> status.
# Looked up only in modules already imported (an error cannot come from one that
# is not), so the start of every command does not import the whole engine.
EXPECTED_ERRORS: dict[str, int] = {
    "core.types:UsageError": 2,
    "core.ingestion:ImportUsageError": 2,
    "core.ingestion:MappingError": 2,
    "core.notebooks:NotebookNotFound": 2,
    "core.types:CommandError": 1,
    "core.config:ConfigError": 1,
    "core.db:DatabaseError": 1,
    "core.profiles:ProfileNotFound": 1,
    "core.ingestion:IngestError": 1,
    "core.segments.language:SegmentError": 1,
    "core.types:ScoreError": 1,
    "core.keys:UnknownKey": 1,
    "core.recommendations:UnknownRecommender": 2,
    "core.types:DeliveryFailure": 1,
    "core.automation.language:WorkflowError": 1,
}


def expected_status(exc: BaseException) -> int | None:
    """The exit status of an expected error, None for any other exception."""
    for ref, status in EXPECTED_ERRORS.items():
        module_name, _, name = ref.partition(":")
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if cls is not None and isinstance(exc, cls):
            return status
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected errors become one line on stderr and an exit status."""
    try:
        # Outside standalone mode click returns the status of typer.Exit instead of raising.
        status = build_cli().main(args=argv, prog_name="segflow", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Abort:
        return 1
    except Exception as exc:  # noqa: BLE001 - the promise is no traceback, ever
        expected = expected_status(exc)
        if expected is not None:
            err.print(f"error: {exc}", markup=False, highlight=False)
            return expected
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()  # click's own usage errors: message plus usage line, status 2
            return exc.exit_code
        if os.environ.get("SEGFLOW_DEBUG"):
            raise
        err.print(
            f"error: {type(exc).__name__}: {exc} (set SEGFLOW_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
        )
        return 1
    return status if isinstance(status, int) else 0


def entry() -> None:
    sys.exit(main())
