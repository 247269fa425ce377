"""Segments: the definition language, its evaluators and membership state."""

from core.segments.kinds import ConditionKinds
from core.segments.language import (
    Segment,
    SegmentError,
    check_references,
    parse_duration,
    parse_rule,
    parse_segment,
)

__all__ = [
    "ConditionKinds",
    "Segment",
    "SegmentError",
    "check_references",
    "parse_duration",
    "parse_rule",
    "parse_segment",
]
