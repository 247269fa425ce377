"""The batch evaluator: segments compiled to SQL (SQLAlchemy Core).

Every condition becomes a per-profile *feature* (a count, sum, last time...)
keyed by what it computes, so identical conditions across segments share one
column. Event features come from one grouped scan of events; per-session
features from one scan grouped by session; segments are then boolean
expressions over the feature columns, one query for all of them.
Semantics match ``evaluate.py`` exactly (property-tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.expression import ColumnElement

from core.db.tables import CONSENTS, EVENTS, PROFILES
from core.segments.language import (
    EVENT_COLUMNS,
    AllOf,
    AnyOf,
    AttributeCondition,
    Compare,
    ConsentCondition,
    EventCondition,
    FirstCondition,
    LastCondition,
    NotOf,
    PluginCondition,
    ScoreCondition,
    SegmentRef,
    SequenceCondition,
    field_ref,
)
from core.segments.sqlfuncs import (
    json_bool,
    json_key,
    json_number,
    json_text,
    starts_with,
    text_contains,
)
from core.segments.values import literal_kind
from core.types import SqlContext


def _compare(x: ColumnElement, cmp: Compare) -> ColumnElement:
    value = cmp.value
    return {
        ">=": x >= value,
        ">": x > value,
        "<=": x <= value,
        "<": x < value,
        "==": x == value,
        "!=": x != value,
    }[cmp.op]


def typed_value(source: ColumnElement, name: str, kind: str, is_column: bool) -> ColumnElement:
    """The field read as ``kind`` (text/number/bool), NULL when it is not one."""
    if is_column:
        col_kind = EVENT_COLUMNS.get(name, "text")
        if col_kind == kind:
            return source
        # A column never holds this kind: a typed NULL (PostgreSQL wants the type).
        return sa.cast(sa.null(), {"number": sa.Float, "bool": sa.Integer}.get(kind, sa.String))
    if kind == "number":
        return json_number(source, name)
    if kind == "bool":
        return json_bool(source, name)
    return json_text(source, name)


def filter_sql(x: ColumnElement, op: str, literal: Any) -> ColumnElement:
    """``values.matches`` in SQL: x is already read as the literal's kind."""
    if isinstance(literal, bool):
        literal = int(literal)
    if isinstance(literal, tuple):
        literal = tuple(int(v) if isinstance(v, bool) else v for v in literal)
    if op == "==":
        return x == literal
    if op == "!=":
        return sa.and_(x.is_not(None), x != literal)
    if op == "in":
        return x.in_(literal)
    if op == "not_in":
        return sa.and_(x.is_not(None), x.not_in(literal))
    if op == "contains":
        return text_contains(x, literal)
    if op == "starts_with":
        return starts_with(x, literal)
    return {">": x > literal, ">=": x >= literal, "<": x < literal, "<=": x <= literal}[op]


def event_field(name: str, kind: str) -> ColumnElement:
    ref_kind, key = field_ref(name)
    if ref_kind == "column":
        return typed_value(EVENTS.c[key], key, kind, True)
    return typed_value(EVENTS.c.properties, key, kind, False)


def where_sql(where: tuple) -> list[ColumnElement]:
    return [filter_sql(event_field(f.field, literal_kind(f.value)), f.op, f.value) for f in where]


@dataclass
class Features:
    """Feature columns requested by the rules, each computed once."""

    as_of: datetime
    event: dict[tuple, sa.Label] = field(default_factory=dict)
    session_inner: dict[tuple, sa.Label] = field(default_factory=dict)
    session: dict[tuple, sa.Label] = field(default_factory=dict)
    types: set[str] = field(default_factory=set)
    # (feature key, delta): next change candidates, feature is a time.
    changes: list[tuple[tuple, timedelta]] = field(default_factory=list)

    def _cond(self, types: tuple[str, ...], within: timedelta | None, where: tuple):
        self.types.update(types)
        parts = [EVENTS.c.type.in_(types), *where_sql(where)]
        if within is not None:
            parts.append(EVENTS.c.ts > self.as_of - within)
        return sa.and_(*parts)

    def _event_feature(self, key: tuple, expr_fn) -> tuple:
        if key not in self.event:
            self.event[key] = expr_fn().label(f"f{len(self.event)}")
        return key

    def _aggregate(self, kind: str, prop: str | None, types, within, where):
        """The measure over matching events, for a per-profile or per-session GROUP BY."""
        cond = self._cond(types, within, where)
        if kind == "count":
            return sa.func.count(sa.case((cond, 1)))
        if kind == "distinct":
            ref_kind, name = field_ref(prop)
            value = EVENTS.c[name] if ref_kind == "column" else json_key(EVENTS.c.properties, name)
            return sa.func.count(sa.distinct(sa.case((cond, value))))
        agg = {"sum": sa.func.sum, "min": sa.func.min, "max": sa.func.max, "avg": sa.func.avg}
        return agg[kind](sa.case((cond, event_field(prop, "number"))))

    def measure(self, kind: str, prop: str | None, types, within, where) -> tuple:
        key = ("m", kind, prop, types, within, where)
        return self._event_feature(key, lambda: self._aggregate(kind, prop, types, within, where))

    def time(self, last: bool, types, within, where) -> tuple:
        key = ("t", last, types, within, where)

        def build():
            picked = sa.case((self._cond(types, within, where), EVENTS.c.ts))
            return sa.func.max(picked) if last else sa.func.min(picked)

        return self._event_feature(key, build)

    def session_measure(self, kind: str, prop: str | None, types, within, where, cmp: Compare):
        """1 when some session alone satisfies the measure, else 0."""
        inner_n = ("sm", "count", None, types, within, where)
        inner = ("sm", kind, prop, types, within, where)
        for k in (inner_n, inner):
            if k not in self.session_inner:
                expr = self._aggregate(*k[1:])
                self.session_inner[k] = expr.label(f"s{len(self.session_inner)}")
        key = ("s", inner, cmp)
        if key not in self.session:
            self.session[key] = (inner_n, inner, cmp, f"p{len(self.session)}")
        return key


