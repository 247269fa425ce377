"""``segment``: membership of another segment at the same as_of.

    {segment: high_intent}

Batch: the other segment's rule is compiled in place (its features are shared
like any others). Real time: the other segment is evaluated first and its
answer read from ``ProfileData.segments``. Cycles are rejected when
definitions load.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.segments.evaluate import ProfileData
from core.segments.language import Strict
from core.segments.sql import Features, Render
from core.types import ConditionKind


class SegmentRef(Strict):
    segment: str


def python(cond: SegmentRef, profile: ProfileData, as_of: datetime) -> bool:
    return bool(profile.segments.get(cond.segment, False))


def features(cond: SegmentRef, request: Features) -> Render:
    return request.segment(cond.segment)


def figures(cond: SegmentRef, profile: ProfileData, as_of: datetime):
    return {"member": bool(profile.segments.get(cond.segment))}, []


def refs(cond: SegmentRef) -> list[str]:
    return [cond.segment]


SEGMENT = ConditionKind(
    "segment",
    "member of another segment",
    python,
    validate=SegmentRef.model_validate,
    flat=True,
    features=features,
    figures=figures,
    segment_refs=refs,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(SEGMENT)
