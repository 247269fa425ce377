"""What an ingest call reports: counts, rejected records, and its failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class IngestError(Exception):
    """Storing a batch failed; everything committed before it is kept."""


@dataclass
class Rejection:
    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class IngestReport:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    profiles_created: int = 0
    profiles_merged: int = 0
    identifies: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    # (type, property, action) -> count: what minimisation dropped or rewrote
    # (action "dropped", "scrubbed" or "ip"; core.privacy.minimise).
    minimised: dict[tuple[str, str, str], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def add(self, other: IngestReport) -> None:
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)
        self.profiles_created += other.profiles_created
        self.profiles_merged += other.profiles_merged
        self.identifies += other.identifies
        for k, v in other.by_type.items():
            self.by_type[k] = self.by_type.get(k, 0) + v
        add_counts(self.minimised, other.minimised)

    @property
    def dropped(self) -> int:
        """Properties minimisation dropped, over every event."""
        return sum(n for (_, _, action), n in self.minimised.items() if action == "dropped")

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "rejections": [{"location": r.location, "reason": r.reason} for r in self.rejected],
            "profiles_created": self.profiles_created,
            "profiles_merged": self.profiles_merged,
            "identifies": self.identifies,
            "by_type": dict(sorted(self.by_type.items())),
            "minimised": nested_counts(self.minimised),
        }


def add_counts(
    into: dict[tuple[str, str, str], int], more: dict[tuple[str, str, str], int]
) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def nested_counts(counts: dict[tuple[str, str, str], int]) -> dict[str, dict[str, dict[str, int]]]:
    """action -> type -> property -> count, sorted."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (type_, name, action), n in sorted(counts.items()):
        out.setdefault(action, {}).setdefault(type_, {})[name] = n
    return out
