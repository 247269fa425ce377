"""The RFM model and the rfm_group condition (``plugins.scoring.rfm``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core import (
    EVENTS,
    PROFILES,
    SCORES,
    ConditionKind,
    ScoreValue,
    ScoringModel,
    is_snake_name,
    json_key,
    latest_score_sql,
    parse_duration,
)

# The stored names get "_r", "_f", "_m" added and must still fit scores.model.
SCORE_NAME_MAX_LENGTH = SCORES.c.model.type.length - len("_r")

# -- the R-F group map ---------------------------------------------------------------

# group -> (R scores, F scores); the cells of the map in the module docstring.
GROUP_CELLS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "champions": ((5,), (4, 5)),
    "loyal": ((3, 4), (4, 5)),
    "potential_loyalist": ((4, 5), (2, 3)),
    "new_customers": ((5,), (1,)),
    "promising": ((4,), (1,)),
    "need_attention": ((3,), (3,)),
    "about_to_sleep": ((3,), (1, 2)),
    "at_risk": ((1, 2), (3, 4)),
    "cant_lose": ((1, 2), (5,)),
    "hibernating": ((1, 2), (1, 2)),
}
GROUPS: tuple[str, ...] = tuple(GROUP_CELLS)


def _group_map() -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for group, (rs, fs) in GROUP_CELLS.items():
        for r in rs:
            for f in fs:
                if (r, f) in out:
                    raise AssertionError(f"R{r} F{f} is both {out[(r, f)]} and {group}")
                out[(r, f)] = group
    missing = [(r, f) for r in range(1, 6) for f in range(1, 6) if (r, f) not in out]
    if missing:
        raise AssertionError(f"cells without a group: {missing}")
    return out


GROUP_OF: dict[tuple[int, int], str] = _group_map()


def group_of(r: int, f: int) -> str:
    return GROUP_OF[(r, f)]


# -- params ------------------------------------------------------------------------


@dataclass(frozen=True)
class RfmParams:
    purchase: str = "purchase"
    refund: str | None = "refund"
    window: timedelta | None = None


def _event_type(key: str, value: Any, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        allowed = "an event type name or null" if nullable else "an event type name"
        raise ValueError(f"{key}: expected {allowed}, got {value!r}")
    return value


def validate(params: Any) -> RfmParams:
    if params is None:
        params = {}
    if isinstance(params, RfmParams):
        return params
    if not isinstance(params, dict):
        raise ValueError("rfm params are a mapping with purchase, refund, window")
    unknown = set(params) - {"purchase", "refund", "window"}
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            "(rfm takes purchase, refund, window)"
        )
    purchase = _event_type("purchase", params.get("purchase", "purchase"), nullable=False)
    refund = _event_type("refund", params.get("refund", "refund"), nullable=True)
    if refund == purchase:
        raise ValueError(f"refund: must differ from purchase ({purchase!r})")
    window = params.get("window")
    if window is not None:
        try:
            window = parse_duration(window)
        except ValueError as exc:
            raise ValueError(f"window: {exc}") from None
    return RfmParams(purchase, refund, window)  # type: ignore[arg-type]


# -- batch scoring -------------------------------------------------------------------


def _day(ts: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """The UTC calendar day of a timestamp as YYYY-MM-DD text."""
    if dialect == "sqlite":  # stored as naive UTC text "YYYY-MM-DD HH:MM:SS..."
        return sa.func.substr(ts, 1, 10)
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", ts), "YYYY-MM-DD")
    return sa.cast(sa.cast(ts, sa.Date), sa.String)


def _order_key(dialect: str) -> sa.ColumnElement:
    """An order's identity: order_id, else invoice, else the purchase's UTC day."""
    order_id = json_key(EVENTS.c.properties, "order_id")
    invoice = json_key(EVENTS.c.properties, "invoice")
    return sa.case(
        (order_id.is_not(None), sa.literal("o:") + order_id),
        (invoice.is_not(None), sa.literal("o:") + invoice),
        else_=sa.literal("d:") + _day(EVENTS.c.ts, dialect),
    )


def rfm_query(params: RfmParams, as_of: datetime, dialect: str) -> sa.Select:
    """profile_id, last_purchase, frequency, monetary for profiles with a purchase."""
    is_purchase = EVENTS.c.type == params.purchase
    value = sa.func.coalesce(EVENTS.c.value, 0.0)
    money = [(is_purchase, value)]
    types = [params.purchase]
    if params.refund is not None:
        money.append((EVENTS.c.type == params.refund, -sa.func.abs(value)))
        types.append(params.refund)
    cond = [EVENTS.c.ts <= as_of, EVENTS.c.type.in_(types), PROFILES.c.merged_into.is_(None)]
    if params.window is not None:
        cond.append(EVENTS.c.ts > as_of - params.window)
    last = sa.func.max(sa.case((is_purchase, EVENTS.c.ts)))
    return (
        sa.select(
            EVENTS.c.profile_id,
            last.label("last_purchase"),
            sa.func.count(sa.distinct(sa.case((is_purchase, _order_key(dialect))))).label(
                "frequency"
            ),
            sa.func.sum(sa.case(*money, else_=0.0)).label("monetary"),
        )
        .select_from(EVENTS.join(PROFILES, PROFILES.c.id == EVENTS.c.profile_id))
        .where(*cond)
        .group_by(EVENTS.c.profile_id)
        .having(last.is_not(None))
    )


def quintiles(values: list[float]) -> list[int]:
    """1..5 per value by mid-rank percentile; higher values score higher."""
    n = len(values)
    order = sorted(range(n), key=values.__getitem__)
    out = [0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        # 0-based positions i..j are 1-based s..e = i+1..j+1; p = (s - 1 + e) / 2n.
        score = (5 * (i + j + 1)) // (2 * n) + 1
        for k in range(i, j + 1):
            out[order[k]] = score
        i = j + 1
    return out


def score_all(conn: Any, params: RfmParams, as_of: datetime, name: str):
    if not is_snake_name(name, SCORE_NAME_MAX_LENGTH):
        raise ValueError(
            f"rfm score name {name!r} is too long to add _r/_f/_m ({SCORE_NAME_MAX_LENGTH} at most)"
        )
    rows = conn.execute(rfm_query(params, as_of, conn.dialect.name)).all()
    pids = [r.profile_id for r in rows]
    recency = [int((as_of - r.last_purchase).total_seconds() // 86400) for r in rows]
    frequency = [int(r.frequency) for r in rows]
    monetary = [round(float(r.monetary or 0.0), 2) for r in rows]
    r_scores = quintiles([-d for d in recency])
    f_scores = quintiles([float(f) for f in frequency])
    m_scores = quintiles(monetary)
    out: dict[str, dict[int, ScoreValue]] = {name: {}, f"{name}_r": {}, f"{name}_f": {}}
    out[f"{name}_m"] = {}
    for i, pid in enumerate(pids):
        r, f, m = r_scores[i], f_scores[i], m_scores[i]
        components = {
            "recency_days": recency[i],
            "frequency": frequency[i],
            "monetary": monetary[i],
            "group": group_of(r, f),
        }
        out[name][pid] = ScoreValue(float(r * 100 + f * 10 + m), components)
        out[f"{name}_r"][pid] = ScoreValue(float(r), components)
        out[f"{name}_f"][pid] = ScoreValue(float(f), components)
        out[f"{name}_m"][pid] = ScoreValue(float(m), components)
    return out


# -- the rfm_group condition ----------------------------------------------------------


def validate_condition(params: Any) -> dict[str, Any]:
    """``champions`` | ``[champions, loyal]`` | ``{score: rfm, group: ...}``."""
    valid = ", ".join(sorted(GROUPS))
    score: Any = "rfm"
    if isinstance(params, dict):
        unknown = set(params) - {"score", "group"}
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                "(rfm_group takes score and group)"
            )
        if "group" not in params:
            raise ValueError(f"group: required (one or more of {valid})")
        score = params.get("score", "rfm")
        groups = params["group"]
    else:
        groups = params
    if not is_snake_name(score, SCORE_NAME_MAX_LENGTH):
        raise ValueError(f"score: {score!r} is not an rfm score name")
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"expected a group or a list of groups (of {valid})")
    unknown_groups = [g for g in groups if not isinstance(g, str) or g not in GROUP_CELLS]
    if unknown_groups:
        names = ", ".join(repr(g) for g in unknown_groups)
        raise ValueError(f"unknown rfm group {names}; valid groups: {valid}")
    return {"score": score, "group": sorted(set(groups))}


def _codes(groups: list[str]) -> list[int]:
    """R*10 + F of every cell of these groups."""
    return sorted(10 * r + f for (r, f), g in GROUP_OF.items() if g in groups)


# Both forms test R*10 + F (the latest _r and _f values) against the groups'
# cells with the same float arithmetic, so they agree for any stored values.
def condition_python(params: dict[str, Any], profile: Any, as_of: datetime) -> bool:
    r = profile.scores.get(f"{params['score']}_r")
    f = profile.scores.get(f"{params['score']}_f")
    if r is None or f is None:
        return False
    return r * 10 + f in _codes(params["group"])


def _latest(model: str, ctx: Any) -> sa.ScalarSelect:
    return latest_score_sql(model, ctx.profile_id, ctx.as_of)


def condition_sql(params: dict[str, Any], ctx: Any) -> sa.ColumnElement:
    r = _latest(f"{params['score']}_r", ctx)
    f = _latest(f"{params['score']}_f", ctx)
    # NULL (no score) is not a match: the evaluator reads only a true result.
    return (r * 10 + f).in_([float(c) for c in _codes(params["group"])])


RFM = ScoringModel(
    kind="rfm",
    description="recency, frequency, monetary quintiles (1..5) and named R-F groups",
    score_all=score_all,
    validate=validate,
    score_one=None,  # quintiles need the whole population
)
RFM_GROUP = ConditionKind(
    "rfm_group",
    "the profile's latest RFM group (from <score>_r and <score>_f) is one of these",
    condition_python,
    condition_sql,
    validate_condition,
)
