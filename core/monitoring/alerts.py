"""What a monitoring check reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class Alert:
    """One finding of a check, about one subject on one UTC day."""

    # segment_drift | source_freshness | data_quality | misclassified_segment | a plugin's name
    check: str
    # What it is about: a segment name, "source/type", a campaign, ...
    subject: str
    severity: str  # warning | critical
    # One line a person reads, with the reason and its numbers.
    message: str
    day: date
    details: dict[str, Any] = field(default_factory=dict)
