"""Evaluating a workflow's rules (entry, filter, exit_when, if, wait until) for
its people, with the segment evaluators: the same semantics as segments.

A rule may read other segments (``{segment: vip}``); their rules are evaluated
with it at the same time, as a segment run would. Few people: the Python
evaluator on each one's events; many: one SQL evaluation for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.engine import Connection

from core.segments.batch import evaluate_sql
from core.segments.data import ProfilesLoader
from core.segments.evaluate import ProfileData, evaluate
from core.segments.kinds import ConditionKinds
from core.segments.language import Rule, Segment, check_references, segment_refs
from core.segments.store import stored_segments

# Up to this many people, each is evaluated in Python from their own events.
PYTHON_LIMIT = 20
RULE = "workflow_rule"


class RuleEvaluator:
    """Rules for people at a time, with the stored segments they refer to."""

    def __init__(self, conn: Connection, kinds: ConditionKinds) -> None:
        self.conn = conn
        self.segments = {n: s.segment for n, s in stored_segments(conn, kinds).items()}
        self._data: dict[tuple[int, datetime], ProfileData] = {}
        self._loader = ProfilesLoader(conn)

    def want(self, pids: Iterable[int], until: datetime) -> None:
        """Rules may be evaluated for ``pids`` at times up to ``until``: their
        data is read for all of them at once, when the first is needed."""
        self._loader.want(pids, until)

    def _needed(self, rule: Rule) -> dict[str, Segment]:
        out: dict[str, Segment] = {}
        todo = list(segment_refs(rule))
        while todo:
            name = todo.pop()
            if name in out:
                continue
            seg = self.segments.get(name)
            if seg is None:
                from core.segments.language import SegmentError

                raise SegmentError(f"a workflow rule refers to unknown segment '{name}'")
            out[name] = seg
            todo.extend(seg.dependencies())
        return out

    def data(self, pid: int, at: datetime) -> ProfileData:
        key = (pid, at)
        if key not in self._data:
            if len(self._data) > 5000:
                self._data.clear()
            self._data[key] = self._loader.get(pid, at)
        return self._data[key]

    def one(self, rule: Rule, pid: int, at: datetime) -> tuple[bool, datetime | None]:
        """Whether the rule holds for one person at ``at``, and the next time it
        could change with no new event (None: only an event can change it)."""
        needed = self._needed(rule)
        data = self.data(pid, at)
        times = []
        for name in check_references(needed) if needed else ():
            if name not in data.segments:
                outcome = evaluate(needed[name].rule, data, at)
                data.segments[name] = outcome.member
                times.append(outcome.next_change_at)
        outcome = evaluate(rule, data, at)
        times.append(outcome.next_change_at)
        later = [t for t in times if t is not None]
        return outcome.member, min(later) if later else None

    def members(self, rule: Rule, pids: Iterable[int], at: datetime) -> set[int]:
        """Those of ``pids`` for whom the rule holds at ``at``."""
        ids = sorted(set(pids))
        if len(ids) <= PYTHON_LIMIT:
            self.want(ids, at)
            return {pid for pid in ids if self.one(rule, pid, at)[0]}
        segments = {**self._needed(rule), RULE: Segment(name=RULE, rule=rule)}
        result = evaluate_sql(self.conn, segments, at, ids, only={RULE})
        return result.members[RULE]