class Compiler:
    """Compiles rules to boolean SQL over feature columns."""

    def __init__(
        self,
        as_of: datetime,
        segments: dict[str, Any] | None = None,
        plugins: dict[str, Any] | None = None,
    ) -> None:
        self.as_of = as_of
        self.f = Features(as_of)
        self.segments = segments or {}
        self.plugins = plugins

    # Column references are resolved once the feature subqueries exist.
    def compile(self, rule: Any) -> Any:
        if isinstance(rule, AllOf):
            return ("and", [self.compile(r) for r in rule.all])
        if isinstance(rule, AnyOf):
            return ("or", [self.compile(r) for r in rule.any])
        if isinstance(rule, NotOf):
            return ("not", self.compile(rule.not_))
        if isinstance(rule, EventCondition):
            kind, agg, cmp = rule.measure
            prop = agg.property if agg is not None else None
            if rule.within is not None:
                self.f.changes.append(
                    (self.f.time(False, rule.event, rule.within, rule.where), rule.within)
                )
            if rule.per == "session":
                return (
                    "session",
                    self.f.session_measure(kind, prop, rule.event, rule.within, rule.where, cmp),
                )
            key = self.f.measure(kind, prop, rule.event, rule.within, rule.where)
            return ("measure", key, kind, cmp)
        if isinstance(rule, LastCondition | FirstCondition):
            spec = rule.last if isinstance(rule, LastCondition) else rule.first
            key = self.f.time(isinstance(rule, LastCondition), spec.event, None, spec.where)
            for d in (spec.older_than, spec.newer_than):
                if d is not None:
                    self.f.changes.append((key, d))
            return ("time", key, spec.older_than, spec.newer_than)
        if isinstance(rule, SequenceCondition):
            spec = rule.sequence
            a = self.f.time(True, spec.first, None, ())
            b = self.f.time(True, spec.then_not, None, ())
            self.f.changes += [(a, spec.within), (a, spec.lookback)]
            return ("sequence", a, b, spec.within, spec.lookback)
        if isinstance(rule, AttributeCondition | ConsentCondition | ScoreCondition):
            return ("profile", rule)
        if isinstance(rule, SegmentRef):
            if rule.segment not in self.segments:
                raise LookupError(f"unknown segment {rule.segment!r}")
            return self.compile(self.segments[rule.segment])
        if isinstance(rule, PluginCondition):
            if self.plugins is None:
                from core.segments.conditions import condition_kinds

                self.plugins = condition_kinds()
            if rule.kind not in self.plugins:
                raise LookupError(f"no plugin provides condition kind {rule.kind!r}")
            return ("plugin", self.plugins[rule.kind], rule.params)
        raise TypeError(f"unknown rule {rule!r}")

    # -- the query ------------------------------------------------------------------
    def query(self, compiled: dict[str, Any], profile_ids: list[int] | None = None):
        """SELECT profile id, one boolean per segment, and next-change times."""
        ev = self._event_subquery()
        ss = self._session_subquery()
        p = PROFILES.alias("p")
        cols: dict[tuple, ColumnElement] = {}
        if ev is not None:
            for key, label in self.f.event.items():
                cols[key] = ev.c[label.name]
        sess: dict[tuple, ColumnElement] = {}
        if ss is not None:
            for key, (_, _, _, name) in self.f.session.items():
                sess[key] = ss.c[name]
        ctx = _Ctx(self.as_of, cols, sess, p)
        selects = [p.c.id.label("profile_id")]
        for name, tree in compiled.items():
            selects.append(sa.case((ctx.render(tree), 1), else_=0).label(f"seg_{name}"))
        change_cols = []
        for i, (key, delta) in enumerate(self.f.changes):
            change_cols.append((f"c{i}", delta))
            selects.append(cols[key].label(f"c{i}"))
        stmt = sa.select(*selects).select_from(p)
        if ev is not None:
            stmt = stmt.outerjoin(ev, ev.c.profile_id == p.c.id)
        if ss is not None:
            stmt = stmt.outerjoin(ss, ss.c.profile_id == p.c.id)
        stmt = stmt.where(p.c.merged_into.is_(None))
        if profile_ids is not None:
            stmt = stmt.where(p.c.id.in_(profile_ids))
        return stmt, change_cols

    def _event_subquery(self):
        if not self.f.event:
            return None
        return (
            sa.select(EVENTS.c.profile_id, *self.f.event.values())
            .where(EVENTS.c.ts <= self.as_of, EVENTS.c.type.in_(sorted(self.f.types)))
            .group_by(EVENTS.c.profile_id)
            .subquery("ev")
        )

    def _session_subquery(self):
        if not self.f.session:
            return None
        inner = (
            sa.select(EVENTS.c.profile_id, EVENTS.c.session_id, *self.f.session_inner.values())
            .where(
                EVENTS.c.ts <= self.as_of,
                EVENTS.c.session_id.is_not(None),
                EVENTS.c.type.in_(sorted(self.f.types)),
            )
            .group_by(EVENTS.c.profile_id, EVENTS.c.session_id)
            .subquery("si")
        )
        outs = []
        for inner_n, inner_key, cmp, name in self.f.session.values():
            n = inner.c[self.f.session_inner[inner_n].name]
            value = inner.c[self.f.session_inner[inner_key].name]
            kind = inner_key[1]
            if kind in ("count", "sum"):
                value = sa.func.coalesce(value, 0)
            ok = sa.and_(n > 0, _compare(value, cmp))
            outs.append(sa.func.max(sa.case((ok, 1), else_=0)).label(name))
        return sa.select(inner.c.profile_id, *outs).group_by(inner.c.profile_id).subquery("ss")


