"""``segflow segments``: run, validate, list, inspect, preview, back-fill and test segments."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cli.context import AsOf, Group, err, obj, out, parse_as_of, progress
from core.plugins import condition_kinds, segment_change_hook
from core.types import UsageError

app = typer.Typer(help="Behavioural segments.", no_args_is_help=True, cls=Group)

Directory = Annotated[Path, typer.Option("--dir", help="Folder of segment YAML files.")]


@app.command("run")
def segments_run(
    ctx: typer.Context,
    directory: Directory = Path("segments"),
    as_of: AsOf = None,
    full: Annotated[bool, typer.Option("--full", help="Evaluate everyone, not only changes.")] = (
        False
    ),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load and save the definitions in DIR, evaluate, record entries and exits."""
    from core.segments.report import run_report
    from core.segments.store import load_segment_files, run_segments

    kinds = condition_kinds()
    definitions = load_segment_files(directory, kinds)
    _warn_dropped(ctx, definitions)
    engine = obj(ctx).engine()
    result = run_segments(
        engine,
        parse_as_of(as_of),
        kinds=kinds,
        definitions=definitions,
        full=full,
        on_change=segment_change_hook(engine),
    )
    if as_json:
        out.print_json(json.dumps(run_report(result)))
        return
    kind = "full" if result.full else "incremental"
    table = Table(
        "segment",
        "size",
        "entered",
        "exited",
        title=f"{kind} run as of {result.as_of.isoformat()}: "
        f"{result.evaluated:,} profiles evaluated",
    )
    for name in sorted(result.sizes):
        table.add_row(
            name, f"{result.sizes[name]:,}", f"{result.entered[name]:,}", f"{result.exited[name]:,}"
        )
    out.print(table)


def _warn_dropped(ctx: typer.Context, definitions: dict[str, Any]) -> int:
    """Warn of each property a segment reads that [privacy.minimise] drops; how many."""
    from core.privacy.reads import dropped_reads

    minimise = obj(ctx).settings.privacy.minimise
    found = dropped_reads(minimise, {n: (d.segment, d.file) for n, d in definitions.items()})
    for read in found:
        err.print(f"warning: {read}", markup=False, highlight=False)
    return len(found)


@app.command("validate")
def segments_validate(ctx: typer.Context, directory: Directory = Path("segments")) -> None:
    """Parse the segment files in DIR and check their references; warn where
    \\[privacy.minimise] drops a property a segment reads. Saves nothing."""
    from core.segments.language import check_references
    from core.segments.store import load_segment_files, segments_by_name

    definitions = load_segment_files(directory, condition_kinds())
    check_references(segments_by_name(definitions))
    warnings = _warn_dropped(ctx, definitions)
    tail = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
    out.print(f"{len(definitions)} segments valid{tail}", markup=False)


@app.command("members")
def segments_members(
    ctx: typer.Context,
    name: str,
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON list of user ids.")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV of id, email, since and the --trait columns.")
    ] = False,
    traits: Annotated[
        list[str] | None,
        typer.Option("--trait", help="A profile trait as a CSV column (repeat; a.b nests)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the CSV to this file.")
    ] = None,
) -> None:
    """Members of a segment: current, or evaluated as of a time (nothing saved)."""
    from core.segments.report import export_members, member_ids

    if (traits or output) and not as_csv:
        raise UsageError("--trait and --output go with --csv")
    when = parse_as_of(as_of) if as_of is not None else None
    if as_csv:
        engine, kinds = obj(ctx).engine(), condition_kinds()
        if output is None:
            count = export_members(engine, name, sys.stdout, kinds, traits, when)
        else:
            with output.open("w", encoding="utf-8", newline="") as fh:
                count = export_members(engine, name, fh, kinds, traits, when)
        err.print(f"{count:,} members" + (f" written to {output}" if output else ""))
        return
    with obj(ctx).engine().connect() as conn:
        ids = member_ids(conn, name, condition_kinds(), when)
    if as_json:
        out.print_json(json.dumps(ids))
        return
    for who in ids:
        out.print(who, markup=False, highlight=False)
    err.print(f"{len(ids):,} members")


