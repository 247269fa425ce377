"""Segment definitions on disk and in the database, and membership state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection, Engine

from core import audit
from core.db.models import utcnow
from core.db.tables import (
    EVALUATION_STATE,
    EVENTS,
    MEMBERSHIPS,
    PROFILES,
    SEGMENT_RUNS,
    SEGMENT_SIZES,
    SEGMENTS,
)
from core.errors import not_utf8
from core.segments.batch import db_time, evaluate_sql
from core.segments.kinds import ConditionKinds
from core.segments.language import Segment, SegmentError, check_references, parse_segment
from core.segments.writes import delete_in, delete_pairs, insert_rows, select_pairs
from core.types import Change

# Called with a run's changes after they are committed (on_segment_change).
ChangeListener = Callable[[Sequence[Change]], None]

# -- definitions -------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentFile:
    """A segment as loaded from a file: parsed, as written, and where from."""

    segment: Segment
    definition: dict[str, Any]
    file: str


@dataclass(frozen=True)
class StoredSegment:
    """A segment as saved in the segments table."""

    id: int
    version: int
    segment: Segment


def segments_by_name(
    segments: dict[str, SegmentFile] | dict[str, StoredSegment],
) -> dict[str, Segment]:
    """Name -> segment, what the evaluators take."""
    return {name: s.segment for name, s in segments.items()}


def load_segment_files(directory: Path, kinds: ConditionKinds) -> dict[str, SegmentFile]:
    """Every segment in the YAML files of ``directory``, by name."""
    if not directory.is_dir():
        raise SegmentError(f"{directory}: no such directory")
    found: dict[str, SegmentFile] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        found.update(load_segment_file(path, kinds, found))
    return found


def load_segment_file(
    path: Path, kinds: ConditionKinds, seen: dict[str, SegmentFile] | None = None
) -> dict[str, SegmentFile]:
    seen = seen or {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SegmentError(not_utf8(exc), file=str(path)) from None
    except yaml.YAMLError as exc:
        raise SegmentError(f"not valid YAML: {exc}", file=str(path)) from None
    items = data if isinstance(data, list) else [data]
    out: dict[str, SegmentFile] = {}
    for item in items:
        segment = parse_segment(item, kinds=kinds, file=str(path))
        if segment.name in seen or segment.name in out:
            other = (seen.get(segment.name) or out[segment.name]).file
            raise SegmentError(
                f"defined twice (also in {other})", file=str(path), segment=segment.name
            )
        out[segment.name] = SegmentFile(segment, item, str(path))
    return out


def canonical(segment: Segment) -> bytes:
    return orjson.dumps(
        segment.model_dump(mode="json", exclude_none=True, exclude={"tests"}),
        option=orjson.OPT_SORT_KEYS,
    )


@dataclass
class Saved:
    id: int
    version: int
    changed: bool  # new, or its definition differs from the stored one


def save_segments(
    conn: Connection, defs: dict[str, SegmentFile], kinds: ConditionKinds
) -> dict[str, Saved]:
    try:
        check_references(segments_by_name(defs), known=set(stored_names(conn)))
    except SegmentError as exc:
        file = defs[exc.segment].file if exc.segment in defs else None
        raise SegmentError(exc.reason, file=file, segment=exc.segment) from None
    now = utcnow()
    saved: dict[str, Saved] = {}
    existing = {r.name: r for r in conn.execute(sa.select(SEGMENTS))}
    for name, loaded in defs.items():
        segment, raw, source = loaded.segment, loaded.definition, loaded.file
        row = existing.get(name)
        if row is None:
            sid = conn.execute(
                SEGMENTS.insert()
                .values(
                    name=name,
                    description=segment.description,
                    definition=raw,
                    version=1,
                    source=source,
                    created_at=now,
                    updated_at=now,
                )
                .returning(SEGMENTS.c.id)
            ).scalar_one()
            saved[name] = Saved(sid, 1, True)
            audit.record(conn, None, "segment.define", name, {"version": 1, "file": _name(source)})
            continue
        old = parse_segment(row.definition, kinds=kinds)
        if canonical(old) == canonical(segment):
            saved[name] = Saved(row.id, row.version, False)
            continue
        conn.execute(
            SEGMENTS.update()
            .where(SEGMENTS.c.id == row.id)
            .values(
                description=segment.description,
                definition=raw,
                version=row.version + 1,
                source=source,
                updated_at=now,
            )
        )
        saved[name] = Saved(row.id, row.version + 1, True)
        details = {"version": row.version + 1, "file": _name(source)}
        audit.record(conn, None, "segment.define", name, details)
    return saved


def _name(source: str | None) -> str | None:
    # The file's name only: a folder may name a person (/home/<user>/...).
    return Path(source).name if source else None


def stored_names(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(SEGMENTS.c.name).order_by(SEGMENTS.c.name)).scalars())


# Parsed definitions by (kinds, id, version, updated_at): the real-time path
# reads the segments on every ingested batch, and parsing is most of that cost.
_PARSED: dict[tuple, Segment] = {}


def stored_segments(conn: Connection, kinds: ConditionKinds) -> dict[str, StoredSegment]:
    out = {}
    registry = kinds.fingerprint()
    # Keys first, through the driver; definitions (JSON) only for those not
    # parsed yet: a real-time call reads this on every ingested batch.
    cur = conn.connection.cursor()
    try:
        cur.execute("SELECT id, name, version, updated_at FROM segments")
        keys = cur.fetchall()
    finally:
        cur.close()
    missing = [r[0] for r in keys if (registry, r[0], r[2], r[3]) not in _PARSED]
    definitions = {}
    if missing:
        definitions = dict(
            conn.execute(
                sa.select(SEGMENTS.c.id, SEGMENTS.c.definition).where(SEGMENTS.c.id.in_(missing))
            ).all()
        )
    for sid, name, version, updated_at in keys:
        key = (registry, sid, version, updated_at)
        if key not in _PARSED:
            _PARSED[key] = parse_segment(definitions[sid], kinds=kinds, file=f"segment row {sid}")
        out[name] = StoredSegment(sid, version, _PARSED[key])
    return out


# -- runs --------------------------------------------------------------------------


@dataclass
class RunResult:
    as_of: datetime
    full: bool
    evaluated: int
    sizes: dict[str, int]
    entered: dict[str, int]
    exited: dict[str, int]
    changes: list[Change] = field(default_factory=list)


def with_dependents(names: set[str], segments: dict[str, Segment]) -> set[str]:
    """``names`` and every segment reading one of them (``segment:``), at any
    depth: a change of definition changes those segments' members too."""
    found = set(names)
    grew = bool(found)
    while grew:
        more = {n for n, seg in segments.items() if n not in found and seg.dependencies() & found}
        found |= more
        grew = bool(more)
    return found


