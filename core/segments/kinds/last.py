"""``last`` / ``first``: time since the latest or earliest matching event.

    {last: {event: purchase, where: {...}, older_than: 30d, newer_than: 90d}}

Holds when that event exists with ts <= as_of - older_than and
ts > as_of - newer_than (each bound optional).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import field_validator

from core.segments.evaluate import EventRow, ProfileData, next_after
from core.segments.language import Duration, EventTypes, Strict, check_event_types
from core.segments.sql import FeatureColumns, Features, Render
from core.segments.where import Where, matching_events
from core.types import ConditionKind


class TimeSpec(Strict):
    event: EventTypes
    where: Where = ()
    older_than: Duration | None = None
    newer_than: Duration | None = None

    @field_validator("event")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_event_types(v)


class LastCondition(Strict):
    """The latest matching event exists and its time fits older_than/newer_than."""

    last: TimeSpec


class FirstCondition(Strict):
    """The earliest matching event exists and its time fits older_than/newer_than."""

    first: TimeSpec


def _pick(spec: TimeSpec, latest: bool, profile: ProfileData, as_of: datetime) -> EventRow | None:
    events = list(matching_events(profile.events, spec.event, spec.where, as_of))
    if not events:
        return None
    return (max if latest else min)(events, key=lambda e: e.ts)


class _TimeKind:
    """The two kinds differ only in which end of the matching events they read."""

    def __init__(self, latest: bool) -> None:
        self.latest = latest

    def spec(self, cond: LastCondition | FirstCondition) -> TimeSpec:
        return cond.last if self.latest else cond.first

    def python(self, cond: Any, profile: ProfileData, as_of: datetime) -> bool:
        spec = self.spec(cond)
        pick = _pick(spec, self.latest, profile, as_of)
        if pick is None:
            return False
        if spec.older_than is not None and not pick.ts <= as_of - spec.older_than:
            return False
        return spec.newer_than is None or pick.ts > as_of - spec.newer_than

    def next_change_at(self, cond: Any, profile: ProfileData, as_of: datetime) -> datetime | None:
        spec = self.spec(cond)
        pick = _pick(spec, self.latest, profile, as_of)
        if pick is None:
            return None
        return next_after(
            as_of, [pick.ts + d for d in (spec.older_than, spec.newer_than) if d is not None]
        )

    def features(self, cond: Any, request: Features) -> Render:
        spec = self.spec(cond)
        key = request.time(self.latest, spec.event, None, spec.where)
        for d in (spec.older_than, spec.newer_than):
            if d is not None:
                request.changes_at(key, d)

        def test(cols: FeatureColumns) -> sa.ColumnElement:
            t = cols[key]
            parts = [t.is_not(None)]
            if spec.older_than is not None:
                parts.append(t <= cols.as_of - spec.older_than)
            if spec.newer_than is not None:
                parts.append(t > cols.as_of - spec.newer_than)
            return sa.and_(*parts)

        return test

    def figures(
        self, cond: Any, profile: ProfileData, as_of: datetime
    ) -> tuple[dict[str, Any], list[EventRow]]:
        pick = _pick(self.spec(cond), self.latest, profile, as_of)
        if pick is None:
            return {"found": False}, []
        return {
            "found": True,
            "ts": pick.ts.isoformat(),
            "age_hours": round((as_of - pick.ts).total_seconds() / 3600, 2),
        }, [pick]

    def event_reads(self, cond: Any) -> list[tuple[str, str]]:
        spec = self.spec(cond)
        return [(type_, f.field) for type_ in spec.event for f in spec.where]


def _kind(name: str, description: str, model: type[Strict], latest: bool) -> ConditionKind:
    forms = _TimeKind(latest)
    return ConditionKind(
        name,
        description,
        forms.python,
        validate=model.model_validate,
        flat=True,
        features=forms.features,
        next_change_at=forms.next_change_at,
        figures=forms.figures,
        event_reads=forms.event_reads,
    )


# Built once: equal kinds keep parsed definitions cached across registries.
LAST = _kind("last", "time since the latest matching event", LastCondition, True)
FIRST = _kind("first", "time since the earliest matching event", FirstCondition, False)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(LAST)
    register(FIRST)
