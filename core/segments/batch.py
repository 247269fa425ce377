"""Evaluate many segments for many profiles in SQL, in one query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from core.db.sql import chunks
from core.segments.language import Segment, check_references
from core.segments.sql import Compiler


@dataclass
class BatchResult:
    members: dict[str, set[int]]
    next_change_at: dict[int, datetime]
    evaluated: set[int]


def evaluate_sql(
    conn: Connection,
    segments: dict[str, Segment],
    as_of: datetime,
    profile_ids: list[int] | None = None,
    only: set[str] | None = None,
) -> BatchResult:
    """Members of each segment as of ``as_of`` among ``profile_ids`` (None: all).

    ``only`` restricts the answer to some segments; the others are still there
    for ``segment:`` references.
    """
    check_references(segments)
    compiler = Compiler(as_of, {n: s.rule for n, s in segments.items()})
    wanted = {n: s for n, s in segments.items() if only is None or n in only}
    compiled = {name: compiler.compile(seg.rule) for name, seg in wanted.items()}
    members: dict[str, set[int]] = {name: set() for name in wanted}
    next_change: dict[int, datetime] = {}
    evaluated: set[int] = set()
    id_sets = [None] if profile_ids is None else list(chunks(sorted(profile_ids), 5000))
    for ids in id_sets:
        stmt, change_cols = compiler.query(compiled, list(ids) if ids is not None else None)
        for row in conn.execute(stmt).mappings():
            pid = row["profile_id"]
            evaluated.add(pid)
            for name in wanted:
                if row[f"seg_{name}"]:
                    members[name].add(pid)
            times = [
                row[col] + delta
                for col, delta in change_cols
                if row[col] is not None and row[col] + delta > as_of
            ]
            if times:
                next_change[pid] = min(times)
    return BatchResult(members, next_change, evaluated)
