"""``event``: events of some types in a window, counted or aggregated.

    {event: product_view, within: 48h, count: ">= 3", where: {...}, per: session}

``count`` defaults to ">= 1" and "== 0" holds for people without events;
``sum`` of no values is 0, ``min``/``max``/``avg`` of no values never match;
``distinct`` counts distinct values by their JSON text; ``per: session``
holds when one session (events with a session id) alone satisfies the measure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import ConfigDict, field_validator, model_validator

from core.segments.evaluate import EventRow, ProfileData
from core.segments.language import (
    Compare,
    Comparison,
    Duration,
    EventTypes,
    Strict,
    check_event_types,
)
from core.segments.sql import FeatureColumns, Features, Render, compare_sql
from core.segments.values import distinct_key, number
from core.segments.where import Where, field_ref, matching_events
from core.types import ConditionKind

MEASURES = ("count", "sum", "min", "max", "avg", "distinct")


class Aggregate(Strict):
    model_config = ConfigDict(frozen=True, extra="forbid")

    property: str
    op: Comparison

    @field_validator("property")
    @classmethod
    def _prop(cls, v: str) -> str:
        field_ref(v)  # a valid field name; text fields simply never sum (typed reads)
        return v


class EventCondition(Strict):
    """Events of some types in a window, counted or aggregated."""

    event: EventTypes
    within: Duration | None = None
    count: Comparison | None = None
    sum: Aggregate | None = None
    min: Aggregate | None = None
    max: Aggregate | None = None
    avg: Aggregate | None = None
    distinct: Aggregate | None = None
    where: Where = ()
    per: Literal["session"] | None = None

    @field_validator("event")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_event_types(v)

    @model_validator(mode="after")
    def _one_measure(self) -> EventCondition:
        measures = [m for m in MEASURES if getattr(self, m)]
        if len(measures) > 1:
            raise ValueError(f"use one of count/sum/min/max/avg/distinct, not {measures}")
        return self

    @property
    def measure(self) -> tuple[str, Aggregate | None, Compare]:
        """(kind, aggregate or None for count, comparison)."""
        for kind in MEASURES[1:]:
            agg = getattr(self, kind)
            if agg is not None:
                return kind, agg, agg.op
        return "count", None, self.count or Compare(op=">=", value=1)


def measure(kind: str, agg: Aggregate | None, events: list[EventRow]) -> float | None:
    """The measure over these events; None when min/max/avg have no values."""
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


def _window_start(cond: EventCondition, as_of: datetime) -> datetime | None:
    return as_of - cond.within if cond.within is not None else None


def _events(cond: EventCondition, profile: ProfileData, as_of: datetime) -> list[EventRow]:
    start = _window_start(cond, as_of)
    return list(matching_events(profile.events, cond.event, cond.where, as_of, start))


def _sessions(events: list[EventRow]) -> dict[str, list[EventRow]]:
    sessions: dict[str, list[EventRow]] = {}
    for e in events:
        if e.session_id is not None:
            sessions.setdefault(e.session_id, []).append(e)
    return sessions


# -- Python form ------------------------------------------------------------------------


def python(cond: EventCondition, profile: ProfileData, as_of: datetime) -> bool:
    events = _events(cond, profile, as_of)
    kind, agg, compare = cond.measure
    if cond.per == "session":
        return any(compare.test(measure(kind, agg, evs)) for evs in _sessions(events).values())
    return compare.test(measure(kind, agg, events))


def next_change_at(cond: EventCondition, profile: ProfileData, as_of: datetime) -> datetime | None:
    if cond.within is None:
        return None
    events = _events(cond, profile, as_of)
    # The oldest event in the window leaves it first.
    return min(e.ts for e in events) + cond.within if events else None


# -- SQL feature form ----------------------------------------------------------------------


def features(cond: EventCondition, request: Features) -> Render:
    kind, agg, cmp = cond.measure
    prop = agg.property if agg is not None else None
    if cond.within is not None:
        oldest = request.time(False, cond.event, cond.within, cond.where)
        request.changes_at(oldest, cond.within)
    if cond.per == "session":
        key = request.session_measure(kind, prop, cond.event, cond.within, cond.where, cmp)
        return lambda cols: sa.func.coalesce(cols.session(key), 0) == 1
    key = request.measure(kind, prop, cond.event, cond.within, cond.where)

    def test(cols: FeatureColumns) -> sa.ColumnElement:
        x = cols[key]
        if kind in ("count", "sum", "distinct"):
            x = sa.func.coalesce(x, 0)
        return sa.and_(x.is_not(None), compare_sql(x, cmp))

    return test


# -- explain ----------------------------------------------------------------------------------


def figures(
    cond: EventCondition, profile: ProfileData, as_of: datetime
) -> tuple[dict[str, Any], list[EventRow]]:
    start = _window_start(cond, as_of)
    events = _events(cond, profile, as_of)
    kind, agg, compare = cond.measure
    shown: dict[str, Any] = {
        "window_start": start.isoformat() if start else None,
        "matching_events": len(events),
    }
    if cond.per == "session":
        # The first session that satisfies the measure, else the first one seen.
        best = None
        for sid, evs in _sessions(events).items():
            value = measure(kind, agg, evs)
            if compare.test(value) or best is None:
                best = (sid, value, evs)
                if compare.test(value):
                    break
        if best:
            shown |= {"session_id": best[0], kind: best[1]}
            events = best[2]
    else:
        shown[kind] = measure(kind, agg, events)
    shown["test"] = f"{kind} {compare}"
    return shown, events


def event_fields(cond: EventCondition) -> list[tuple[str, str]]:
    """The (type, field) pairs an aggregate reads; a count reads no field."""
    kind, agg, _ = cond.measure
    if agg is None:
        return []
    return [(type_, agg.property) for type_ in cond.event]


def event_reads(cond: EventCondition) -> list[tuple[str, str]]:
    """The aggregated field and every field a ``where`` filter tests, per type."""
    fields = {f.field for f in cond.where}
    fields.update(name for _, name in event_fields(cond))
    return [(type_, name) for type_ in cond.event for name in sorted(fields)]


EVENT = ConditionKind(
    "event",
    "events of some types in a window, counted or aggregated",
    python,
    validate=EventCondition.model_validate,
    flat=True,
    features=features,
    next_change_at=next_change_at,
    figures=figures,
    event_fields=event_fields,
    event_reads=event_reads,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(EVENT)
