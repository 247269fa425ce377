"""Reading segments for people: members, sizes, history, previews and explanations.

What ``segflow segments ...`` prints, flows hand on and notebooks chart, as
plain data (lists and dicts of JSON-ready values).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.tables import MEMBERSHIPS, PROFILES, SEGMENT_SIZES, SEGMENTS
from core.profiles import find_profile_id, profile_labels
from core.segments.batch import evaluate_sql
from core.segments.kinds import ConditionKinds
from core.segments.language import SegmentError
from core.segments.store import (
    RunResult,
    load_segment_file,
    members,
    segments_by_name,
    stored_segments,
)


def _saved(conn: Connection, kinds: ConditionKinds) -> dict[str, Any]:
    return segments_by_name(stored_segments(conn, kinds))


def _segment_id(conn: Connection, name: str) -> int:
    sid = conn.execute(sa.select(SEGMENTS.c.id).where(SEGMENTS.c.name == name)).scalar()
    if sid is None:
        raise SegmentError(f"no segment named '{name}'")
    return sid


def member_ids(
    conn: Connection, name: str, kinds: ConditionKinds, as_of: datetime | None = None
) -> list[str]:
    """Members of a saved segment by label (user id, else anonymous id): the stored
    membership, or when ``as_of`` is given, evaluated then (nothing saved)."""
    current = members(conn, name)  # also: an error naming an unknown segment
    if as_of is None:
        return [r["id"] for r in current]
    wanted = evaluate_sql(conn, _saved(conn, kinds), as_of).members[name]
    return [label for pid, label in profile_labels(conn).items() if pid in wanted]


def segment_sizes(conn: Connection) -> list[dict[str, Any]]:
    """Saved segments: name, version, description and current size."""
    rows = conn.execute(
        sa.select(
            SEGMENTS.c.name,
            SEGMENTS.c.version,
            SEGMENTS.c.description,
            sa.func.count(MEMBERSHIPS.c.profile_id),
        )
        .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.segment_id == SEGMENTS.c.id)
        .group_by(SEGMENTS.c.id, SEGMENTS.c.name, SEGMENTS.c.version, SEGMENTS.c.description)
        .order_by(SEGMENTS.c.name)
    ).all()
    return [{"name": n, "version": v, "description": d, "size": c} for n, v, d, c in rows]


def size_history(conn: Connection, name: str) -> list[dict[str, Any]]:
    """A segment's size at each run or back-filled step, oldest first."""
    rows = conn.execute(
        sa.select(SEGMENT_SIZES.c.as_of, SEGMENT_SIZES.c.size, SEGMENT_SIZES.c.version)
        .where(SEGMENT_SIZES.c.segment_id == _segment_id(conn, name))
        .order_by(SEGMENT_SIZES.c.as_of)
    ).all()
    return [{"as_of": a.isoformat(), "size": s, "version": v} for a, s, v in rows]


def preview_file(
    conn: Connection, path: Path, kinds: ConditionKinds, as_of: datetime, sample: int = 10
) -> dict[str, dict[str, Any]]:
    """Size and a sample of members of each segment in ``path``, saving nothing.

    The file's segments may refer to saved ones, which are evaluated with them.
    """
    defs = segments_by_name(load_segment_file(path, kinds))
    result = evaluate_sql(conn, _saved(conn, kinds) | defs, as_of)
    who = profile_labels(conn)
    return {
        name: {
            "size": len(result.members[name]),
            "sample": [who[p] for p in sorted(result.members[name])[:sample]],
        }
        for name in defs
    }


def explain_profile(
    conn: Connection, name: str, key: str, kinds: ConditionKinds, as_of: datetime
) -> dict[str, Any]:
    """Why a person (user id, anonymous id or email) is in a saved segment or not:
    the rule tree with each condition's value, figures and deciding events."""
    from core.segments.data import load_profile_data
    from core.segments.evaluate import evaluate
    from core.segments.explain import explain
    from core.segments.language import check_references

    segs = _saved(conn, kinds)
    if name not in segs:
        raise SegmentError(f"no segment named '{name}'")
    pid = find_profile_id(conn, key)
    data = load_profile_data(conn, pid, as_of)
    for dep in check_references(segs):
        data.segments[dep] = evaluate(segs[dep].rule, data, as_of).member
    return explain(segs[name].rule, data, as_of) | {"segment": name, "profile_id": pid}


def run_report(result: RunResult) -> dict[str, Any]:
    """A segment run as JSON: as_of, full, evaluated, and per segment size/entered/exited."""
    return {
        "as_of": result.as_of.isoformat(),
        "full": result.full,
        "evaluated": result.evaluated,
        "segments": {
            n: {"size": result.sizes[n], "entered": result.entered[n], "exited": result.exited[n]}
            for n in sorted(result.sizes)
        },
    }


def _trait(attributes: dict[str, Any], path: str) -> Any:
    """A trait by name, ``address.city`` reaching into nested mappings."""
    value: Any = attributes
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def member_rows(
    conn: Connection,
    name: str,
    kinds: ConditionKinds,
    traits: list[str] | None = None,
    as_of: datetime | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Members of a saved segment as a table, for a CSV export: header and rows of
    id (user id, else anonymous id), email, since (when they entered; empty for
    ``as_of``, evaluated then) and each of ``traits`` from the profile."""
    traits = traits or []
    current = members(conn, name)  # also: an error naming an unknown segment
    if as_of is None:
        since = {r["profile_id"]: r["since"] for r in current}
    else:
        wanted = evaluate_sql(conn, _saved(conn, kinds), as_of).members[name]
        since = dict.fromkeys(sorted(wanted))
    labels = profile_labels(conn, list(since)) if since else {}
    found = (
        conn.execute(
            sa.select(PROFILES.c.id, PROFILES.c.email, PROFILES.c.attributes).where(
                PROFILES.c.id.in_(list(since))
            )
        ).all()
        if since
        else []
    )
    profiles = {pid: (email, attributes or {}) for pid, email, attributes in found}
    rows = []
    for pid in sorted(since):
        if pid not in labels:
            continue  # merged into another profile since the run
        email, attributes = profiles.get(pid, (None, {}))
        rows.append([labels[pid], email, since[pid], *(_trait(attributes, t) for t in traits)])
    return ["id", "email", "since", *traits], rows


def export_members(
    engine: Engine,
    name: str,
    out: TextIO,
    kinds: ConditionKinds,
    traits: list[str] | None = None,
    as_of: datetime | None = None,
) -> int:
    """Write the members of ``name`` (``member_rows``) to ``out`` as CSV through
    the formula-neutralising writer, and audit the export (who, which segment,
    how many rows and which columns; no one's data): the number of rows."""
    from core import audit
    from core.csv_export import write_csv

    with engine.begin() as conn:
        header, rows = member_rows(conn, name, kinds, traits, as_of)
        count = write_csv(out, header, rows)
        details = {"rows": count, "columns": header}
        if as_of is not None:
            details["as_of"] = as_of.isoformat()
        audit.record(conn, None, "segment.export", name, details)
    return count