@dataclass
class _Ctx:
    as_of: datetime
    cols: dict[tuple, ColumnElement]
    sess: dict[tuple, ColumnElement]
    p: Any

    def render(self, tree: Any) -> ColumnElement:
        op = tree[0]
        if op == "and":
            return sa.and_(*[self.render(t) for t in tree[1]])
        if op == "or":
            return sa.or_(*[self.render(t) for t in tree[1]])
        if op == "not":
            return sa.not_(self.render(tree[1]))
        if op == "measure":
            _, key, kind, cmp = tree
            x = self.cols[key]
            if kind in ("count", "sum", "distinct"):
                x = sa.func.coalesce(x, 0)
            return sa.and_(x.is_not(None), _compare(x, cmp))
        if op == "session":
            return sa.func.coalesce(self.sess[tree[1]], 0) == 1
        if op == "time":
            _, key, older, newer = tree
            t = self.cols[key]
            parts = [t.is_not(None)]
            if older is not None:
                parts.append(t <= self.as_of - older)
            if newer is not None:
                parts.append(t > self.as_of - newer)
            return sa.and_(*parts)
        if op == "sequence":
            _, a_key, b_key, within, lookback = tree
            a, b = self.cols[a_key], self.cols[b_key]
            return sa.and_(
                a.is_not(None),
                a > self.as_of - lookback,
                a <= self.as_of - within,
                sa.or_(b.is_(None), b <= a),
            )
        if op == "profile":
            return self._profile(tree[1])
        if op == "plugin":
            _, kind, params = tree
            ctx = SqlContext(self.p.c.id, self.p, EVENTS, self.as_of)
            return sa.case((kind.sql(params, ctx), 1), else_=0) == 1
        raise TypeError(f"cannot render {op}")

    def _profile(self, rule: Any) -> ColumnElement:
        p = self.p
        if isinstance(rule, AttributeCondition):
            spec = rule.attribute
            if spec.op in ("exists", "not_exists"):
                present = json_key(p.c.attributes, spec.attribute).is_not(None)
                return present if spec.op == "exists" else sa.not_(present)
            x = typed_value(p.c.attributes, spec.attribute, literal_kind(spec.value), False)
            return sa.func.coalesce(filter_sql(x, spec.op, spec.value), False)
        if isinstance(rule, ConsentCondition):
            return sa.exists().where(
                CONSENTS.c.profile_id == p.c.id,
                CONSENTS.c.purpose == rule.consent,
                CONSENTS.c.granted.is_(True),
            )
        if isinstance(rule, ScoreCondition):
            from core.scoring import latest_score_sql

            latest = latest_score_sql(rule.score.score, p.c.id, self.as_of)
            return sa.and_(latest.is_not(None), _compare(latest, rule.score.op))
        raise TypeError(f"not a profile condition: {rule!r}")
