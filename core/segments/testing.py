"""Segment tests: named test profiles with known behaviour and the expected result.

A segment file may carry ``tests:``; each test lists events relative to as_of
(``ago: 3h``) plus attributes, consents and scores, and expects ``in`` or
``out``. They run through the real-time evaluator, like pytest runs tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from core.privacy.consent import purpose_name
from core.segments.evaluate import EventRow, ProfileData, evaluate
from core.segments.language import SegmentError, check_references, parse_duration
from core.segments.store import SegmentFile, segments_by_name

# A test event is an EventRow written relative to as_of: ``ago`` instead of ts.
EVENT_KEYS = ({f.name for f in fields(EventRow)} - {"ts", "message_id"}) | {"ago"}


@dataclass
class TestOutcome:
    file: str
    segment: str
    test: str
    expected: str
    got: str
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.expected == self.got

    @property
    def nodeid(self) -> str:
        return f"{self.file}::{self.segment}::{self.test}"


def build_profile(test: Any, as_of: datetime, where: str) -> ProfileData:
    events = []
    for i, raw in enumerate(test.events):
        unknown = set(raw) - EVENT_KEYS
        if unknown or "type" not in raw or "ago" not in raw:
            raise SegmentError(
                f"event {i}: needs type and ago; unknown keys {sorted(unknown)}"
                if unknown
                else f"event {i}: needs type and ago",
                path=where,
            )
        fields = {k: v for k, v in raw.items() if k not in ("ago", "properties")}
        events.append(
            EventRow(
                ts=as_of - parse_duration(raw["ago"]),
                properties=raw.get("properties") or {},
                **fields,
            )
        )
    return ProfileData(
        events=events,
        attributes=dict(test.attributes),
        # Old purpose names (``email``) as the rules read them.
        consents={purpose_name(c) for c in test.consents},
        scores=dict(test.scores),
    )


def run_tests(segments: dict[str, SegmentFile], as_of: datetime | None = None) -> list[TestOutcome]:
    as_of = as_of or datetime.now(UTC)
    plain = segments_by_name(segments)
    order = check_references(plain)
    outcomes = []
    for name in sorted(segments):
        segment, file = segments[name].segment, segments[name].file
        for test in segment.tests:
            try:
                data = build_profile(test, as_of, f"tests.{test.name}")
                for dep in order:  # other segments the rule refers to, for this profile
                    if dep != name:
                        data.segments[dep] = evaluate(plain[dep].rule, data, as_of).member
                got = "in" if evaluate(segment.rule, data, as_of).member else "out"
                outcomes.append(TestOutcome(file, name, test.name, test.expect, got))
            except (SegmentError, ValueError, TypeError) as exc:
                outcomes.append(TestOutcome(file, name, test.name, test.expect, "error", str(exc)))
    return outcomes
