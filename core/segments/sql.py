"""The batch evaluator: segments compiled to SQL (SQLAlchemy Core).

Every condition asks for per-profile *features* (a count, sum, last time...)
keyed by what they compute, so identical conditions across segments share one
column. Event features come from one grouped scan of events; per-session
features from one scan grouped by session; segments are then boolean
expressions over the feature columns, one query for all of them. Each
condition kind says which features it needs and the test over them (its
``features`` form, see core/segments/kinds/); kinds with a plain ``sql`` form
are correlated subqueries. Semantics match ``evaluate.py`` exactly
(property-tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.expression import ColumnElement

from core.db.tables import EVENTS, PROFILES
from core.segments.language import Compare, Condition, Rule
from core.segments.sqlfuncs import (
    candidate_ids,
    greatest_known,
    json_key,
    least_known,
    unindexed,
)
from core.segments.where import event_field, field_ref, where_sql
from core.types import SqlContext

# A feature's identity: equal keys are one column, whichever segment asked.
FeatureKey = tuple
Render = Callable[["FeatureColumns"], ColumnElement]

# The plans a compiled query can take (see ``Compiler.query``).
ONE_SCAN = "one_scan"
SPLIT_SCANS = "split_scans"
TYPE_SCANS = "type_scans"
PLANS = (ONE_SCAN, SPLIT_SCANS, TYPE_SCANS)
# The measures TYPE_SCANS computes over several event types from one feature
# per type (first and last times too); distinct and avg cannot be combined.
DECOMPOSABLE_MEASURES = ("count", "sum", "min", "max")

COMBINE_SQL: dict[str, Callable[..., ColumnElement]] = {
    "all": sa.and_,
    "any": sa.or_,
    "not": sa.not_,
}


def compare_sql(x: ColumnElement, cmp: Compare) -> ColumnElement:
    value = cmp.value
    return {
        ">=": x >= value,
        ">": x > value,
        "<=": x <= value,
        "<": x < value,
        "==": x == value,
        "!=": x != value,
    }[cmp.op]


@dataclass(frozen=True)
class FeatureColumns(SqlContext):
    """What a compiled condition reads: the feature columns, and (as for a
    plain ``sql`` form) the evaluated profile and the events table."""

    event_columns: dict[FeatureKey, ColumnElement] = field(default_factory=dict)
    session_columns: dict[FeatureKey, ColumnElement] = field(default_factory=dict)

    def __getitem__(self, key: FeatureKey) -> ColumnElement:
        return self.event_columns[key]

    def session(self, key: FeatureKey) -> ColumnElement:
        return self.session_columns[key]


@dataclass(frozen=True)
class ScanReach:
    """What one scan reads: per event type, the window (None: all time). A
    feature's test that the scan already guarantees is left out of its CASE,
    which SQLite would otherwise evaluate for every row it reads."""

    windows: dict[str, timedelta | None]

    def all_types_in(self, types: tuple[str, ...]) -> bool:
        return set(self.windows) <= set(types)

    def bounded_by(self, types: tuple[str, ...], within: timedelta) -> bool:
        return all(
            self.windows[t] is not None and self.windows[t] <= within
            for t in types
            if t in self.windows
        )


@dataclass
class Features:
    """Feature columns requested by the rules, each computed once."""

    as_of: datetime
    # Compiles another segment's rule (for ``segment:`` conditions).
    compile_segment: Callable[[str], Render]
    event: dict[tuple, sa.Label] = field(default_factory=dict)
    session_inner: dict[tuple, sa.Label] = field(default_factory=dict)
    session: dict[tuple, sa.Label] = field(default_factory=dict)
    types: set[str] = field(default_factory=set)
    # What each feature reads, (types, window or None): the scans read only that.
    reach: dict[tuple, tuple[tuple[str, ...], timedelta | None]] = field(default_factory=dict)
    # (time feature key, delta): next change candidates, de-duplicated in order.
    changes: dict[tuple[tuple, timedelta], None] = field(default_factory=dict)

    def _cond(
        self,
        types: tuple[str, ...],
        within: timedelta | None,
        where: tuple,
        scan: ScanReach | None = None,
    ):
        """The test an event must pass to count; None when the scan ``scan``
        reads only such events."""
        self.types.update(types)
        parts = [*where_sql(where)]
        if scan is None or not scan.all_types_in(types):
            parts.insert(0, EVENTS.c.type.in_(types))
        if within is not None and (scan is None or not scan.bounded_by(types, within)):
            parts.append(EVENTS.c.ts > self.as_of - within)
        return sa.and_(*parts) if parts else None

    def _event_feature(self, key: tuple, expr_fn, types, within) -> tuple:
        if key not in self.event:
            self.event[key] = expr_fn().label(f"f{len(self.event)}")
            self.reach[key] = (tuple(types), within)
        return key

    def _aggregate(self, kind: str, prop: str | None, types, within, where, scan=None):
        """The measure over matching events, for a per-profile or per-session GROUP BY."""
        cond = self._cond(types, within, where, scan)

        def when(value):
            return value if cond is None else sa.case((cond, value))

        if kind == "count":
            return sa.func.count() if cond is None else sa.func.count(sa.case((cond, 1)))
        if kind == "distinct":
            ref_kind, name = field_ref(prop)
            value = EVENTS.c[name] if ref_kind == "column" else json_key(EVENTS.c.properties, name)
            return sa.func.count(sa.distinct(when(value)))
        agg = {"sum": sa.func.sum, "min": sa.func.min, "max": sa.func.max, "avg": sa.func.avg}
        return agg[kind](when(event_field(prop, "number")))

    def _time(self, last: bool, types, within, where, scan=None):
        cond = self._cond(types, within, where, scan)
        picked = EVENTS.c.ts if cond is None else sa.case((cond, EVENTS.c.ts))
        return sa.func.max(picked) if last else sa.func.min(picked)

    def scan_column(self, key: FeatureKey, scan: ScanReach) -> sa.Label:
        """The feature's column as computed by a scan reading ``scan``."""
        if key[0] == "m":
            _, kind, prop, types, within, where = key
            expr = self._aggregate(kind, prop, types, within, where, scan)
        else:
            _, last, types, within, where = key
            expr = self._time(last, types, within, where, scan)
        return expr.label(self.event[key].name)

    def per_type(self, key: FeatureKey) -> list[FeatureKey]:
        """The one-type features ``key`` (over several types) combines."""
        if key[0] == "m":
            _, kind, prop, types, within, where = key
            return [self.measure(kind, prop, (t,), within, where) for t in types]
        _, last, types, within, where = key
        return [self.time(last, (t,), within, where) for t in types]

    # -- what condition kinds ask for ---------------------------------------------------
    def measure(self, kind: str, prop: str | None, types, within, where) -> FeatureKey:
        """count/sum/min/max/avg/distinct of matching events per profile."""
        key = ("m", kind, prop, types, within, where)
        return self._event_feature(
            key, lambda: self._aggregate(kind, prop, types, within, where), types, within
        )

    def time(self, last: bool, types, within, where) -> FeatureKey:
        """The latest (``last``) or earliest matching event's time per profile."""
        key = ("t", last, types, within, where)
        return self._event_feature(
            key, lambda: self._time(last, types, within, where), types, within
        )

    def session_measure(
        self, kind: str, prop: str | None, types, within, where, cmp: Compare
    ) -> FeatureKey:
        """1 when some session alone satisfies the measure, else 0."""
        inner_n = ("sm", "count", None, types, within, where)
        inner = ("sm", kind, prop, types, within, where)
        for k in (inner_n, inner):
            if k not in self.session_inner:
                expr = self._aggregate(*k[1:])
                self.session_inner[k] = expr.label(f"s{len(self.session_inner)}")
                self.reach[k] = (tuple(types), within)
        key = ("s", inner, cmp)
        if key not in self.session:
            self.session[key] = (inner_n, inner, cmp, f"p{len(self.session)}")
        return key

    def changes_at(self, time_key: FeatureKey, delta: timedelta) -> None:
        """Membership could change at that time feature + delta (a window expiring)."""
        self.changes[(time_key, delta)] = None

    def segment(self, name: str) -> Render:
        return self.compile_segment(name)


