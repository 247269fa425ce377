"""The real-time evaluator: one profile, from its own events, in Python.

Each condition is answered by its kind's Python form (core/segments/kinds/
or a plugin); the SQL compiler in ``sql.py`` gives the same answers. The
built-in kinds' semantics:
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

from core.segments.language import Condition, Rule
from core.segments.where import EVENT_COLUMNS


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


_COLUMNS = frozenset(EVENT_COLUMNS)


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


def next_after(as_of: datetime, times: Iterable[datetime | None]) -> datetime | None:
    """The earliest of ``times`` later than as_of: a kind's ``next_change_at``."""
    later = [t for t in times if t is not None and t > as_of]
    return min(later) if later else None


class Evaluator:
    """Evaluates rules for one profile; every condition goes through its kind."""

    def __init__(self, data: ProfileData, as_of: datetime) -> None:
        self.data = data
        self.as_of = as_of
        self.changes: list[datetime] = []

    def outcome(self, rule: Rule) -> Outcome:
        member = self.test(rule)
        return Outcome(member, min(self.changes) if self.changes else None)

    def test(self, rule: Rule) -> bool:
        if isinstance(rule, Condition):
            return self.condition(rule)
        # Every branch is evaluated (no short-circuit) so next_change_at sees all windows.
        return rule.combine([self.test(child) for child in rule.children])

    def condition(self, cond: Condition) -> bool:
        kind = cond.kind
        if kind.next_change_at is not None:
            when = kind.next_change_at(cond.params, self.data, self.as_of)
            if when is not None and when > self.as_of:
                self.changes.append(when)
        return bool(kind.python(cond.params, self.data, self.as_of))


def evaluate(rule: Rule, data: ProfileData, as_of: datetime) -> Outcome:
    return Evaluator(data, as_of).outcome(rule)
