"""The points model (``plugins.scoring.points``): validation, one profile in
Python, everyone in SQL."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import (
    EVENTS,
    PROFILES,
    Duration,
    EventTypes,
    ScoreValue,
    ScoringModel,
    Where,
    check_event_types,
    epoch_seconds,
    validation_reason,
    where_matches,
    where_sql,
)


class Cap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: int = Field(ge=1)
    per: Duration


class PointsRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event: EventTypes
    points: float
    where: Where = ()
    cap: Cap | None = None

    def model_post_init(self, _context: Any) -> None:
        check_event_types(self.event)


class PointsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[PointsRule, ...] = Field(min_length=1)
    half_life: Duration
    window: Duration | None = None
    cap: float = Field(gt=0)


def validate(params: Any) -> PointsParams:
    try:
        return PointsParams.model_validate(params)
    except ValidationError as exc:
        loc, msg = validation_reason(exc)
        raise ValueError(f"{loc}: {msg}" if loc else msg) from None


def _seconds(d: timedelta) -> int:
    return int(d.total_seconds())


# -- Python (one profile) ----------------------------------------------------------


def score_one(profile: Any, params: PointsParams, as_of: datetime) -> ScoreValue:
    now = math.floor(as_of.timestamp())
    half = _seconds(params.half_life)
    oldest = as_of - params.window if params.window else None
    total = 0.0
    per_rule = []
    for rule in params.rules:
        types = set(rule.event)
        ages = []
        for e in profile.events:
            if e.type not in types or e.ts > as_of or (oldest is not None and e.ts <= oldest):
                continue
            age = now - math.floor(e.ts.timestamp())
            if where_matches(e, rule.where):
                ages.append(age)
        if rule.cap is not None:
            per = _seconds(rule.cap.per)
            buckets: dict[int, list[int]] = {}
            for age in ages:
                buckets.setdefault(age // per, []).append(age)
            ages = [a for b in buckets.values() for a in sorted(b)[: rule.cap.events]]
        points = sum(rule.points * 0.5 ** (a / half) for a in ages)
        per_rule.append(points)
        total += points
    return _value(total, per_rule, params)


def _value(total: float, per_rule: list[float], params: PointsParams) -> ScoreValue:
    value = 100.0 * min(max(total, 0.0), params.cap) / params.cap
    return ScoreValue(value, {"points": total, "by_rule": per_rule})


# -- SQL (everyone) ------------------------------------------------------------------


def points_query(params: PointsParams, as_of: datetime) -> sa.Select:
    """profile_id and, per rule, the sum of decay factors (times points: the rule's points)."""
    now = math.floor(as_of.timestamp())
    half = float(_seconds(params.half_life))
    age = (sa.literal(now, sa.BigInteger) - epoch_seconds(EVENTS.c.ts)).label("age")
    parts = []
    for i, rule in enumerate(params.rules):
        cond = [EVENTS.c.type.in_(rule.event), EVENTS.c.ts <= as_of, *where_sql(rule.where)]
        if params.window is not None:
            cond.append(EVENTS.c.ts > as_of - params.window)
        parts.append(sa.select(EVENTS.c.profile_id, sa.literal(i).label("rule"), age).where(*cond))
    matched = sa.union_all(*parts).subquery("matched")
    bucket_size = [
        (i, _seconds(r.cap.per), r.cap.events) for i, r in enumerate(params.rules) if r.cap
    ]
    if bucket_size:
        bucket = sa.case(
            *[
                (matched.c.rule == i, sa.func.floor(matched.c.age / float(per)))
                for i, per, _ in bucket_size
            ],
            else_=0,
        )
        limit = sa.case(*[(matched.c.rule == i, n) for i, _, n in bucket_size], else_=None)
        rank = sa.func.row_number().over(
            partition_by=(matched.c.profile_id, matched.c.rule, bucket),
            order_by=matched.c.age,
        )
        ranked = sa.select(matched, rank.label("rn"), limit.label("lim")).subquery("ranked")
        source = sa.select(ranked).where(
            sa.or_(ranked.c.lim.is_(None), ranked.c.rn <= ranked.c.lim)
        )
        matched = source.subquery("capped")
    decay = sa.func.power(0.5, matched.c.age / half)
    # One row per profile, a column per rule: half the rows of grouping by rule.
    per_rule = [
        sa.func.sum(sa.case((matched.c.rule == i, decay))).label(f"r{i}")
        for i in range(len(params.rules))
    ]
    return sa.select(matched.c.profile_id, *per_rule).group_by(matched.c.profile_id)


def score_all(conn: Any, params: PointsParams, as_of: datetime, name: str):
    # Everyone gets a score: no points is a score of 0, which "disengaged"
    # segments (score < 10) rely on.
    live = sa.select(PROFILES.c.id).where(PROFILES.c.merged_into.is_(None))
    zero = [0.0] * len(params.rules)
    per_profile = {pid: zero for pid in conn.execute(live).scalars().all()}
    weights = [r.points for r in params.rules]
    for pid, *sums in conn.execute(points_query(params, as_of)).all():
        if pid in per_profile:
            per_profile[pid] = [
                w * s if s is not None else 0.0 for w, s in zip(weights, sums, strict=True)
            ]
    return {name: {pid: _value(sum(rules), rules, params) for pid, rules in per_profile.items()}}


POINTS = ScoringModel(
    kind="points",
    description="points per behaviour with decay, caps and 0..100 normalisation",
    score_all=score_all,
    validate=validate,
    score_one=score_one,
)
