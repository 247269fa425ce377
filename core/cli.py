"""The ``segflow`` command line: a thin shell over core functions."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from core import db as dbmod
from core.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="segflow",
    help="Behaviour-based segmentation and personalised email.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
profile_app = typer.Typer(help="Look at profiles.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(profile_app, name="profile")

out = Console()
err = Console(stderr=True, soft_wrap=True)


class UsageError(Exception):
    """Wrong arguments: exit status 2."""


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj["settings"]


def _engine(ctx: typer.Context):
    settings = _settings(ctx)
    return dbmod.open_db(settings.database_url, auto_upgrade=settings.auto_upgrade)


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (else SEGFLOW_DATABASE_URL, segflow.toml)."),
    ] = None,
) -> None:
    ctx.obj = {"settings": load_settings(db)}


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Any]:
    """A rich progress display on stderr; yields ``advance(n)``."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    else:
        columns += [TextColumn("{task.completed:,.0f} records")]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# -- init / db ---------------------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    write_config: Annotated[
        bool, typer.Option("--config/--no-config", help="Write segflow.toml here.")
    ] = True,
) -> None:
    """Create the database (schema at the latest version) and a segflow.toml."""
    settings = _settings(ctx)
    engine = dbmod.make_engine(settings.database_url)
    dbmod.upgrade(engine)
    cfg = Path(os.environ.get("SEGFLOW_CONFIG", "segflow.toml"))
    if write_config and not cfg.exists():
        import secrets

        cfg.write_text(
            f'[segflow]\ndatabase_url = "{settings.database_url}"\n'
            f'secret_key = "{secrets.token_urlsafe(32)}"  # signs tracking links; keep it private\n'
        )
        out.print(f"wrote {cfg}")
    out.print(f"database ready: {engine.url.render_as_string(hide_password=True)}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply schema migrations up to the latest."""
    engine = dbmod.make_engine(_settings(ctx).database_url)
    before = dbmod.current_revision(engine)
    dbmod.upgrade(engine)
    after = dbmod.current_revision(engine)
    if before == after:
        out.print(f"schema already at {after}")
    else:
        out.print(f"schema upgraded {before or '(empty)'} -> {after}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the schema revision of the database and of the code."""
    engine = dbmod.make_engine(_settings(ctx).database_url)
    out.print(f"database: {dbmod.current_revision(engine) or '(empty)'}")
    out.print(f"code:     {dbmod.head_revision()}")


# -- import --------------------------------------------------------------------


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: no such mapping file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a mapping file is a YAML object")
    return data


def _read_options(
    mapping: Path | None,
    maps: list[str],
    sets: list[str],
    computes: list[str],
    ts_format: str | None,
    timezone: str | None,
    delimiter: str | None,
):
    from core.types import ReadOptions

    data: dict[str, Any] = _read_mapping(mapping) if mapping else {}
    data.setdefault("columns", {}).update(_pairs(maps, "--map"))
    data.setdefault("constants", {}).update(_pairs(sets, "--set"))
    data.setdefault("computed", {}).update(_pairs(computes, "--compute"))
    for key, value in (("ts_format", ts_format), ("timezone", timezone), ("delimiter", delimiter)):
        if value is not None:
            data[key] = value
    try:
        options = ReadOptions(**data)
    except ValidationError as exc:
        from core.errors import describe_validation_error

        where = f"{mapping}: " if mapping else ""
        raise UsageError(f"{where}{describe_validation_error(exc)}") from None
    if options.timezone:
        from core.ingest import parse_timezone

        try:
            parse_timezone(options.timezone)
        except ValueError as exc:
            raise UsageError(f"--timezone: {exc}") from None
    return options


@app.command("import")
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
        typer.Option("--realtime/--no-realtime", help="Call on_events_ingested hooks."),
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
    from core.ingest import bulk_import_scope, estimate_records, worth_bulk_loading
    from core.ingest.files import import_file, source_for

    options = _read_options(
        mapping, maps or [], sets or [], computes or [], ts_format, timezone, delimiter
    )
    for path in files:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        source_for(path, fmt)
    engine = _engine(ctx)
    size = batch_size or _settings(ctx).batch_size
    reports = {}
    for path in files:
        as_bulk = bulk if bulk is not None else worth_bulk_loading(engine, estimate_records(path))
        with progress(f"importing {path.name}") as advance, bulk_import_scope():
            reports[str(path)] = import_file(
                engine,
                path,
                options,
                fmt=fmt,
                batch_size=size,
                on_progress=advance,
                notify=realtime,
                bulk=as_bulk,
            )
    rejected = sum(len(r.rejected) for r in reports.values())
    if as_json:
        out.print_json(json.dumps({p: r.as_dict() for p, r in reports.items()}))
    else:
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
        listed = 0
        for r in reports.values():
            for rej in r.rejected:
                if listed >= show:
                    break
                err.print(f"rejected {rej.location}: {rej.reason}", markup=False, highlight=False)
                listed += 1
        if rejected > listed:
            err.print(f"... and {rejected - listed:,} more rejected lines (use --json for all)")
    if rejected:
        raise typer.Exit(1)


# -- profile -------------------------------------------------------------------


@profile_app.command("show")
def profile_show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")] = False,
    recent: Annotated[int, typer.Option(help="How many recent events.")] = 20,
) -> None:
    """A profile: attributes, identities, event counts and recent events."""
    from core.profiles import profile_summary

    summary = profile_summary(_engine(ctx), user_id, recent=recent)
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    who = summary["user_id"] or f"anonymous profile #{summary['profile_id']}"
    out.print(f"[bold]{who}[/bold]  {summary['email'] or ''}")
    out.print(f"first seen {summary['first_seen']}, last seen {summary['last_seen']}")
    attrs = Table("attribute", "value", title="attributes")
    for k, v in summary["attributes"].items():
        attrs.add_row(k, str(v))
    ids = Table("kind", "value", title="identities")
    for i in summary["identities"]:
        ids.add_row(i["kind"], i["value"])
    counts = Table("type", "events", title="events by type")
    for k, v in summary["event_counts"].items():
        counts.add_row(k, f"{v:,}")
    recent_t = Table("ts", "type", "product", "value", "url", title="recent events")
    for e in summary["recent_events"]:
        recent_t.add_row(
            e["ts"], e["type"], e.get("product_id", ""), str(e.get("value", "")), e.get("url", "")
        )
    for t in (attrs, ids, counts, recent_t):
        out.print(t)


# -- plugins -------------------------------------------------------------------


@app.command()
def plugins(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List loaded plugins and the hooks each implements."""
    from core.plugins import event_sources, plugin_table

    rows = plugin_table()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("plugin", "version", "hooks")
    for row in rows:
        version = row["version"] or ("built-in" if row["builtin"] else "")
        table.add_row(row["name"], version, ", ".join(row["hooks"]))
    out.print(table)
    sources = event_sources()
    if sources:
        st = Table("event source", "reads", "description")
        for s in sources.values():
            st.add_row(s.name, " ".join(s.suffixes), s.description)
        out.print(st)


# -- demo ----------------------------------------------------------------------


def _summary_tables(summary: dict[str, Any]) -> list[Table]:
    head = Table("", "", title="segflow demo store")
    head.add_row("profiles", f"{summary['profiles']:,}")
    head.add_row("  identified", f"{summary['identified']:,}")
    head.add_row("  anonymous", f"{summary['anonymous']:,}")
    head.add_row(
        "  identified after anonymous visits", f"{summary['identified_after_anonymous']:,}"
    )
    head.add_row("profiles merged", f"{summary['merged']:,}")
    head.add_row("events", f"{summary['events']:,}")
    head.add_row("from", str(summary["first_event"]))
    head.add_row("to", str(summary["last_event"]))
    head.add_row("revenue", f"{summary['revenue']:,.2f}")
    types = Table("event type", "events", "share", title="events by type")
    total = summary["events"] or 1
    for k, v in summary["by_type"].items():
        types.add_row(k, f"{v:,}", f"{100 * v / total:.1f}%")
    return [head, types]


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_SEGMENTS = EXAMPLES / "segments"
EXAMPLE_SCORES = EXAMPLES / "scores"


@app.command()
def demo(
    ctx: typer.Context,
    people: Annotated[int, typer.Option(min=1, help="Known people in the store.")] = 5000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    reset: Annotated[
        bool, typer.Option(help="Delete the previous demo run first (refused on real data).")
    ] = False,
    segments: Annotated[
        Path | None,
        typer.Option(help="Segment definitions to run on the store (default: the examples)."),
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(help="Score definitions to compute first (default: the examples)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Generate a realistic outdoor-gear store, import it, run the segments, summarise."""
    from core.demo import generate
    from core.ingest import bulk_import_scope, ingest, worth_bulk_loading
    from core.maintenance import DEMO_SOURCE
    from core.stats import database_summary

    engine = _engine(ctx)
    if reset:
        from core.maintenance import reset_demo

        reset_demo(engine)
    settings = _settings(ctx)
    description = f"generating and importing {people:,} people x {days} days"
    with progress(description) as advance, bulk_import_scope():
        report = ingest(
            engine,
            generate(people, seed=seed, days=days),
            source=DEMO_SOURCE,
            batch_size=settings.batch_size,
            on_progress=advance,
            bulk=worth_bulk_loading(engine, people * 60),  # about 60 events a person
            # A bulk load: segments are evaluated once, below, not per batch.
            notify=False,
        )
    from datetime import UTC, datetime

    from core.plugins import condition_kinds, scoring_models, segment_change_hook
    from core.scoring import load_score_files, run_scores
    from core.segments.store import load_segment_files, run_segments

    now = datetime.now(UTC)
    # Scores first: segments such as loyal_high_engagement read them.
    scored = run_scores(engine, load_score_files(scores or EXAMPLE_SCORES, scoring_models()), now)
    kinds = condition_kinds()
    run = run_segments(
        engine,
        now,
        kinds=kinds,
        definitions=load_segment_files(segments or EXAMPLE_SEGMENTS, kinds),
        on_change=segment_change_hook(engine),
    )
    summary = database_summary(engine)
    summary["segments"] = dict(sorted(run.sizes.items()))
    summary["scores"] = scored
    summary["import"] = report.as_dict() | {"rejections": report.as_dict()["rejections"][:20]}
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        for t in _summary_tables(summary):
            out.print(t)
        sizes = Table(
            "segment", "members", title=f"segments ({'full' if run.full else 'incremental'} run)"
        )
        for name, size in summary["segments"].items():
            sizes.add_row(name, f"{size:,}")
        out.print(sizes)
        out.print(
            f"imported {report.accepted:,} events ({report.duplicates:,} duplicates skipped, "
            f"{len(report.rejected):,} rejected) into "
            f"{engine.url.render_as_string(hide_password=True)}"
        )
    if report.rejected:
        raise typer.Exit(1)


# -- segments --------------------------------------------------------------------

segments_app = typer.Typer(help="Behavioural segments.", no_args_is_help=True)
app.add_typer(segments_app, name="segments")


def _as_of(value: str | None):
    from datetime import UTC, datetime

    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--as-of {value!r}: not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise UsageError(f"--as-of {value!r}: give a UTC offset (e.g. 2026-11-01T00:00:00Z)")
    return parsed.astimezone(UTC)


AsOf = Annotated[
    str | None, typer.Option("--as-of", help="Evaluate as of this time (ISO 8601); default now.")
]


@segments_app.command("run")
def segments_run(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Folder of segment YAML files.")] = Path(
        "segments"
    ),
    as_of: AsOf = None,
    full: Annotated[bool, typer.Option("--full", help="Evaluate everyone, not only changes.")] = (
        False
    ),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load and save the definitions in DIR, evaluate, record entries and exits."""
    from core.plugins import condition_kinds, segment_change_hook
    from core.segments.store import load_segment_files, run_segments

    when = _as_of(as_of)
    kinds = condition_kinds()
    definitions = load_segment_files(directory, kinds)
    engine = _engine(ctx)
    result = run_segments(
        engine,
        when,
        kinds=kinds,
        definitions=definitions,
        full=full,
        on_change=segment_change_hook(engine),
    )
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "as_of": result.as_of.isoformat(),
                    "full": result.full,
                    "evaluated": result.evaluated,
                    "segments": {
                        n: {
                            "size": result.sizes[n],
                            "entered": result.entered[n],
                            "exited": result.exited[n],
                        }
                        for n in sorted(result.sizes)
                    },
                }
            )
        )
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


@segments_app.command("members")
def segments_members(
    ctx: typer.Context,
    name: str,
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON list of user ids.")] = False,
) -> None:
    """Members of a segment: current, or evaluated as of a time (nothing saved)."""
    from core.plugins import condition_kinds
    from core.segments.batch import evaluate_sql
    from core.segments.store import members, segments_by_name, stored_segments

    engine = _engine(ctx)
    with engine.connect() as conn:
        rows = members(conn, name)
        if as_of is not None:
            segs = segments_by_name(stored_segments(conn, condition_kinds()))
            result = evaluate_sql(conn, segs, _as_of(as_of))
            wanted = result.members[name]
            rows = [r for r in _all_profiles(conn) if r["profile_id"] in wanted]
    ids = [r["id"] for r in rows]
    if as_json:
        out.print_json(json.dumps(ids))
        return
    for who in ids:
        out.print(who, markup=False, highlight=False)
    err.print(f"{len(ids):,} members")


def _all_profiles(conn) -> list[dict[str, Any]]:
    from core.profiles import profile_labels

    return [{"profile_id": p, "id": label} for p, label in profile_labels(conn).items()]


@segments_app.command("list")
def segments_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False):
    """Saved segments with their version and current size."""
    import sqlalchemy as sa

    from core.db.tables import MEMBERSHIPS as mem
    from core.db.tables import SEGMENTS as seg

    with _engine(ctx).connect() as conn:
        rows = conn.execute(
            sa.select(seg.c.name, seg.c.version, seg.c.description, sa.func.count(mem.c.profile_id))
            .outerjoin(mem, mem.c.segment_id == seg.c.id)
            .group_by(seg.c.id, seg.c.name, seg.c.version, seg.c.description)
            .order_by(seg.c.name)
        ).all()
    data = [{"name": n, "version": v, "description": d, "size": c} for n, v, d, c in rows]
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("segment", "version", "size", "description")
    for r in data:
        table.add_row(r["name"], str(r["version"]), f"{r['size']:,}", r["description"])
    out.print(table)


@segments_app.command("history")
def segments_history(
    ctx: typer.Context, name: str, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Size of a segment at each run or back-filled day."""
    import sqlalchemy as sa

    from core.db.tables import SEGMENT_SIZES as sizes
    from core.db.tables import SEGMENTS as seg
    from core.segments.language import SegmentError

    with _engine(ctx).connect() as conn:
        sid = conn.execute(sa.select(seg.c.id).where(seg.c.name == name)).scalar()
        if sid is None:
            raise SegmentError(f"no segment named '{name}'")
        rows = conn.execute(
            sa.select(sizes.c.as_of, sizes.c.size, sizes.c.version)
            .where(sizes.c.segment_id == sid)
            .order_by(sizes.c.as_of)
        ).all()
    data = [{"as_of": a.isoformat(), "size": s, "version": v} for a, s, v in rows]
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("as of", "size", "version", title=name)
    for r in data:
        table.add_row(r["as_of"], f"{r['size']:,}", str(r["version"]))
    out.print(table)


@segments_app.command("test")
def segments_test(
    directory: Annotated[Path, typer.Option("--dir", help="Folder of segment YAML files.")] = Path(
        "segments"
    ),
    as_of: AsOf = None,
) -> None:
    """Run the test profiles in the segment files; fails like pytest does."""
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files
    from core.segments.testing import run_tests

    outcomes = run_tests(load_segment_files(directory, condition_kinds()), _as_of(as_of))
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


@segments_app.command("preview")
def segments_preview(
    ctx: typer.Context,
    file: Path,
    as_of: AsOf = None,
    sample: Annotated[int, typer.Option(help="How many members to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Size and a sample of members of the segments in FILE, saving nothing."""
    from core.plugins import condition_kinds
    from core.segments.batch import evaluate_sql
    from core.segments.store import load_segment_file, segments_by_name, stored_segments

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    kinds = condition_kinds()
    defs = segments_by_name(load_segment_file(file, kinds))
    engine = _engine(ctx)
    with engine.connect() as conn:
        known = segments_by_name(stored_segments(conn, kinds))
        result = evaluate_sql(conn, known | defs, _as_of(as_of))
        who = {r["profile_id"]: r["id"] for r in _all_profiles(conn)}
    data = {
        name: {
            "size": len(result.members[name]),
            "sample": [who[p] for p in sorted(result.members[name])[:sample]],
        }
        for name in defs
    }
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("segment", "size", "sample", title=f"preview of {file} (nothing saved)")
    for name, d in data.items():
        table.add_row(name, f"{d['size']:,}", ", ".join(map(str, d["sample"])))
    out.print(table)


@segments_app.command("backfill")
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
    from core.plugins import condition_kinds
    from core.segments.language import parse_duration
    from core.segments.store import backfill, load_segment_files

    try:
        step = parse_duration(every)
    except ValueError as exc:
        raise UsageError(f"--every: {exc}") from None
    first, last = _as_of(start), _as_of(end)
    if last < first:
        raise UsageError("--to is before --from")
    steps = int((last - first) / step) + 1
    kinds = condition_kinds()
    definitions = load_segment_files(directory, kinds) if directory else None
    with progress("back-filling segment sizes", total=steps) as advance:
        sizes = backfill(
            _engine(ctx),
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


@segments_app.command("explain")
def segments_explain(
    ctx: typer.Context,
    name: str,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Why someone is in a segment or not: each condition, its figures and events."""
    from rich.tree import Tree

    from core.plugins import condition_kinds
    from core.profiles import find_profile_id
    from core.segments.data import load_profile_data
    from core.segments.evaluate import evaluate
    from core.segments.explain import explain
    from core.segments.language import SegmentError, check_references
    from core.segments.store import segments_by_name, stored_segments

    when = _as_of(as_of)
    with _engine(ctx).connect() as conn:
        segs = segments_by_name(stored_segments(conn, condition_kinds()))
        if name not in segs:
            raise SegmentError(f"no segment named '{name}'")
        pid = find_profile_id(conn, user_id)
        data = load_profile_data(conn, pid, when)
    for dep in check_references(segs):
        data.segments[dep] = evaluate(segs[dep].rule, data, when).member
    report = explain(segs[name].rule, data, when) | {"segment": name, "profile_id": pid}
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


# -- scores ----------------------------------------------------------------------

scores_app = typer.Typer(
    help="Scores: engagement points, RFM, predictive value.", no_args_is_help=True
)
app.add_typer(scores_app, name="scores")


@scores_app.command("run")
def scores_run(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Folder of score YAML files.")] = Path(
        "scores"
    ),
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Compute every score defined in DIR for everyone and store it (history kept)."""
    from core.plugins import scoring_models
    from core.scoring import load_score_files, run_scores

    when = _as_of(as_of)
    counts = run_scores(_engine(ctx), load_score_files(directory, scoring_models()), when)
    if as_json:
        out.print_json(json.dumps({"as_of": when.isoformat(), "scored": counts}))
        return
    table = Table("score", "profiles scored", title=f"scores as of {when.isoformat()}")
    for name, n in sorted(counts.items()):
        table.add_row(name, f"{n:,}")
    out.print(table)


@scores_app.command("show")
def scores_show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A person's latest scores, with their components."""
    from core.profiles import find_profile_id
    from core.scoring import latest_scores

    with _engine(ctx).connect() as conn:
        rows = latest_scores(conn, find_profile_id(conn, user_id))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("score", "value", "as of", "runs", "components", title=user_id)
    for r in rows:
        comps = ", ".join(f"{k}={v}" for k, v in r["components"].items())
        table.add_row(r["score"], f"{r['value']:.3f}", r["as_of"], str(r["history"]), comps)
    out.print(table)


@scores_app.command("fit")
def scores_fit(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to fit: bgnbd.")],
    event: Annotated[str, typer.Option(help="The purchase event type.")] = "purchase",
    as_of: AsOf = None,
    horizon: Annotated[float, typer.Option(help="Prediction horizon, in weeks.")] = 39.0,
    name: Annotated[str, typer.Option(help="Name of the stored scores.")] = "bgnbd",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit BG/NBD (+ Gamma-Gamma) by maximum likelihood; store P(alive), purchases, CLV."""
    if model != "bgnbd":
        raise UsageError(f"unknown model {model!r} (available: bgnbd)")
    from core.scoring import store_scores
    from plugins.scoring.predictive import fit_and_score

    when = _as_of(as_of)
    engine = _engine(ctx)
    with engine.begin() as conn:
        fit, values = fit_and_score(conn, event=event, as_of=when, horizon=horizon, name=name)
        stored = store_scores(conn, values, when)
    result = {
        k: getattr(fit, k)
        for k in ("r", "alpha", "a", "b", "log_likelihood", "profiles", "p", "q", "v")
        if getattr(fit, k, None) is not None
    }
    if as_json:
        out.print_json(json.dumps(result))
        return
    table = Table("parameter", "value", title=f"BG/NBD fit as of {when.isoformat()}")
    for k, v in result.items():
        table.add_row(k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}")
    out.print(table)
    out.print(", ".join(f"{n}: {c:,} profiles" for n, c in stored.items()))


# -- keys ------------------------------------------------------------------------

keys_app = typer.Typer(help="API keys with scopes.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A name to tell the key by.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: events:write, profiles:read, admin.")
    ],
) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from core.keys import create_key

    try:
        info, key = create_key(
            _engine(ctx), name, [s.strip() for s in scopes.split(",") if s.strip()]
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    err.print(
        f"created key {info.name!r} ({info.prefix}) with scopes {', '.join(info.scopes)}; "
        "store it now, it is not shown again:"
    )
    print(key)


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Keys by name, prefix, scopes and state (never the keys themselves)."""
    from core.keys import list_keys

    keys = list_keys(_engine(ctx))
    rows = [
        {
            "name": k.name,
            "prefix": k.prefix,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            "revoked": k.revoked_at is not None,
        }
        for k in keys
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "prefix", "scopes", "created", "last used", "state")
    for r in rows:
        table.add_row(
            r["name"],
            r["prefix"],
            ", ".join(r["scopes"]),
            r["created_at"][:19],
            (r["last_used_at"] or "")[:19],
            "revoked" if r["revoked"] else "active",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a key: it stops working at once."""
    from core.keys import revoke_key

    info = revoke_key(_engine(ctx), name)
    out.print(f"revoked {info.name!r} ({info.prefix})")


# -- poll ------------------------------------------------------------------------


def _named(entries: list[Any], name: str, what: str) -> Any:
    """The settings entry called ``name`` (a poll, a stream), or a usage error listing them."""
    found = next((e for e in entries if e.name == name), None)
    if found is None:
        known = ", ".join(e.name for e in entries) or "none configured"
        raise UsageError(f"no {what} named {name!r} ({known})")
    return found


@app.command()
def poll(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A [[segflow.polls]] entry of segflow.toml.")],
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
) -> None:
    """Pull events from a paginated HTTP endpoint every interval, resuming at its cursor."""
    import time

    from plugins.sources.polling import PollError, poll_once

    config = _named(_settings(ctx).polls, name, "poll")
    engine = _engine(ctx)
    while True:
        try:
            result = poll_once(engine, config)
        except PollError as exc:
            if once:
                raise dbmod.DatabaseError(str(exc)) from None
            err.print(
                f"poll {name}: {exc}; trying again in {config.interval_seconds:g} s", markup=False
            )
        else:
            r = result.report
            out.print(
                f"{name}: {result.pages} page(s), {r.accepted:,} new events, "
                f"{r.duplicates:,} duplicates, {len(r.rejected):,} rejected"
            )
            if once:
                if r.rejected:
                    raise typer.Exit(1)
                return
        time.sleep(config.interval_seconds)


@app.command()
def consume(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A [[segflow.streams]] entry of segflow.toml.")],
    once: Annotated[bool, typer.Option("--once", help="Drain what is there, then exit.")] = False,
) -> None:
    """Consume a Redis Stream with a consumer group; acknowledge after committing."""
    from plugins.sources.redis_stream import consume_once

    config = _named(_settings(ctx).streams, name, "stream")
    engine = _engine(ctx)
    while True:
        result = consume_once(engine, config, block_ms=0 if once else None)
        r = result.report
        if result.entries or once:
            out.print(
                f"{name}: {result.entries:,} entries, {r.accepted:,} new events, "
                f"{r.duplicates:,} duplicates, {len(r.rejected):,} rejected"
            )
        if once:
            return


# -- serve -----------------------------------------------------------------------


@app.command()
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
) -> None:
    """Run the ingestion API (Segment-compatible /v1, tracking pixel and links)."""
    import uvicorn

    from core.api import create_app

    app = create_app(_engine(ctx), _settings(ctx))
    # Everything loaded so far lives as long as the server: frozen, a full
    # collection no longer walks it, which removed 100 ms stalls from the
    # request-to-segment-change latency (bench/api.py).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
    )


# -- dashboard -------------------------------------------------------------------

dashboard_app = typer.Typer(help="Analyst dashboards (marimo apps).", no_args_is_help=True)
app.add_typer(dashboard_app, name="dashboard")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _absolute_database_url(url: str) -> str:
    """The URL with a relative SQLite path made absolute, so any working directory works."""
    import sqlalchemy as sa

    sa_url = sa.make_url(url)
    database = sa_url.database
    if sa_url.get_backend_name() == "sqlite" and database and database != ":memory:":
        path = Path(database).expanduser()
        if not path.is_absolute():
            return sa_url.set(database=str(path.resolve())).render_as_string(hide_password=False)
    return url


def _marimo(
    ctx: typer.Context,
    notebook_name: str,
    host: str,
    port: int,
    headless: bool,
    export_html: Path | None,
) -> None:
    """Serve a notebook with `marimo run`, or export it once as static HTML."""
    import signal
    import subprocess
    import threading

    notebook = NOTEBOOKS / notebook_name
    if not notebook.is_file():
        raise UsageError(f"{notebook}: notebook not found")
    _engine(ctx)  # fail here, in one line, if the database cannot be opened
    url = _absolute_database_url(_settings(ctx).database_url)
    env = os.environ | {"SEGFLOW_DATABASE_URL": url}
    marimo = [sys.executable, "-m", "marimo"]
    if export_html is not None:
        command = [*marimo, "export", "html", str(notebook), "-o", str(export_html)]
        command += ["--no-include-code", "--force"]
    else:
        command = [*marimo, "run", str(notebook), "--host", host, "--port", str(port)]
        if headless:
            command.append("--headless")
    with subprocess.Popen(command, env=env) as child:
        # Pass a SIGTERM on (Ctrl-C reaches both already), so marimo never outlives us.
        forward = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate()) if forward else None
        try:
            status = child.wait()
        finally:
            if forward:
                signal.signal(signal.SIGTERM, previous)
    if status:
        raise typer.Exit(128 - status if status < 0 else status)  # killed by a signal: 128+N
    if export_html is not None:
        out.print(f"wrote {export_html}")


@dashboard_app.command("overview")
def dashboard_overview(
    ctx: typer.Context,
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
    """Stored data at a glance: summary, events per day by type, top products."""
    _marimo(ctx, "overview.py", host, port, headless, export_html)


# -- entry point -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected errors become one line on stderr and an exit status."""
    from core.ingest import ImportUsageError, IngestError, MappingError
    from core.keys import UnknownKey
    from core.profiles import ProfileNotFound
    from core.segments.language import SegmentError
    from core.types import ScoreError

    try:
        # Outside standalone mode click returns the status of typer.Exit instead of raising.
        status = app(args=argv, prog_name="segflow", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (UsageError, ImportUsageError, MappingError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except (
        ConfigError,
        dbmod.DatabaseError,
        ProfileNotFound,
        IngestError,
        SegmentError,
        ScoreError,
        UnknownKey,
    ) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Abort:
        return 1
    except Exception as exc:  # noqa: BLE001 - the promise is no traceback, ever
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


if __name__ == "__main__":
    entry()