def run_segments(
    engine: Engine,
    as_of: datetime,
    *,
    kinds: ConditionKinds,
    definitions: dict[str, SegmentFile] | None = None,
    full: bool = False,
    on_change: ChangeListener | None = None,
) -> RunResult:
    """Save ``definitions`` (if given), evaluate and record membership changes,
    then hand them to ``on_change``; stored definitions are parsed with ``kinds``.

    Incremental unless ``full`` (or the first run, or an as_of earlier than the
    last run's): only profiles with events ingested since the last run, with a
    due ``next_change_at``, or changed since (traits, merges) are evaluated; a
    new or changed segment is evaluated for everyone.
    """
    with engine.begin() as conn:
        saved = save_segments(conn, definitions, kinds) if definitions else {}
        segs = stored_segments(conn, kinds)
        if not segs:
            raise SegmentError("no segments defined (segflow segments run --dir DIR)")
        last = conn.execute(
            sa.select(SEGMENT_RUNS).order_by(SEGMENT_RUNS.c.id.desc()).limit(1)
        ).first()
        max_event_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0)))
        max_event_id = max_event_id.scalar_one()
        started = utcnow()
        # Going back in time (replays) cannot build on a later run's state.
        full = full or last is None or as_of < last.as_of
        segments = segments_by_name(segs)
        changed = with_dependents({n for n, s in saved.items() if s.changed}, segments)
        everyone = (
            evaluate_sql(conn, segments, as_of, None, only=changed)
            if changed and not full
            else None
        )
        candidates = None if full else _candidates(conn, last, as_of)
        result = evaluate_sql(conn, segments, as_of, candidates)
        if everyone is not None:
            for name in changed:
                result.members[name] = everyone.members[name]
        changes = _apply(conn, segs, result, as_of, candidates, changed)
        if full:
            _retire_merged(conn, segs, as_of, changes)
        # An incremental run needs no sweep: a merge touches both profiles
        # (updated_at), so the merged one is a candidate, and the diff above
        # takes it out of its segments (merged profiles are never members).
        _sizes = _record_sizes(conn, segs, as_of)
        entered = {n: 0 for n in segs}
        exited = {n: 0 for n in segs}
        for c in changes:
            (entered if c.change == "entered" else exited)[c.segment] += 1
        conn.execute(
            SEGMENT_RUNS.insert().values(
                as_of=as_of,
                full=full,
                max_event_id=max_event_id,
                profiles=len(result.evaluated),
                entered=sum(entered.values()),
                exited=sum(exited.values()),
                started_at=started,
            )
        )
    if changes and on_change is not None:
        on_change(changes)
    return RunResult(as_of, full, len(result.evaluated), _sizes, entered, exited, changes)