def _correlated(kind_sql: Callable[[Any, SqlContext], ColumnElement], params: Any) -> Render:
    # CASE makes a NULL answer false, so NOT around it stays two-valued.
    return lambda cols: sa.case((kind_sql(params, cols), 1), else_=0) == 1


class Compiler:
    """Compiles rules to boolean SQL over feature columns."""

    def __init__(self, as_of: datetime, segments: dict[str, Rule] | None = None) -> None:
        self.as_of = as_of
        self.segments = segments or {}
        self.f = Features(as_of, self._segment)
        # A plain ``sql`` form may read events of any type.
        self.correlated = False

    # Column references are resolved once the feature subqueries exist.
    def compile(self, rule: Rule) -> Render:
        if isinstance(rule, Condition):
            kind = rule.kind
            if kind.features is not None:
                return kind.features(rule.params, self.f)
            self.correlated = True
            return _correlated(kind.sql, rule.params)
        parts = [self.compile(child) for child in rule.children]
        combine = COMBINE_SQL[rule.name]
        return lambda cols: combine(*[part(cols) for part in parts])

    def _segment(self, name: str) -> Render:
        if name not in self.segments:
            raise LookupError(f"unknown segment {name!r}")
        return self.compile(self.segments[name])

    # -- the query ------------------------------------------------------------------
    def query(
        self,
        compiled: dict[str, Render],
        profile_ids: list[int] | None = None,
        *,
        ids: sa.Table | None = None,
        plan: str = ONE_SCAN,
    ):
        """SELECT profile id, one boolean per segment, and next-change times.

        ``ids`` (a table of candidate profile ids, column ``id``) restricts the
        answer to those profiles and is joined inside the event scans, so they
        read only those profiles' events through (profile_id, ts);
        ``profile_ids`` does the same with an IN list. ``plan`` is ONE_SCAN (one
        grouped scan for every event feature) or SPLIT_SCANS (one per group of
        features sharing event types).
        """
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}; plans: {', '.join(PLANS)}")
        combined = self._decompose() if plan == TYPE_SCANS else {}
        scans = self._event_subqueries(plan, ids, profile_ids, set(combined))
        ss = self._session_subquery(ids, profile_ids)
        p = PROFILES.alias("p")
        cols: dict[tuple, ColumnElement] = {}
        for ev in scans:
            for key, label in self.f.event.items():
                if label.name in ev.c:
                    cols[key] = ev.c[label.name]
        for key, parts in combined.items():
            cols[key] = _combine(key, [cols[k] for k in parts])
        sess: dict[tuple, ColumnElement] = {}
        if ss is not None:
            for key, (_, _, _, name) in self.f.session.items():
                sess[key] = ss.c[name]
        columns = FeatureColumns(p.c.id, p, EVENTS, self.as_of, cols, sess)
        selects = [p.c.id.label("profile_id")]
        for name, render in compiled.items():
            selects.append(sa.case((render(columns), 1), else_=0).label(f"seg_{name}"))
        change_cols = []
        for i, (key, delta) in enumerate(self.f.changes):
            change_cols.append((f"c{i}", delta))
            selects.append(cols[key].label(f"c{i}"))
        if ids is not None:
            stmt = sa.select(*selects).select_from(ids.join(p, p.c.id == unindexed(ids.c.id)))
        else:
            stmt = sa.select(*selects).select_from(p)
        for ev in scans:
            stmt = stmt.outerjoin(ev, ev.c.profile_id == p.c.id)
        if ss is not None:
            stmt = stmt.outerjoin(ss, ss.c.profile_id == p.c.id)
        stmt = stmt.where(p.c.merged_into.is_(None))
        if profile_ids is not None:
            stmt = stmt.where(p.c.id.in_(profile_ids))
        return stmt, change_cols

    def future_events(self, ids: sa.Table | None = None):
        """Per profile, the first event already stored with a time after as_of
        (clocks ahead, events sent with a later time): it comes into view as
        as_of passes it with nothing new ingested, so it is a next change."""
        where = [EVENTS.c.ts > self.as_of]
        if self.f.types and not self.correlated:
            where.append(EVENTS.c.type.in_(sorted(self.f.types)))
        if ids is not None:
            where.append(EVENTS.c.profile_id.in_(sa.select(ids.c.id)))
        first = sa.func.min(EVENTS.c.ts).label("first_after")
        return sa.select(EVENTS.c.profile_id, first).where(*where).group_by(EVENTS.c.profile_id)

    def _scan(self, columns: list, keys: list[tuple], ids, profile_ids, group_by: list):
        """A grouped scan of the events these features read, and only those."""
        reach = [self.f.reach[k] for k in keys]
        where = [EVENTS.c.ts <= self.as_of, reach_sql(reach, self.as_of, ids is not None)]
        source: Any = EVENTS
        if ids is not None:
            # The candidates drive: each one's events through (profile_id, ts).
            source = ids.join(EVENTS, EVENTS.c.profile_id == unindexed(ids.c.id))
            where.append(candidate_ids(EVENTS.c.profile_id, ids))
        if profile_ids is not None:
            where.append(EVENTS.c.profile_id.in_(profile_ids))
        return sa.select(*group_by, *columns).select_from(source).where(*where).group_by(*group_by)

    def _decompose(self) -> dict[FeatureKey, list[FeatureKey]]:
        """Features over several types, each made of one feature per type."""
        out = {}
        for key in list(self.f.event):
            several = len(self.f.reach[key][0]) > 1
            if several and (key[0] == "t" or key[1] in DECOMPOSABLE_MEASURES):
                out[key] = self.f.per_type(key)
        return out

    def _event_subqueries(self, plan: str, ids, profile_ids, combined=frozenset()) -> list:
        keys = [k for k in self.f.event if k not in combined]
        if not keys:
            return []
        groups = [keys] if plan == ONE_SCAN else type_groups(keys, self.f.reach)
        scans = []
        for i, group in enumerate(groups):
            if plan == TYPE_SCANS:
                reach = ScanReach(type_windows([self.f.reach[k] for k in group]))
                columns = [self.f.scan_column(k, reach) for k in group]
            else:
                columns = [self.f.event[k] for k in group]
            scan = self._scan(columns, group, ids, profile_ids, [EVENTS.c.profile_id])
            scans.append(scan.subquery("ev" if len(groups) == 1 else f"ev{i}"))
        return scans

    def _session_subquery(self, ids, profile_ids):
        if not self.f.session:
            return None
        keys = list(self.f.session_inner)
        inner = (
            self._scan(
                list(self.f.session_inner.values()),
                keys,
                ids,
                profile_ids,
                [EVENTS.c.profile_id, EVENTS.c.session_id],
            )
            .where(EVENTS.c.session_id.is_not(None))
            .subquery("si")
        )
        outs = []
        for inner_n, inner_key, cmp, name in self.f.session.values():
            n = inner.c[self.f.session_inner[inner_n].name]
            value = inner.c[self.f.session_inner[inner_key].name]
            kind = inner_key[1]
            if kind in ("count", "sum"):
                value = sa.func.coalesce(value, 0)
            ok = sa.and_(n > 0, compare_sql(value, cmp))
            outs.append(sa.func.max(sa.case((ok, 1), else_=0)).label(name))
        return sa.select(inner.c.profile_id, *outs).group_by(inner.c.profile_id).subquery("ss")


