"""Evaluate many segments for many profiles in SQL, in one query.

``statements`` builds the exact SQL a run executes (``segflow segments sql``
prints it); ``evaluate_sql`` executes it through the driver and reads the rows
without per-row type processing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.db.sql import param_mark, sqlite_time
from core.segments.language import Segment, check_references
from core.segments.sql import ONE_SCAN, PLANS, SPLIT_SCANS, TYPE_SCANS, Compiler

# Candidate profile ids of an incremental or real-time evaluation; the event
# scans join it so they read only those profiles' events.
IDS_TABLE = "segflow_eval_ids"
_IDS = sa.Table(IDS_TABLE, sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True))

# The plan each dialect runs by default, chosen by measurement (bench/README.md).
DEFAULT_PLANS = {"sqlite": TYPE_SCANS, "postgresql": TYPE_SCANS}

# Above this share of all profiles, candidates are evaluated by the full
# plan (one pass over the events) and the rows of the others dropped: looking
# up most profiles' events one by one costs more than reading them all.
FULL_PLAN_SHARE = 0.25


@dataclass
class BatchResult:
    members: dict[str, set[int]]
    next_change_at: dict[int, datetime]  # the rules' own (a window expiring)
    evaluated: set[int]
    # The first event already stored after as_of, per profile that has one: it
    # comes into view as as_of passes it (``next_changes`` merges the two).
    first_after: dict[int, datetime] = field(default_factory=dict)

    def next_changes(self) -> dict[int, datetime]:
        out = dict(self.next_change_at)
        for pid, t in self.first_after.items():
            if pid not in out or t < out[pid]:
                out[pid] = t
        return out


@dataclass(frozen=True)
class Statements:
    """What an evaluation executes, in order, for one dialect.

    ``setup`` prepares the candidate-id table and ``load`` fills it (its one
    parameter: the ids) when the evaluation is incremental; ``query`` returns
    profile_id, one 0/1 column per name in ``names``, then one time column
    per delta in ``changes`` (a next change is that time + delta); ``future``
    returns profile_id and the first stored event after as_of (a next change
    too).
    """

    setup: tuple[str, ...]
    load: str | None
    analyze: tuple[str, ...]
    query: str
    future: str
    names: tuple[str, ...]
    changes: tuple[timedelta, ...]
    plan: str

    def script(self) -> list[str]:
        """Every statement, the id load shown with its parameter named."""
        out = list(self.setup)
        if self.load is not None:
            out.append(f"-- the candidate profile ids, one parameter\n{self.load}")
        return out + list(self.analyze) + [self.query, self.future]


def statements(
    segments: dict[str, Segment],
    as_of: datetime,
    dialect: sa.Dialect,
    *,
    incremental: bool = False,
    only: set[str] | None = None,
    plan: str | None = None,
) -> Statements:
    """The SQL that evaluates ``segments`` (``only`` some of them, the others
    still there for ``segment:`` references) as of ``as_of``."""
    check_references(segments)
    plan = plan or DEFAULT_PLANS.get(dialect.name, ONE_SCAN)
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; plans: {', '.join(PLANS)}")
    compiler = Compiler(as_of, {n: s.rule for n, s in segments.items()})
    wanted = [n for n in segments if only is None or n in only]
    compiled = {name: compiler.compile(segments[name].rule) for name in wanted}
    ids = _IDS if incremental else None
    stmt, change_cols = compiler.query(compiled, ids=ids, plan=plan)
    literal = {"literal_binds": True}
    query = str(stmt.compile(dialect=dialect, compile_kwargs=literal))
    future = str(compiler.future_events(ids).compile(dialect=dialect, compile_kwargs=literal))
    setup: tuple[str, ...] = ()
    load = None
    analyze: tuple[str, ...] = ()
    if incremental:
        big = "INTEGER" if dialect.name == "sqlite" else "BIGINT"
        setup = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {IDS_TABLE} (id {big} PRIMARY KEY)",
            f"DELETE FROM {IDS_TABLE}",
        )
        if dialect.name == "postgresql":
            load = f"INSERT INTO {IDS_TABLE} (id) SELECT unnest(%s::bigint[])"
            # Temporary tables are never auto-analysed: without this the
            # planner guesses their size and may scan all events.
            analyze = (f"ANALYZE {IDS_TABLE}",)
        else:
            load = f"INSERT INTO {IDS_TABLE} (id) VALUES ({param_mark(dialect)})"
    return Statements(
        setup, load, analyze, query, future, tuple(wanted), tuple(d for _, d in change_cols), plan
    )


def evaluate_sql(
    conn: Connection,
    segments: dict[str, Segment],
    as_of: datetime,
    profile_ids: Sequence[int] | set[int] | None = None,
    only: set[str] | None = None,
    *,
    plan: str | None = None,
    lookup: bool | None = None,
) -> BatchResult:
    """Members of each segment as of ``as_of`` among ``profile_ids`` (None: all).

    ``only`` restricts the answer to some segments; the others are still there
    for ``segment:`` references. ``plan`` forces one of the compiler's plans
    (``core.segments.sql.PLANS``) instead of the dialect's default; ``lookup``
    forces how ``profile_ids`` are read: True, their events looked up by
    profile; False, one pass over all events, other profiles dropped; None,
    the first unless they are more than FULL_PLAN_SHARE of all profiles.
    """
    ids = None if profile_ids is None else sorted(set(profile_ids))
    keep: set[int] | None = None
    if ids is not None and lookup is None:
        lookup = len(ids) <= FULL_PLAN_SHARE * _profile_span(conn)
    if ids is not None and not lookup:
        keep, ids = set(ids), None
    incremental = ids is not None
    st = statements(segments, as_of, conn.dialect, incremental=incremental, only=only, plan=plan)
    members: dict[str, set[int]] = {name: set() for name in st.names}
    next_change: dict[int, datetime] = {}
    evaluated: set[int] = set()
    if ids is not None and not ids:
        return BatchResult(members, next_change, evaluated)
    cur = conn.connection.cursor()
    try:
        if ids is not None:
            for sql in st.setup:
                cur.execute(sql)
            if conn.dialect.name == "postgresql":
                cur.execute(st.load, (ids,))
            else:
                cur.executemany(st.load, [(i,) for i in ids])
            for sql in st.analyze:
                cur.execute(sql)
        cur.execute(st.query)
        parse = time_reader(conn.dialect.name)
        n = len(st.names)
        columns = [members[name] for name in st.names]
        # A window expiring at or before as_of is no next change: the raw value
        # is compared with as_of - delta in the driver's form (fixed-width text
        # on SQLite), so only the times that matter are parsed.
        deltas = [
            (i, delta, db_time(conn.dialect.name, as_of - delta))
            for i, delta in enumerate(st.changes, start=1 + n)
        ]
        for row in _fetch(cur):
            pid = row[0]
            if keep is not None and pid not in keep:
                continue
            evaluated.add(pid)
            for i, into in enumerate(columns, start=1):
                if row[i]:
                    into.add(pid)
            best = None
            for i, delta, bound in deltas:
                if row[i] is not None and row[i] > bound:
                    t = parse(row[i]) + delta
                    if best is None or t < best:
                        best = t
            if best is not None:
                next_change[pid] = best
        cur.execute(st.future)
        first_after = {pid: parse(t) for pid, t in _fetch(cur) if pid in evaluated}
        if ids is not None:
            cur.execute(st.setup[-1])
    finally:
        cur.close()
    return BatchResult(members, next_change, evaluated, first_after)


def _profile_span(conn: Connection) -> int:
    # The largest id stands for the number of profiles: a key lookup, where
    # count(*) would scan.
    return conn.exec_driver_sql("SELECT max(id) FROM profiles").scalar() or 0


def _fetch(cur: Any) -> Iterator[tuple]:
    while rows := cur.fetchmany(10_000):
        yield from rows


def time_reader(dialect: str):
    """Driver values of a timestamp column as aware UTC datetimes."""
    if dialect == "sqlite":
        # SQLite hands back the stored text (naive UTC, fixed width).
        return lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC)
    return lambda value: value.astimezone(UTC) if value.tzinfo is not UTC else value


def db_time(dialect: str, value: datetime) -> Any:
    """A timestamp as the driver writes it for this dialect (UTC)."""
    if dialect == "sqlite":
        return sqlite_time(value)
    return value.astimezone(UTC)


__all__ = [
    "DEFAULT_PLANS",
    "ONE_SCAN",
    "PLANS",
    "SPLIT_SCANS",
    "TYPE_SCANS",
    "BatchResult",
    "Statements",
    "db_time",
    "evaluate_sql",
    "statements",
]