def _candidates(conn: Connection, last: Any, as_of: datetime) -> list[int]:
    new_events = sa.select(EVENTS.c.profile_id).where(EVENTS.c.id > last.max_event_id)
    due = sa.select(EVALUATION_STATE.c.profile_id).where(EVALUATION_STATE.c.next_change_at <= as_of)
    touched = sa.select(PROFILES.c.id).where(PROFILES.c.updated_at >= last.started_at)
    ids = conn.execute(sa.union(new_events, due, touched)).scalars()
    return sorted(set(ids))


# Up to this many candidates, their memberships are looked up by key; more,
# and one scan of the memberships is cheaper than the many lookups.
FEW_CANDIDATES = 5000

_MEMBERSHIP_PAIRS = "SELECT segment_id, profile_id FROM memberships"


def _apply(conn, segs: dict[str, StoredSegment], result, as_of, candidates, changed):
    """Record the difference between the stored memberships and ``result``:
    entries, exits and evaluation state, in bulk, in the caller's transaction."""
    dialect = conn.dialect
    ids = {s.id: name for name, s in segs.items()}
    current: dict[str, set[int]] = {name: set() for name in segs}
    cur = conn.connection.cursor()
    try:
        scope = None
        if candidates is None or len(candidates) > FEW_CANDIDATES:
            rows = select_pairs(cur, dialect, _MEMBERSHIP_PAIRS)
            scope = None if candidates is None else set(candidates)
        else:
            # Only the candidates' memberships: a real-time call must not read a
            # whole (large) segment to update a few profiles.
            rows = select_pairs(cur, dialect, _MEMBERSHIP_PAIRS, "profile_id", sorted(candidates))
            everyone = [segs[n].id for n in changed if n in segs]
            rows += select_pairs(cur, dialect, _MEMBERSHIP_PAIRS, "segment_id", everyone)
        for sid, pid in rows:
            if sid in ids:
                current[ids[sid]].add(pid)
        at = db_time(dialect.name, as_of)
        now = db_time(dialect.name, utcnow())
        changes: list[Change] = []
        inserts, deletes, logged = [], [], []
        for name, stored in segs.items():
            sid, version = stored.id, stored.version
            had = current[name]
            if scope is not None and name not in changed:
                had &= scope
            new = result.members[name]
            entered, exited = sorted(new - had), sorted(had - new)
            inserts += [(sid, p, at, version) for p in entered]
            deletes += [(sid, p) for p in exited]
            for kind, who in (("entered", entered), ("exited", exited)):
                logged += [(sid, p, kind, at, version, now) for p in who]
                changes += [Change(name, p, kind, as_of, version) for p in who]
        delete_pairs(
            cur, dialect, "memberships", ("segment_id", "profile_id"), ("int", "bigint"), deletes
        )
        insert_rows(
            cur,
            dialect,
            "memberships",
            ("segment_id", "profile_id", "since", "version"),
            ("int", "bigint", "timestamptz", "int"),
            inserts,
        )
        _log_changes(cur, dialect, logged)
        evaluated = sorted(result.evaluated)
        if candidates is None:
            cur.execute("DELETE FROM evaluation_state")
        else:
            delete_in(cur, dialect, "evaluation_state", "profile_id", evaluated)
        # Only profiles whose membership can change with no new event need a
        # row: the next incremental run looks for due ones, never for the rest.
        times = result.next_changes()
        insert_rows(
            cur,
            dialect,
            "evaluation_state",
            ("profile_id", "evaluated_at", "next_change_at"),
            ("bigint", "timestamptz", "timestamptz"),
            [(p, at, db_time(dialect.name, times[p])) for p in evaluated if p in times],
        )
    finally:
        cur.close()
    return changes


def _log_changes(cur, dialect, rows: list[tuple]) -> None:
    """membership_changes rows: (segment_id, profile_id, change, at, version, recorded_at)."""
    insert_rows(
        cur,
        dialect,
        "membership_changes",
        ("segment_id", "profile_id", "change", "at", "version", "recorded_at"),
        ("int", "bigint", "text", "timestamptz", "int", "timestamptz"),
        rows,
    )


