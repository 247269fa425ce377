"""Real-time evaluation: re-evaluate the profiles that just received events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from core.db.sql import param_mark
from core.segments.batch import BatchResult, db_time, evaluate_sql, time_reader
from core.segments.data import load_profile_data
from core.segments.evaluate import evaluate
from core.segments.kinds import ConditionKinds
from core.segments.language import check_references
from core.segments.store import (
    ChangeListener,
    _apply,
    _retire_merged,
    segments_by_name,
    stored_segments,
)
from core.segments.writes import select_pairs
from core.types import Change

# Above this many profiles in one batch, one SQL query beats loading each
# profile's events (measured with bench/api.py: /v1/track gained 10-15% when
# this went from 20 to 2); both give the same answer (property-tested).
PYTHON_LIMIT = 2


def evaluate_profiles(
    engine: Engine,
    profile_ids: set[int],
    as_of: datetime | None = None,
    *,
    kinds: ConditionKinds,
    on_change: ChangeListener | None = None,
) -> list[Change]:
    """Re-evaluate every saved segment (parsed with ``kinds``) for these
    profiles; record the changes, hand them to ``on_change`` and return them."""
    as_of = as_of or datetime.now(UTC)
    with engine.begin() as conn:
        segs = stored_segments(conn, kinds)
        if not segs or not profile_ids:
            return []
        segments = segments_by_name(segs)
        ids = sorted(profile_ids)
        if len(ids) > PYTHON_LIMIT:
            result = evaluate_sql(conn, segments, as_of, ids)
        else:
            result = _python(conn, segments, ids, as_of)
        changes = _apply(conn, segs, result, as_of, ids, set())
        _retire_merged(conn, segs, as_of, changes, into=ids)
    if changes and on_change is not None:
        on_change(changes)
    return changes


def _python(conn: Any, segments: dict, ids: list[int], as_of: datetime) -> BatchResult:
    order = check_references(segments)
    result = BatchResult({n: set() for n in segments}, {}, set())
    cur = conn.connection.cursor()
    try:
        live = {
            pid
            for (pid,) in select_pairs(
                cur, conn.dialect, "SELECT id FROM profiles WHERE merged_into IS NULL", "id", ids
            )
        }
    finally:
        cur.close()
    for pid in ids:
        if pid not in live:
            continue
        data = load_profile_data(conn, pid, as_of)
        times = []
        for name in order:
            outcome = evaluate(segments[name].rule, data, as_of)
            data.segments[name] = outcome.member
            if outcome.member:
                result.members[name].add(pid)
            if outcome.next_change_at is not None:
                times.append(outcome.next_change_at)
        result.evaluated.add(pid)
        if times:
            result.next_change_at[pid] = min(times)
        first = _first_after(conn, pid, as_of)
        if first is not None:
            result.first_after[pid] = first
    return result


def _first_after(conn: Any, pid: int, as_of: datetime) -> datetime | None:
    """The profile's first event stored with a time after as_of (see BatchResult)."""
    mark = param_mark(conn.dialect)
    cur = conn.connection.cursor()
    try:
        cur.execute(
            f"SELECT min(ts) FROM events WHERE profile_id = {mark} AND ts > {mark}",
            (pid, db_time(conn.dialect.name, as_of)),
        )
        (first,) = cur.fetchone()
    finally:
        cur.close()
    return None if first is None else time_reader(conn.dialect.name)(first)
