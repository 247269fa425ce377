"""Segments that read what minimisation drops: an allow-list for an event type
that leaves out a property a segment filters or aggregates on makes that
condition see nothing, silently; ``segflow segments validate`` and ``run``
name each such (segment file, event type, property)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.privacy.minimise import Minimiser
from core.privacy.settings import MinimiseSettings
from core.segments.language import Segment, event_reads
from core.segments.where import field_ref


@dataclass(frozen=True, order=True)
class DroppedRead:
    """A property ``segment`` (defined in ``file``) reads from ``event_type``
    events that ``[privacy.minimise] allow`` does not keep."""

    file: str
    segment: str
    event_type: str
    property: str

    def __str__(self) -> str:
        return (
            f"{self.file}: segment '{self.segment}' reads property '{self.property}' of "
            f"'{self.event_type}' events, which [privacy.minimise] allow drops at ingestion "
            f"(add it to allow.{self.event_type} or the condition never sees it)"
        )


def dropped_reads(
    settings: MinimiseSettings, segments: Mapping[str, tuple[Segment, str]]
) -> list[DroppedRead]:
    """Every property a segment (name -> (segment, file)) reads from an event
    type whose allow-list drops it, in file order."""
    minimiser = Minimiser.from_settings(settings)
    found = []
    for name, (segment, file) in segments.items():
        for type_, name_read in event_reads(segment.rule):
            where, key = field_ref(name_read)
            keep = minimiser.allowed(type_)
            if where == "property" and keep is not None and key not in keep:
                found.append(DroppedRead(file, name, type_, key))
    return sorted(found)
