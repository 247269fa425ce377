"""What every command shares: ``ctx.obj`` (settings, database), consoles, options.

Plugin commands reach this through ``ctx.obj`` alone (documented in
docs/hooks/register_commands.md), so they import nothing from ``core.cli``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from core.types import CommandError, UsageError

if TYPE_CHECKING:
    import click
    from sqlalchemy.engine import Engine

    from core.config import Settings

out = Console()
err = Console(stderr=True, soft_wrap=True)


class Group(TyperGroup):
    """A command group where a plugin cannot silently replace a command (typer's
    ``add_command``, like click's, lets the last one win).

    Plugins' commands are added on demand: the root group holds a loader that
    calls ``register_commands`` the first time a name is not one of the core's,
    or the commands are listed (help, ``segflow plugins``), so a core command
    runs without importing a single plugin.
    """

    plugin_loader: Callable[[click.Group], None] | None = None

    def add_command(self, cmd: Any, name: str | None = None) -> None:
        name = name or cmd.name
        if name in self.commands:
            raise CommandError(f"the command {self.name or 'segflow'} {name!r} is defined twice")
        super().add_command(cmd, name)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and load_plugin_commands(ctx):
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_plugin_commands(ctx)
        return super().list_commands(ctx)


def load_plugin_commands(ctx: click.Context) -> bool:
    """Let the plugins add their commands to this run's root group, once;
    True when they were added just now."""
    root = ctx.find_root().command
    loader = getattr(root, "plugin_loader", None)
    if loader is None:
        return False
    root.plugin_loader = None  # first, so a plugin listing commands does not recurse
    loader(root)
    return True


class CommandContext:
    """``ctx.obj`` of every command: the settings, the database, output helpers."""

    out = out
    err = err

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """The database, opened (and brought to the current schema) on first use."""
        if self._engine is None:
            from core.db import open_db
            from core.privacy.crypto import require_key

            require_key(self.settings.privacy.encryption)
            self._engine = open_db(
                self.settings.database_url, auto_upgrade=self.settings.auto_upgrade
            )
        return self._engine

    @staticmethod
    def as_of(value: str | None) -> datetime:
        """Parse an --as-of value (ISO 8601 with an offset); now when None."""
        return parse_as_of(value)

    @staticmethod
    def progress(description: str, total: int | None = None):
        """A progress display on stderr; ``with ... as advance: advance(n)``."""
        return progress(description, total)

    @staticmethod
    def print_json(data: Any) -> None:
        out.print_json(json.dumps(data, default=str))


def obj(ctx: typer.Context) -> CommandContext:
    return ctx.obj


def parse_as_of(value: str | None, option: str = "--as-of") -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {value!r}: not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{option} {value!r}: give a UTC offset (e.g. 2026-11-01T00:00:00Z)")
    return parsed.astimezone(UTC)


AsOf = Annotated[
    str | None, typer.Option("--as-of", help="Evaluate as of this time (ISO 8601); default now.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress display on stderr; yields ``advance(n)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    else:
        columns += [TextColumn("{task.completed:,.0f} records")]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
