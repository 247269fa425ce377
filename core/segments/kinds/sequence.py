"""``sequence``: A then no B within T (cart abandonment).

    {sequence: {first: add_to_cart, then_not: purchase, within: 24h, lookback: 7d}}

Holds when the latest ``first`` event is in (as_of - lookback, as_of - within]
and no ``then_not`` event came after it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import field_validator, model_validator

from core.segments.evaluate import EventRow, ProfileData, next_after
from core.segments.language import Duration, EventTypes, Strict, check_event_types
from core.segments.sql import FeatureColumns, Features, Render
from core.segments.where import matching_events
from core.types import ConditionKind


class SequenceSpec(Strict):
    first: EventTypes
    then_not: EventTypes
    within: Duration
    lookback: Duration

    @field_validator("first", "then_not")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_event_types(v)

    @model_validator(mode="after")
    def _windows(self) -> SequenceSpec:
        if self.lookback <= self.within:
            raise ValueError("lookback must be longer than within")
        return self


class SequenceCondition(Strict):
    """The latest ``first`` event is in (as_of - lookback, as_of - within] and no
    ``then_not`` event came after it: cart abandonment."""

    sequence: SequenceSpec


def _start(spec: SequenceSpec, profile: ProfileData, as_of: datetime) -> EventRow | None:
    starts = list(matching_events(profile.events, spec.first, (), as_of))
    return max(starts, key=lambda e: e.ts) if starts else None


def _later(spec: SequenceSpec, profile: ProfileData, as_of: datetime, a: EventRow):
    return [e for e in matching_events(profile.events, spec.then_not, (), as_of) if e.ts > a.ts]


def python(cond: SequenceCondition, profile: ProfileData, as_of: datetime) -> bool:
    spec = cond.sequence
    a = _start(spec, profile, as_of)
    if a is None or not (as_of - spec.lookback < a.ts <= as_of - spec.within):
        return False
    return not _later(spec, profile, as_of, a)


def next_change_at(
    cond: SequenceCondition, profile: ProfileData, as_of: datetime
) -> datetime | None:
    spec = cond.sequence
    a = _start(spec, profile, as_of)
    return None if a is None else next_after(as_of, [a.ts + spec.within, a.ts + spec.lookback])


def features(cond: SequenceCondition, request: Features) -> Render:
    spec = cond.sequence
    # Both latest times read only the lookback: a start before it never
    # matches nor changes, and a then_not event before it is older than any
    # start that matches, so the answers and next changes are the same.
    a_key = request.time(True, spec.first, spec.lookback, ())
    b_key = request.time(True, spec.then_not, spec.lookback, ())
    request.changes_at(a_key, spec.within)
    request.changes_at(a_key, spec.lookback)

    def test(cols: FeatureColumns) -> sa.ColumnElement:
        a, b = cols[a_key], cols[b_key]
        return sa.and_(
            a.is_not(None),
            a > cols.as_of - spec.lookback,
            a <= cols.as_of - spec.within,
            sa.or_(b.is_(None), b <= a),
        )

    return test


def figures(
    cond: SequenceCondition, profile: ProfileData, as_of: datetime
) -> tuple[dict[str, Any], list[EventRow]]:
    spec = cond.sequence
    a = _start(spec, profile, as_of)
    if a is None:
        return {"first_found": False}, []
    later = _later(spec, profile, as_of, a)
    return {
        "first_at": a.ts.isoformat(),
        "window": [(as_of - spec.lookback).isoformat(), (as_of - spec.within).isoformat()],
        "then_not_after": len(later),
    }, [a, *later]


SEQUENCE = ConditionKind(
    "sequence",
    "an event not followed by another within a time (cart abandonment)",
    python,
    validate=SequenceCondition.model_validate,
    flat=True,
    features=features,
    next_change_at=next_change_at,
    figures=figures,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(SEQUENCE)
