"""``segflow import``: event files into the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import err, obj, out, progress
from core.types import UsageError


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def import_cmd(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="JSON Lines or CSV files (.gz too).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="Source name, e.g. jsonl, csv.")
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="YAML mapping file for CSV columns.")
    ] = None,
    maps: Annotated[
        list[str] | None, typer.Option("--map", help="COLUMN=FIELD[:int|float|str|bool]")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE for every row.")
    ] = None,
    computes: Annotated[
        list[str] | None,
        typer.Option("--compute", help="FIELD=EXPR, e.g. value=Quantity*UnitPrice"),
    ] = None,
    ts_format: Annotated[str | None, typer.Option(help="strptime format of ts.")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA timezone for timestamps without offset.")
    ] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Events per transaction.")] = None,
    realtime: Annotated[
        bool,
        typer.Option(
            "--realtime/--no-realtime",
            help="Call on_events_ingested hooks (for a bulk load: on_profiles_loaded once "
            "at its end, where a plugin implements it).",
        ),
    ] = True,
    bulk: Annotated[
        bool | None,
        typer.Option(
            "--bulk/--no-bulk",
            help="Build the events' indexes once at the end (default: for big files).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show: Annotated[int, typer.Option(help="How many rejected lines to list.")] = 50,
) -> None:
    """Import events; bad lines are listed, good ones kept, duplicates skipped.

    Exit status: 0 all lines accepted, 1 some rejected, 2 usage error.
    """
    from core.ingestion import bulk_import_scope, estimate_records, worth_bulk_loading
    from core.ingestion.files import import_file, source_for
    from core.ingestion.options import load_read_options
    from core.plugins import events_ingested_hook, file_sources, profiles_loaded_hook

    options = load_read_options(
        mapping,
        columns=_pairs(maps, "--map"),
        constants=_pairs(sets, "--set"),
        computed=_pairs(computes, "--compute"),
        ts_format=ts_format,
        timezone=timezone,
        delimiter=delimiter,
    )
    sources = file_sources()
    for path in files:  # every file checked before the first is read
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        source_for(path, sources, fmt)
    cli = obj(ctx)
    engine = cli.engine()
    reports = {}
    for path in files:
        as_bulk = bulk if bulk is not None else worth_bulk_loading(engine, estimate_records(path))
        # A bulk load evaluates segments once, at its end, for the profiles it
        # touched; a small import keeps real time per batch.
        on_stored = events_ingested_hook(engine, bulk=as_bulk) if realtime else None
        on_loaded = profiles_loaded_hook(engine) if realtime and as_bulk else None
        with progress(f"importing {path.name}") as advance, bulk_import_scope():
            reports[str(path)] = import_file(
                engine,
                path,
                options,
                sources=sources,
                fmt=fmt,
                batch_size=batch_size or cli.settings.batch_size,
                on_progress=advance,
                on_stored=on_stored,
                on_loaded=on_loaded,
                bulk=as_bulk,
            )
    rejected = sum(len(r.rejected) for r in reports.values())
    if as_json:
        out.print_json(json.dumps({p: r.as_dict() for p, r in reports.items()}))
    else:
        _print_reports(reports, rejected, show)
    if rejected:
        raise typer.Exit(1)


def _minimised_line(counts: dict[tuple[str, str, str], int]) -> str:
    """One line of what [privacy.minimise] did, most frequent first."""
    parts = [
        f"{action} {type_}.{name} {n:,}"
        for (type_, name, action), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    shown = ", ".join(parts[:8]) + (f", ... {len(parts) - 8} more" if len(parts) > 8 else "")
    return f"minimised ([privacy.minimise]): {shown}"


def _print_reports(reports: dict, rejected: int, show: int) -> None:
    for p, r in reports.items():
        # The path on a line of its own: long paths must stay whole to be copied.
        out.print(p, soft_wrap=True, markup=False, highlight=False)
        table = Table("read", "accepted", "duplicates", "rejected", "new profiles", "merged")
        table.add_row(
            f"{r.received:,}",
            f"{r.accepted:,}",
            f"{r.duplicates:,}",
            f"{len(r.rejected):,}",
            f"{r.profiles_created:,}",
            f"{r.profiles_merged:,}",
        )
        out.print(table)
        if r.minimised:
            out.print(_minimised_line(r.minimised), markup=False, highlight=False, soft_wrap=True)
    listed = 0
    for r in reports.values():
        for rej in r.rejected:
            if listed >= show:
                break
            err.print(f"rejected {rej.location}: {rej.reason}", markup=False, highlight=False)
            listed += 1
    if rejected > listed:
        err.print(f"... and {rejected - listed:,} more rejected lines (use --json for all)")