def _combine(key: FeatureKey, parts: list[ColumnElement]) -> ColumnElement:
    """A feature over several types from its one-type parts (NULL where the
    profile has no rows in a part's scan, as after the LEFT JOIN)."""
    if key[0] == "t":
        extreme = greatest_known if key[1] else least_known
        return extreme(*parts, type_=EVENTS.c.ts.type)
    kind = key[1]
    if kind in ("min", "max"):
        extreme = least_known if kind == "min" else greatest_known
        return extreme(*parts, type_=sa.Float())
    total = sum((sa.func.coalesce(c, 0) for c in parts[1:]), sa.func.coalesce(parts[0], 0))
    if kind == "count":
        return total
    # sum: NULL when no part has a value, as SUM over no values.
    return sa.case((sa.and_(*[c.is_(None) for c in parts]), sa.null()), else_=total)


def type_windows(reaches) -> dict[str, timedelta | None]:
    """Per event type, the widest window any feature reads it in (None: all time)."""
    widest: dict[str, timedelta | None] = {}
    for types, within in reaches:
        for t in types:
            if t in widest and (widest[t] is None or within is None):
                widest[t] = None
            else:
                widest[t] = within if t not in widest else max(widest[t], within)
    return widest


def reach_sql(reaches, as_of: datetime, by_profile: bool = False) -> ColumnElement:
    """The events these features read: each type within its widest window.

    Types sharing a window are one IN list, so each term is a range of the
    (type, ts) index; ``by_profile``: the events are looked up per profile,
    and the type test must not lead the planner to (type, ts) instead.
    """
    by_window: dict[timedelta | None, list[str]] = {}
    for t, within in sorted(type_windows(reaches).items()):
        by_window.setdefault(within, []).append(t)
    terms = []
    for within, types in sorted(by_window.items(), key=lambda kv: (kv[0] is None, kv[0])):
        column = unindexed(EVENTS.c.type) if by_profile else EVENTS.c.type
        test = column.in_(types) if len(types) > 1 else column == types[0]
        terms.append(test if within is None else sa.and_(test, EVENTS.c.ts > as_of - within))
    return terms[0] if len(terms) == 1 else sa.or_(*terms)


def type_groups(keys: list[tuple], reach: dict) -> list[list[tuple]]:
    """Features split into groups that share no event type, in first-seen order."""
    groups: list[tuple[set[str], list[tuple]]] = []
    for key in keys:
        types = set(reach[key][0])
        touching = [g for g in groups if g[0] & types]
        merged = (types.union(*(g[0] for g in touching)), [k for g in touching for k in g[1]])
        merged[1].append(key)
        groups = [g for g in groups if g not in touching] + [merged]
    order = {k: i for i, k in enumerate(keys)}
    return sorted((sorted(g[1], key=order.get) for g in groups), key=lambda g: order[g[0]])
