"""Bulk import of generated demo events into SQLite and PostgreSQL.

segflow's ``core.events.ingest`` (validation, de-duplication, identity
resolution, deferred index build) against a raw DB-API baseline that inserts
the same, already converted rows into a bare table without indexes.
"""

from __future__ import annotations

import gc
import importlib.util
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import sqlalchemy as sa
from rich.progress import Progress
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from bench import common
from bench.common import Result, ratio, timer

TITLE = "Bulk import of generated events"

N_FULL = 1_000_000
N_QUICK = 100_000
BATCH = 5_000  # rows per transaction, for segflow (its default) and the baselines alike
SEED = 7
DAYS = 90
END = datetime(2025, 1, 1, tzinfo=UTC)  # fixed, so every run imports the same events
SOURCE = "bench"

# Targets from the issue.
SQLITE_MIN_RATE = 150_000  # events/s, segflow into SQLite
MAX_RATIO = 3.0  # segflow's seconds / raw baseline's seconds, per backend


# -- input ------------------------------------------------------------------------


def make_events(n: int) -> list[dict[str, Any]]:
    """The first ``n`` demo events, materialised (generation is not timed)."""
    from core.demo import generate

    people = max(1, n // 50)  # the demo yields ~57 events per person
    while True:
        events = list(islice(generate(people, seed=SEED, days=DAYS, end=END), n))
        if len(events) == n:
            return events
        people *= 2  # not expected; keeps the benchmark correct if the demo changes


def _props(e: dict[str, Any]) -> str:
    props = e.get("traits") if e["type"] == "identify" else e.get("properties")
    return orjson.dumps(props or {}).decode()


def _sqlite_ts(value: datetime) -> str:
    # The text segflow stores on SQLite: naive UTC, fixed width, microseconds.
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def raw_rows(events: list[dict[str, Any]], *, for_sqlite: bool) -> list[tuple]:
    """The 13 column values segflow stores per event, in EVENT_COLUMNS order.

    profile_id is a precomputed int per person (first of user_id, anonymous_id,
    email); times are text on SQLite and aware datetimes on PostgreSQL;
    properties (traits for identify) are JSON text.
    """
    received = datetime.now(UTC)
    received_v: Any = _sqlite_ts(received) if for_sqlite else received
    pids: dict[str, int] = {}
    rows: list[tuple] = []
    for e in events:
        who = e.get("user_id") or e.get("anonymous_id") or e.get("email")
        pid = pids.setdefault(who, len(pids) + 1)
        ts = datetime.fromisoformat(e["ts"]).astimezone(UTC)
        value = e.get("value")
        rows.append(
            (
                pid,
                e["type"],
                _sqlite_ts(ts) if for_sqlite else ts,
                e.get("session_id"),
                e.get("product_id"),
                None if value is None else float(value),
                e.get("currency"),
                e.get("url"),
                e.get("campaign"),
                _props(e),
                SOURCE,
                e["message_id"],
                received_v,
            )
        )
    return rows


def batches(rows: list[tuple]) -> list[list[tuple]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def bare_table_ddl(name: str, dialect: sa.Dialect) -> str:
    """CREATE TABLE with the events table's 13 stored columns and types, no keys or indexes."""
    from core.events import EVENT_COLUMNS
    from core.identity import EVENTS

    cols = [
        sa.Column(c.name, c.type, nullable=c.nullable)
        for c in (EVENTS.c[name] for name in EVENT_COLUMNS)
    ]
    table = sa.Table(name, sa.MetaData(), *cols)
    return str(CreateTable(table).compile(dialect=dialect)).strip()


def _insert_sql(table: str, mark: str) -> str:
    from core.events import EVENT_COLUMNS

    return (
        f"INSERT INTO {table} ({', '.join(EVENT_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(EVENT_COLUMNS))})"
    )


# -- timing helpers ---------------------------------------------------------------------


class Quiet:
    """gc.collect + gc.freeze around a timed block.

    The materialised input (a million dicts) is the harness's, not the
    workload's: frozen, the collector does not walk it during either side's
    timing. Applied to baseline and segflow alike.
    """

    def __enter__(self) -> Quiet:
        gc.collect()
        gc.freeze()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.unfreeze()


def _advance(prog: Progress, task: Any) -> Callable[[int], None]:
    def step(k: int) -> None:
        prog.update(task, advance=k)

    return step


# -- segflow ---------------------------------------------------------------------------


def run_segflow(url: str, events: list[dict[str, Any]], label: str, prog: Progress) -> Result:
    from core.db import open_db
    from core.events import ingest

    n = len(events)
    engine = open_db(url)
    try:
        task = prog.add_task(label, total=n)
        with Quiet(), timer(f"import_bulk {label}", profile=True) as t:
            report = ingest(
                engine,
                events,
                source=SOURCE,
                notify=False,
                expected=n,
                on_progress=_advance(prog, task),
            )
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    finally:
        engine.dispose()
    r = Result(label, n, t[0])
    problems = []
    if report.rejected:
        problems.append(f"{len(report.rejected)} rejected, e.g. {report.rejected[0]}")
    if not (stored == report.accepted == n - report.duplicates):
        problems.append(
            f"verification failed: {stored} rows stored, {report.accepted} accepted, "
            f"{report.duplicates} duplicates of {n}"
        )
    elif report.duplicates:
        problems.append(f"{report.duplicates} duplicates (expected 0 for demo data)")
    r.notes.append(
        f"{report.accepted:,} accepted, {report.duplicates} duplicates, "
        f"{report.profiles_created:,} profiles created, {report.profiles_merged:,} merged"
    )
    for p in problems:
        r.fail(p)
    return r


# -- SQLite ------------------------------------------------------------------------------


def sqlite_baseline(path: Path, rows: list[tuple], prog: Progress) -> Result:
    from core.db import _sqlite_pragmas  # the exact pragmas segflow's engine sets

    label = "sqlite: raw executemany (baseline)"
    chunks = batches(rows)
    con = sqlite3.connect(path)
    try:
        _sqlite_pragmas(con, None)
        con.execute(bare_table_ddl("events_raw", sqlite.dialect()))
        con.commit()
        sql = _insert_sql("events_raw", "?")
        task = prog.add_task(label, total=len(rows))
        with Quiet(), timer() as t:
            for chunk in chunks:
                con.executemany(sql, chunk)
                con.commit()
                prog.update(task, advance=len(chunk))
        stored = con.execute("SELECT count(*) FROM events_raw").fetchone()[0]
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        sync = con.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        con.close()
    r = Result(label, len(rows), t[0], ratio=1.0)
    r.notes.append(f"journal_mode={mode}, synchronous={sync} (1 = NORMAL)")
    if stored != len(rows):
        r.fail(f"verification failed: {stored} rows stored of {len(rows)}")
    return r


def bench_sqlite(events: list[dict[str, Any]], prog: Progress) -> list[Result]:
    rows = raw_rows(events, for_sqlite=True)
    with common.scratch_dir() as tmp:
        base = sqlite_baseline(tmp / "raw.db", rows, prog)
        del rows
        seg = run_segflow(f"sqlite:///{tmp}/segflow.db", events, "sqlite: segflow ingest", prog)
    seg.ratio = ratio(seg.seconds, base.seconds)
    seg.check(min_rate=SQLITE_MIN_RATE, max_ratio=MAX_RATIO)
    return [base, seg]


# -- PostgreSQL --------------------------------------------------------------------------

PG_CASES = (
    "postgresql: raw executemany (baseline)",
    "postgresql: raw COPY (extra)",
    "postgresql: segflow ingest",
)


def _load_pgserver() -> ModuleType:
    path = common.ROOT / "tests" / "pgserver.py"
    spec = importlib.util.spec_from_file_location("_segflow_bench_pgserver", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _pg_raw(server: Any, rows: list[tuple], label: str, copy: bool, prog: Progress) -> Result:
    import psycopg

    from core.events import EVENT_COLUMNS

    chunks = batches(rows)
    ddl = bare_table_ddl("events_raw", postgresql.psycopg.dialect())
    with psycopg.connect(**server.conninfo("bench_raw")) as conn:
        conn.execute("DROP TABLE IF EXISTS events_raw")
        conn.execute(ddl)
        conn.commit()
        task = prog.add_task(label, total=len(rows))
        with conn.cursor() as cur:
            if copy:
                stmt = f"COPY events_raw ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
                with Quiet(), timer() as t:
                    for chunk in chunks:
                        with cur.copy(stmt) as cp:
                            for row in chunk:
                                cp.write_row(row)
                        conn.commit()
                        prog.update(task, advance=len(chunk))
            else:
                stmt = _insert_sql("events_raw", "%s")
                with Quiet(), timer() as t:
                    for chunk in chunks:
                        cur.executemany(stmt, chunk)
                        conn.commit()
                        prog.update(task, advance=len(chunk))
            stored = cur.execute("SELECT count(*) FROM events_raw").fetchone()[0]
    r = Result(label, len(rows), t[0])
    if stored != len(rows):
        r.fail(f"verification failed: {stored} rows stored of {len(rows)}")
    return r


def bench_postgres(events: list[dict[str, Any]], prog: Progress) -> list[Result]:
    n = len(events)

    def skipped(reason: str) -> list[Result]:
        return [Result(case, n, skipped=reason) for case in PG_CASES]

    try:
        pgs = _load_pgserver()
    except ImportError as exc:
        return skipped(f"cannot import tests/pgserver.py: {exc}")
    bindir = pgs.find_pg_bindir()
    if bindir is None:
        return skipped("PostgreSQL binaries (initdb, pg_ctl) not found; run `make system-deps`")
    try:
        server = pgs.PgServer(bindir).start()
    except pgs.PgServerError as exc:
        return skipped(f"PostgreSQL server did not start: {str(exc).splitlines()[0]}")
    try:
        with server.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        server.create_database("bench_raw")
        server.create_database("bench_segflow")
        rows = raw_rows(events, for_sqlite=False)
        base = _pg_raw(server, rows, PG_CASES[0], False, prog)
        copy = _pg_raw(server, rows, PG_CASES[1], True, prog)
        del rows
        seg = run_segflow(server.url("bench_segflow"), events, PG_CASES[2], prog)
    finally:
        server.stop()
    base.ratio = 1.0
    base.notes.append(
        f"PostgreSQL {version} from {bindir}: throwaway server of tests/pgserver.py "
        "(fsync, synchronous_commit, full_page_writes off)"
    )
    copy.ratio = ratio(copy.seconds, base.seconds)
    copy.notes.append("ratio to the executemany baseline; no target")
    seg.ratio = ratio(seg.seconds, base.seconds)
    vs_copy = ratio(seg.seconds, copy.seconds)
    if vs_copy is not None:
        seg.notes.append(f"{vs_copy:.2f}x the raw COPY baseline's time")
    seg.check(max_ratio=MAX_RATIO)
    return [base, copy, seg]


# -- entry -------------------------------------------------------------------------------


def size(quick: bool) -> int:
    return N_QUICK if quick else N_FULL


def describe(quick: bool) -> str:
    n = size(quick)
    return (
        f"{n:,} events from `core.demo.generate(people={max(1, n // 50):,}, seed={SEED}, "
        f"days={DAYS}, end={END.isoformat()})` (first {n:,}), materialised before timing; "
        f"{BATCH:,} rows per transaction on every path. segflow: "
        f'`ingest(engine, events, source="{SOURCE}", notify=False, expected={n})` into a '
        "fresh migrated database (secondary indexes dropped during the load and rebuilt "
        "inside the timed call). Baseline: the same 13 column values, converted before "
        "timing, inserted with DB-API executemany into a bare table (same columns and "
        "types, no keys or indexes; SQLite with segflow's pragmas). Ratio = seconds / "
        "baseline seconds on the same backend. gc is frozen around every timed block."
    )


def run(quick: bool) -> list[Result]:
    n = size(quick)
    with common.console.status(f"generating {n:,} demo events"):
        events = make_events(n)
    assert all("message_id" in e for e in events[:1000])
    with common.progress() as prog:
        results = bench_sqlite(events, prog)
        results += bench_postgres(events, prog)
    return results
