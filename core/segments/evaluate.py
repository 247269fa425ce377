"""The real-time evaluator: one profile, from its own events, in Python.

Semantics (the SQL compiler in ``sql.py`` implements the same):
- every condition sees only events with ts <= as_of; ``within: d`` means
  ts in (as_of - d, as_of];
- ``count`` defaults to ">= 1"; "== 0" holds for people without events;
  ``sum`` of no values is 0; ``min``/``max``/``avg`` of no values never match;
  ``distinct`` counts distinct values (JSON text) of the field;
- ``per: session`` holds when one session (events with a session_id) alone
  satisfies the measure;
- ``last``/``first``: the latest/earliest matching event exists, with
  ts <= as_of - older_than and ts > as_of - newer_than;
- ``sequence``: the latest ``first`` event is in (as_of - lookback,
  as_of - within] and no ``then_not`` event is later than it;
- filters and attribute tests match only values of the literal's type
  (``values.matches``).

``next_change_at`` is the earliest time after as_of at which a window or age
test could flip with no new event; re-evaluating then is always safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.segments.language import (
    AllOf,
    AnyOf,
    AttributeCondition,
    ConsentCondition,
    EventCondition,
    FirstCondition,
    LastCondition,
    NotOf,
    PluginCondition,
    ScoreCondition,
    SegmentRef,
    SequenceCondition,
    TimeSpec,
)
from core.segments.values import distinct_key, matches, number


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event as the evaluators see it."""

    type: str
    ts: datetime
    session_id: str | None = None
    product_id: str | None = None
    value: float | None = None
    currency: str | None = None
    url: str | None = None
    campaign: str | None = None
    source: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None

    def get(self, name: str) -> Any:
        if name.startswith("properties."):
            return self.properties.get(name.removeprefix("properties."))
        if name in _COLUMNS:
            return getattr(self, name)
        return self.properties.get(name)


_COLUMNS = frozenset(
    {"type", "session_id", "product_id", "value", "currency", "url", "campaign", "source"}
)


@dataclass
class ProfileData:
    events: list[EventRow] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    consents: set[str] = field(default_factory=set)
    scores: dict[str, float] = field(default_factory=dict)
    # Membership of other segments at the same as_of (evaluated first).
    segments: dict[str, bool] = field(default_factory=dict)


@dataclass
class Outcome:
    member: bool
    next_change_at: datetime | None


class Evaluator:
    def __init__(
        self,
        data: ProfileData,
        as_of: datetime,
        plugins: dict[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.as_of = as_of
        self.plugins = plugins
        self.visible = [e for e in data.events if e.ts <= as_of]
        self.changes: list[datetime] = []

    def _note(self, when: datetime) -> None:
        if when > self.as_of:
            self.changes.append(when)

    def outcome(self, rule: Any) -> Outcome:
        member = self.test(rule)
        return Outcome(member, min(self.changes) if self.changes else None)

    def test(self, rule: Any) -> bool:
        # Every branch is evaluated (no short-circuit) so next_change_at sees all windows.
        if isinstance(rule, AllOf):
            return all([self.test(r) for r in rule.all])
        if isinstance(rule, AnyOf):
            return any([self.test(r) for r in rule.any])
        if isinstance(rule, NotOf):
            return not self.test(rule.not_)
        if isinstance(rule, EventCondition):
            return self._event(rule)
        if isinstance(rule, LastCondition):
            return self._time(rule.last, last=True)
        if isinstance(rule, FirstCondition):
            return self._time(rule.first, last=False)
        if isinstance(rule, SequenceCondition):
            return self._sequence(rule)
        if isinstance(rule, AttributeCondition):
            spec = rule.attribute
            value = self.data.attributes.get(spec.attribute)
            if spec.op == "exists":
                return value is not None
            if spec.op == "not_exists":
                return value is None
            return matches(value, spec.op, spec.value)
        if isinstance(rule, ConsentCondition):
            return rule.consent in self.data.consents
        if isinstance(rule, ScoreCondition):
            return rule.score.op.test(self.data.scores.get(rule.score.score))
        if isinstance(rule, SegmentRef):
            return bool(self.data.segments.get(rule.segment, False))
        if isinstance(rule, PluginCondition):
            if self.plugins is None:
                from core.segments.conditions import condition_kinds

                self.plugins = condition_kinds()
            if rule.kind not in self.plugins:
                raise LookupError(f"no plugin provides condition kind {rule.kind!r}")
            return bool(self.plugins[rule.kind].python(rule.params, self.data, self.as_of))
        raise TypeError(f"unknown rule {rule!r}")

    # -- conditions ---------------------------------------------------------------
    def _matching(self, types: Iterable[str], where: tuple, lower: datetime | None = None):
        types = set(types)
        for e in self.visible:
            if e.type not in types or (lower is not None and e.ts <= lower):
                continue
            if all(matches(e.get(f.field), f.op, f.value) for f in where):
                yield e

    def _event(self, cond: EventCondition) -> bool:
        lower = self.as_of - cond.within if cond.within is not None else None
        events = list(self._matching(cond.event, cond.where, lower))
        if cond.within is not None and events:
            # The oldest event in the window leaves it first.
            self._note(min(e.ts for e in events) + cond.within)
        kind, agg, compare = cond.measure
        if cond.per == "session":
            sessions: dict[str, list[EventRow]] = {}
            for e in events:
                if e.session_id is not None:
                    sessions.setdefault(e.session_id, []).append(e)
            return any(compare.test(measure(kind, agg, evs)) for evs in sessions.values())
        return compare.test(measure(kind, agg, events))

    def _time(self, spec: TimeSpec, last: bool) -> bool:
        times = [e.ts for e in self._matching(spec.event, spec.where)]
        if not times:
            return False
        t = max(times) if last else min(times)
        ok = True
        if spec.older_than is not None:
            self._note(t + spec.older_than)
            ok = ok and t <= self.as_of - spec.older_than
        if spec.newer_than is not None:
            self._note(t + spec.newer_than)
            ok = ok and t > self.as_of - spec.newer_than
        return ok

    def _sequence(self, cond: SequenceCondition) -> bool:
        spec = cond.sequence
        starts = [e.ts for e in self._matching(spec.first, ())]
        if not starts:
            return False
        a = max(starts)
        self._note(a + spec.within)
        self._note(a + spec.lookback)
        if not (self.as_of - spec.lookback < a <= self.as_of - spec.within):
            return False
        return not any(e.ts > a for e in self._matching(spec.then_not, ()))


def measure(kind: str, agg: Any, events: list[EventRow]) -> float | None:
    if kind == "count":
        return float(len(events))
    values = [e.get(agg.property) for e in events]
    if kind == "distinct":
        return float(len({k for v in values if (k := distinct_key(v)) is not None}))
    nums = [n for v in values if (n := number(v)) is not None]
    if kind == "sum":
        return float(sum(nums))
    if not nums:
        return None
    if kind == "min":
        return float(min(nums))
    if kind == "max":
        return float(max(nums))
    return sum(nums) / len(nums)


def evaluate(
    rule: Any,
    data: ProfileData,
    as_of: datetime,
    plugins: dict[str, Any] | None = None,
) -> Outcome:
    return Evaluator(data, as_of, plugins).outcome(rule)