@app.command("list")
def segments_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False):
    """Saved segments with their version and current size."""
    from core.segments.report import segment_sizes

    with obj(ctx).engine().connect() as conn:
        data = segment_sizes(conn)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("segment", "version", "size", "description")
    for r in data:
        table.add_row(r["name"], str(r["version"]), f"{r['size']:,}", r["description"])
    out.print(table)


@app.command("history")
def segments_history(
    ctx: typer.Context, name: str, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Size of a segment at each run or back-filled day."""
    from core.segments.report import size_history

    with obj(ctx).engine().connect() as conn:
        data = size_history(conn, name)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("as of", "size", "version", title=name)
    for r in data:
        table.add_row(r["as_of"], f"{r['size']:,}", str(r["version"]))
    out.print(table)


@app.command("test")
def segments_test(directory: Directory = Path("segments"), as_of: AsOf = None) -> None:
    """Run the test profiles in the segment files; fails like pytest does."""
    from core.segments.store import load_segment_files
    from core.segments.testing import run_tests

    outcomes = run_tests(load_segment_files(directory, condition_kinds()), parse_as_of(as_of))
    failed = [o for o in outcomes if not o.passed]
    for o in outcomes:
        status = "[green]PASSED[/green]" if o.passed else "[red]FAILED[/red]"
        out.print(f"{o.nodeid} {status}", highlight=False, soft_wrap=True)
    for o in failed:
        reason = o.error or f"expected {o.expected}, got {o.got}"
        err.print(f"FAILED {o.nodeid} - {reason}", markup=False, highlight=False)
    out.print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


@app.command("preview")
def segments_preview(
    ctx: typer.Context,
    file: Path,
    as_of: AsOf = None,
    sample: Annotated[int, typer.Option(help="How many members to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Size and a sample of members of the segments in FILE, saving nothing."""
    from core.segments.report import preview_file

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    when = parse_as_of(as_of)
    with obj(ctx).engine().connect() as conn:
        data = preview_file(conn, file, condition_kinds(), when, sample)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("segment", "size", "sample", title=f"preview of {file} (nothing saved)")
    for name, d in data.items():
        table.add_row(name, f"{d['size']:,}", ", ".join(map(str, d["sample"])))
    out.print(table)


@app.command("backfill")
def segments_backfill(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", help="First as_of (ISO 8601 with offset).")],
    end: Annotated[str, typer.Option("--to", help="Last as_of.")],
    every: Annotated[str, typer.Option(help="Step, e.g. 1d, 12h.")] = "1d",
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Save these definitions first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate every saved segment at each step and store its size (history)."""
    from core.segments.language import parse_duration
    from core.segments.store import backfill, load_segment_files

    try:
        step = parse_duration(every)
    except ValueError as exc:
        raise UsageError(f"--every: {exc}") from None
    first, last = parse_as_of(start, "--from"), parse_as_of(end, "--to")
    if last < first:
        raise UsageError("--to is before --from")
    steps = int((last - first) / step) + 1
    kinds = condition_kinds()
    definitions = load_segment_files(directory, kinds) if directory else None
    with progress("back-filling segment sizes", total=steps) as advance:
        sizes = backfill(
            obj(ctx).engine(),
            first,
            last,
            step,
            kinds=kinds,
            definitions=definitions,
            on_step=lambda: advance(1),
        )
    if as_json:
        out.print_json(
            json.dumps([{"as_of": when.isoformat(), "sizes": row} for when, row in sizes])
        )
        return
    names = sorted(sizes[0][1]) if sizes else []
    table = Table(
        "segment",
        "first",
        "min",
        "max",
        "last",
        title=f"sizes at {len(sizes)} steps from {first.isoformat()} to "
        f"{sizes[-1][0].isoformat() if sizes else last.isoformat()} (stored for history)",
    )
    for name in names:
        series = [row[name] for _, row in sizes]
        table.add_row(name, *(f"{v:,}" for v in (series[0], min(series), max(series), series[-1])))
    out.print(table)


@app.command("explain")
def segments_explain(
    ctx: typer.Context,
    name: str,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Why someone is in a segment or not: each condition, its figures and events."""
    from rich.tree import Tree

    from core.segments.report import explain_profile

    with obj(ctx).engine().connect() as conn:
        report = explain_profile(conn, name, user_id, condition_kinds(), parse_as_of(as_of))
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return

    def label(node: dict[str, Any]) -> str:
        mark = "[green]✔[/green]" if node["value"] else "[red]✘[/red]"
        params = ", ".join(f"{k}: {v}" for k, v in node["params"].items())
        figures = ", ".join(f"{k}={v}" for k, v in (node.get("figures") or {}).items())
        return f"{mark} {node['kind']} {params}" + (f"  [dim]{figures}[/dim]" if figures else "")

    def grow(tree: Tree, node: dict[str, Any]) -> None:
        branch = tree.add(label(node))
        for e in node.get("events", []):
            branch.add(f"[dim]{e['ts']} {e['type']} {e.get('product_id', '')}[/dim]")
        for child in node.get("children", []):
            grow(branch, child)

    verdict = "IN" if report["member"] else "OUT"
    root = Tree(f"{name} for {user_id} as of {report['as_of']}: [bold]{verdict}[/bold]")
    grow(root, report["rule"])
    out.print(root)
    if report["next_change_at"]:
        out.print(f"could change without new events at {report['next_change_at']}")


Dialect = Annotated[
    str | None,
    typer.Option("--dialect", help="sqlite or postgresql (default: the configured database's)."),
]


@app.command("sql")
def segments_sql(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Segments to show.")],
    directory: Directory = Path("segments"),
    dialect: Dialect = None,
    incremental: Annotated[
        bool, typer.Option("--incremental", help="The SQL of an incremental run (candidates).")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Add the database's plan (needs the database).")
    ] = False,
    as_of: AsOf = None,
) -> None:
    """Print the SQL a run executes for NAME... (the definitions in DIR, else
    the saved ones), formatted; --explain adds the database's plan."""
    import sqlalchemy as sa

    from core.segments.plans import compiled_sql, explain_sql, format_sql
    from core.segments.store import load_segment_files, segments_by_name, stored_segments

    kinds = condition_kinds()
    context = obj(ctx)
    if explain and dialect is not None:
        raise UsageError("--explain uses the database's dialect; drop --dialect")
    if dialect not in (None, "sqlite", "postgresql"):
        raise UsageError(f"--dialect: {dialect!r} is not sqlite or postgresql")
    if directory.is_dir():
        segments = segments_by_name(load_segment_files(directory, kinds))
    else:
        with context.engine().connect() as conn:
            segments = segments_by_name(stored_segments(conn, kinds))
    unknown = [n for n in names if n not in segments]
    if unknown:
        raise UsageError(
            f"unknown segment {', '.join(map(repr, unknown))}; known: "
            + (", ".join(sorted(segments)) or f"none (no segment files in {directory})")
        )
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import psycopg

        target: sa.Dialect = psycopg.dialect()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import pysqlite

        target = pysqlite.dialect()
    elif explain:
        target = context.engine().dialect
    else:
        target = sa.engine.make_url(context.settings.database_url).get_dialect()()
    st = compiled_sql(segments, names, parse_as_of(as_of), target, incremental=incremental)
    shown = [*st.script()[:-2], format_sql(st.query), format_sql(st.future)]
    out.print(f"-- {target.name}, plan {st.plan}", markup=False, highlight=False)
    out.print(";\n\n".join(shown) + ";", markup=False, highlight=False, soft_wrap=True)
    if explain:
        with context.engine().connect() as conn:
            plan = explain_sql(conn, st)
        out.print("\n-- plan (of the main query)", markup=False, highlight=False)
        for line in plan:
            out.print(f"-- {line}", markup=False, highlight=False, soft_wrap=True)
