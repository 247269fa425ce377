"""The segment lab: try a segment definition on the stored data, writing nothing.

What notebooks/segment_lab.py shows, as pure functions of a connection and
definitions given as YAML text: the definition validated (the error names
its path), its size and a sample of members as of a time, its size at past
days as it would have been (evaluated at each as_of, like a back-fill, but
nothing stored), why one person is in it or not, and how two definitions
overlap. Saved segments stay available to ``segment:`` references; a
definition named like a saved one stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection

from core.db.tables import EVENTS
from core.profiles import find_profile_id, profile_labels
from core.segments.batch import evaluate_sql
from core.segments.kinds import ConditionKinds
from core.segments.language import Segment, SegmentError, check_references, parse_segment
from core.segments.store import segments_by_name, stored_segments


def parse_definition(text: str, kinds: ConditionKinds, label: str = "definition") -> Segment:
    """One segment from YAML text; any problem raises SegmentError naming
    ``label`` and the line (YAML) or the rule path (the language)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SegmentError(f"not valid YAML at {where}{problem}", file=label) from None
    if isinstance(data, list):
        if len(data) != 1:
            raise SegmentError(f"one segment expected, found a list of {len(data)}", file=label)
        data = data[0]
    if data is None:
        raise SegmentError("empty: write a segment (name, description, rule)", file=label)
    return parse_segment(data, kinds=kinds, file=label)


def _with_saved(conn: Connection, kinds: ConditionKinds, *defs: Segment) -> dict[str, Segment]:
    segments = segments_by_name(stored_segments(conn, kinds))
    for seg in defs:
        segments[seg.name] = seg
    check_references(segments)
    return segments


def latest_event_time(conn: Connection) -> datetime | None:
    """When the newest stored event happened (the lab's default as_of), None if none."""
    last = conn.execute(sa.select(sa.func.max(EVENTS.c.ts))).scalar_one()
    return last.astimezone(UTC) if last else None


@dataclass(frozen=True)
class Preview:
    name: str
    as_of: datetime
    size: int
    profiles: int  # everyone evaluated: the share's denominator
    sample: list[dict[str, Any]]  # profile_id and id (user id, else anonymous id)


def _profiles(conn: Connection) -> int:
    from core.db.tables import PROFILES

    return conn.execute(
        sa.select(sa.func.count()).where(PROFILES.c.merged_into.is_(None))
    ).scalar_one()


def preview(
    conn: Connection, segment: Segment, kinds: ConditionKinds, as_of: datetime, sample: int = 10
) -> Preview:
    """The definition's size as of ``as_of`` and its first ``sample`` members by profile id."""
    result = evaluate_sql(conn, _with_saved(conn, kinds, segment), as_of, only={segment.name})
    ids = sorted(result.members[segment.name])[:sample]
    labels = profile_labels(conn, ids) if ids else {}
    return Preview(
        segment.name,
        as_of,
        len(result.members[segment.name]),
        _profiles(conn),
        [{"profile_id": p, "id": labels.get(p, f"#{p}")} for p in ids],
    )


def history_times(end: datetime, days: int, step: timedelta = timedelta(days=1)) -> list[datetime]:
    """``days`` as_of times ending at ``end``, ``step`` apart, oldest first."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    return [end - step * k for k in range(days - 1, -1, -1)]


def history(
    conn: Connection, segment: Segment, kinds: ConditionKinds, times: list[datetime]
) -> list[dict[str, Any]]:
    """The definition's size at each of ``times`` as it would have been then (each
    evaluation sees only the events up to its as_of); nothing is stored."""
    segments = _with_saved(conn, kinds, segment)
    return [
        {
            "as_of": when,
            "size": len(
                evaluate_sql(conn, segments, when, only={segment.name}).members[segment.name]
            ),
        }
        for when in times
    ]


def explain_member(
    conn: Connection, segment: Segment, kinds: ConditionKinds, key: str, as_of: datetime
) -> dict[str, Any]:
    """Why a person (user id, anonymous id or email) is in the definition or not:
    core.segments.explain's tree, with the segments it refers to evaluated for them."""
    from core.segments.data import load_profile_data
    from core.segments.evaluate import evaluate
    from core.segments.explain import explain

    segments = _with_saved(conn, kinds, segment)
    pid = find_profile_id(conn, key)
    data = load_profile_data(conn, pid, as_of)
    for name in check_references(segments):
        if name != segment.name:
            data.segments[name] = evaluate(segments[name].rule, data, as_of).member
    return explain(segment.rule, data, as_of) | {"segment": segment.name, "profile_id": pid}


def explain_lines(node: dict[str, Any], depth: int = 0) -> list[str]:
    """An explanation's rule tree as indented lines: yes/no, the condition, its figures."""
    mark = "yes" if node["value"] else "no "
    params = ", ".join(f"{k}: {v}" for k, v in (node.get("params") or {}).items())
    figures = ", ".join(f"{k} = {v}" for k, v in (node.get("figures") or {}).items())
    line = f"{'    ' * depth}{mark}  {node['kind']}" + (f" {params}" if params else "")
    out = [line + (f"  ({figures})" if figures else "")]
    for child in node.get("children", ()):
        out += explain_lines(child, depth + 1)
    return out


@dataclass(frozen=True)
class Overlap:
    a: str
    b: str
    as_of: datetime
    only_a: int
    only_b: int
    both: int

    @property
    def union(self) -> int:
        return self.only_a + self.only_b + self.both

    @property
    def jaccard(self) -> float:
        """Shared members over members of either (0 when both are empty)."""
        return self.both / self.union if self.union else 0.0


def overlap(
    conn: Connection, a: Segment, b: Segment, kinds: ConditionKinds, as_of: datetime
) -> Overlap:
    """Members of ``a`` only, ``b`` only and both, as of ``as_of`` (one evaluation)."""
    if a.name == b.name:
        raise SegmentError(f"both definitions are named '{a.name}': rename one to compare them")
    result = evaluate_sql(conn, _with_saved(conn, kinds, a, b), as_of, only={a.name, b.name})
    in_a, in_b = result.members[a.name], result.members[b.name]
    return Overlap(a.name, b.name, as_of, len(in_a - in_b), len(in_b - in_a), len(in_a & in_b))