def _retire_merged(conn, segs, as_of, changes, into: Sequence[int] | None = None) -> None:
    """Profiles merged into another leave their segments (the survivor is evaluated).

    ``into``: only profiles merged into these (a real-time call's profiles);
    None: every merged profile that still has a membership.
    """
    by_id = {s.id: (name, s.version) for name, s in segs.items()}
    dialect = conn.dialect
    cur = conn.connection.cursor()
    try:
        sql = (
            "SELECT m.segment_id, m.profile_id FROM memberships m "
            "JOIN profiles p ON p.id = m.profile_id WHERE p.merged_into IS NOT NULL"
        )
        if into is None:
            rows = select_pairs(cur, dialect, sql)
        else:
            merged = select_pairs(
                cur,
                dialect,
                "SELECT id FROM profiles WHERE merged_into IS NOT NULL",
                "merged_into",
                sorted(into),
            )
            rows = select_pairs(
                cur, dialect, _MEMBERSHIP_PAIRS, "profile_id", sorted(p for (p,) in merged)
            )
        rows = sorted((sid, pid) for sid, pid in rows if sid in by_id)
        if not rows:
            return
        at = db_time(dialect.name, as_of)
        now = db_time(dialect.name, utcnow())
        delete_pairs(
            cur, dialect, "memberships", ("segment_id", "profile_id"), ("int", "bigint"), rows
        )
        _log_changes(
            cur, dialect, [(sid, pid, "exited", at, by_id[sid][1], now) for sid, pid in rows]
        )
    finally:
        cur.close()
    for sid, pid in rows:
        name, version = by_id[sid]
        changes.append(Change(name, pid, "exited", as_of, version))


def _record_sizes(conn, segs, as_of) -> dict[str, int]:
    sizes = {}
    for name, stored in segs.items():
        sid, version = stored.id, stored.version
        size = conn.execute(
            sa.select(sa.func.count()).where(MEMBERSHIPS.c.segment_id == sid)
        ).scalar_one()
        sizes[name] = size
        conn.execute(
            SEGMENT_SIZES.delete().where(
                SEGMENT_SIZES.c.segment_id == sid, SEGMENT_SIZES.c.as_of == as_of
            )
        )
        conn.execute(
            SEGMENT_SIZES.insert().values(segment_id=sid, as_of=as_of, version=version, size=size)
        )
    return sizes


def members(conn: Connection, name: str) -> list[dict[str, Any]]:
    """Current members: profile id, user id (or anonymous id), since."""
    from core.profiles import profile_labels

    sid = conn.execute(sa.select(SEGMENTS.c.id).where(SEGMENTS.c.name == name)).scalar()
    if sid is None:
        raise SegmentError(f"no segment named '{name}'")
    rows = conn.execute(
        sa.select(MEMBERSHIPS.c.profile_id, MEMBERSHIPS.c.since)
        .where(MEMBERSHIPS.c.segment_id == sid)
        .order_by(MEMBERSHIPS.c.profile_id)
    ).all()
    labels = profile_labels(conn, [p for p, _ in rows]) if rows else {}
    return [{"profile_id": p, "id": labels.get(p, f"#{p}"), "since": since} for p, since in rows]


def backfill(
    engine: Engine,
    start: datetime,
    end: datetime,
    step: Any,
    *,
    kinds: ConditionKinds,
    definitions: dict[str, SegmentFile] | None = None,
    on_step: Any = None,
) -> list[tuple[datetime, dict[str, int]]]:
    """Segment sizes at each as_of from start to end: history from old events.

    Memberships are not touched; only segment_sizes rows are written.
    """
    out = []
    with engine.begin() as conn:
        if definitions:
            save_segments(conn, definitions, kinds)
        segs = stored_segments(conn, kinds)
    segments = segments_by_name(segs)
    when = start
    while when <= end:
        with engine.begin() as conn:
            result = evaluate_sql(conn, segments, when)
            sizes = {n: len(result.members[n]) for n in segments}
            for name, stored in segs.items():
                conn.execute(
                    SEGMENT_SIZES.delete().where(
                        SEGMENT_SIZES.c.segment_id == stored.id, SEGMENT_SIZES.c.as_of == when
                    )
                )
                conn.execute(
                    SEGMENT_SIZES.insert().values(
                        segment_id=stored.id, as_of=when, version=stored.version, size=sizes[name]
                    )
                )
        out.append((when, sizes))
        if on_step:
            on_step()
        when += step
    return out
