"""Campaign results: who was assigned to which arm, what they did in the
attribution window after, and each arm's lift against its holdout.

Participants (one model for three sources; docs/campaigns.md):

* workflow runs: campaign = the workflow, arm = the split arm its run took
  (``workflow_states.arm``), the holdout = runs ``held_out``; assigned when
  the run took the split (its ``arm`` / ``held_out`` history row). Runs that
  have not reached a split are not assigned yet. A workflow without a split
  has one arm, ``all``, and no holdout.
* ``segflow send``: messages keyed ``campaign:segment:template:profile_id``;
  campaign and segment from the key (no segment when the part names none
  stored, as in the demo's ``demo:DATE:template:id``), arm = the template, no
  holdout; assigned when the message was recorded (refused ones too: they
  were aimed at).
* imported assignments: ``campaign_assigned`` events; campaign = the event's
  campaign, arm = ``properties.arm``, holdout when ``properties.holdout`` is
  true, segment = ``properties.segment`` (optional); assigned at the event's ts.

A person counts once per campaign, in the first assignment. Everything a
participant did counts from the assignment to the end of the window (and not
after ``as_of``): visited (any event of ``visit_types``), converted (a
purchase), revenue (the purchases' value), and, for the campaign's own
messages, sent (handed to a provider), delivered (status sent), opened,
clicked and unsubscribed (tracking events whose ``properties.message`` is
the message's key; for imported campaigns, those whose campaign is its name).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.sql import chunks
from core.db.tables import (
    EVENTS,
    MESSAGES,
    SEGMENTS,
    WORKFLOW_ACTIONS,
    WORKFLOW_HISTORY,
    WORKFLOW_STATES,
)
from core.monitoring.alerts import Alert
from core.monitoring.lift import CONFIDENCE, Interval, diff_proportions, mean_lift, relative
from core.types import UsageError

ASSIGNED = "campaign_assigned"
WINDOW = timedelta(days=14)
VISIT_TYPES = ("page_view", "product_view", "session_start")
# Message statuses that mean the provider took the message.
HANDED = ("sent", "unknown", "bounced")
COUNTS = ("sent", "delivered", "opened", "clicked", "visited", "converted", "unsubscribed")
TRACKING = {"email_open": "opened", "email_click": "clicked", "unsubscribe": "unsubscribed"}
# Rates compared with the holdout's; clicks and opens need an email, so the
# holdout has none to compare with.
LIFT_RATES = {"visit_rate": "visited", "conversion_rate": "converted"}
# Above this many participants, their events are read by type and time (one
# range scan) rather than person by person, unless the range holds many more
# events than there are participants (a busy shop's page views).
BY_PERSON_MAX = 5000
RANGE_PER_PERSON = 4
_PARTS = ["campaign", "kind", "workflow", "segment", "arm", "holdout", "profile_id", "assigned_at"]


class UnknownCampaign(UsageError):
    """No campaign of that name has participants."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- participants ----------------------------------------------------------------------


def _raw_ts(column: sa.ColumnElement) -> sa.ColumnElement:
    """A timestamp column as the driver gives it (SQLite: text), parsed later by
    pandas for all rows at once rather than one datetime at a time."""
    return sa.type_coerce(column, sa.String).label(column.key)


def _times(values: pd.Series) -> pd.Series:
    """UTC timestamps from the driver's values (aware datetimes, or SQLite's naive UTC text)."""
    return pd.to_datetime(values, utc=True, format="ISO8601")


def _imported(conn: Connection, campaign: str | None) -> pd.DataFrame:
    props = EVENTS.c.properties
    q = sa.select(
        EVENTS.c.campaign,
        EVENTS.c.profile_id,
        _raw_ts(EVENTS.c.ts),
        props["arm"].as_string(),
        props["holdout"].as_string(),
        props["segment"].as_string(),
    ).where(EVENTS.c.type == ASSIGNED, EVENTS.c.campaign.is_not(None))
    if campaign is not None:
        q = q.where(EVENTS.c.campaign == campaign)
    cols = ["campaign", "profile_id", "assigned_at", "arm", "holdout", "segment"]
    frame = pd.DataFrame([tuple(r) for r in conn.execute(q).all()], columns=cols)
    # JSON true reads back as 1 (SQLite) or 'true' (PostgreSQL).
    frame["holdout"] = frame["holdout"].astype(str).str.lower().isin(("1", "true"))
    unnamed = frame["arm"].isna()
    frame.loc[unnamed, "arm"] = frame.loc[unnamed, "holdout"].map({True: "holdout", False: "all"})
    frame["arm"] = frame["arm"].astype(str)
    frame["kind"], frame["workflow"] = "imported", None
    return frame[_PARTS]


def _workflow_segments(conn: Connection) -> dict[str, str | None]:
    from core.automation.language import default_registry
    from core.automation.store import Definitions

    try:
        current = Definitions(conn, default_registry()).current()
    except Exception:  # noqa: BLE001 - a definition the loaded plugins cannot parse
        return {}
    return {name: wf.segment for name, wf in current.items()}


def _workflow_runs(conn: Connection, campaign: str | None) -> list[tuple]:
    s, h = WORKFLOW_STATES.c, WORKFLOW_HISTORY.c
    took = (
        sa.select(h.run_id, sa.func.min(h.at).label("at"))
        .where(h.what.in_(("arm", "held_out")))
        .group_by(h.run_id)
        .subquery()
    )
    q = sa.select(s.workflow, s.arm, s.status, s.profile_id, s.entered_at, took.c.at).outerjoin(
        took, took.c.run_id == s.id
    )
    if campaign is not None:
        q = q.where(s.workflow == campaign)
    runs = conn.execute(q).all()
    split = {wf for wf, arm, *_ in runs if arm is not None}
    segments = _workflow_segments(conn) if runs else {}
    rows = []
    for wf, arm, status, pid, entered, at in runs:
        if wf in split and arm is None:
            continue  # not at the split yet
        rows.append(
            (
                wf,
                "workflow",
                wf,
                segments.get(wf),
                arm or "all",
                status == "held_out",
                pid,
                at or entered,
            )
        )
    return rows


def _sends(conn: Connection, campaign: str | None) -> list[tuple]:
    m, a = MESSAGES.c, WORKFLOW_ACTIONS.c
    q = (
        sa.select(m.idempotency_key, m.profile_id, m.template, m.created_at)
        .outerjoin(WORKFLOW_ACTIONS, a.idempotency_key == m.idempotency_key)
        .where(a.id.is_(None))
    )
    if campaign is not None:
        q = q.where(m.idempotency_key.startswith(f"{campaign}:", autoescape=True))
    segments = set(conn.execute(sa.select(SEGMENTS.c.name)).scalars())
    rows = []
    for key, pid, template, created in conn.execute(q):
        parts = key.split(":")
        if len(parts) != 4 or parts[2] != template or parts[3] != str(pid):
            continue  # not a send's key
        segment = parts[1] if parts[1] in segments else None
        rows.append((parts[0], "send", None, segment, template, False, pid, created))
    return rows


def participants(
    conn: Connection,
    campaign: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """One row per (campaign, person), assigned in [since, until] when given."""
    others = pd.DataFrame(_workflow_runs(conn, campaign) + _sends(conn, campaign), columns=_PARTS)
    frames = [f for f in (_imported(conn, campaign), others) if not f.empty]
    if not frames:
        return others
    for f in frames:
        f["assigned_at"] = _times(f["assigned_at"])
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if since is not None:
        frame = frame[frame["assigned_at"] >= pd.Timestamp(_utc(since))]
    if until is not None:
        frame = frame[frame["assigned_at"] <= pd.Timestamp(_utc(until))]
    frame = frame.sort_values("assigned_at", kind="stable")
    return frame.drop_duplicates(["campaign", "profile_id"]).reset_index(drop=True)


# -- what participants did -------------------------------------------------------------


def _messages(conn: Connection, parts: pd.DataFrame) -> pd.DataFrame:
    """The campaigns' messages: campaign, profile_id, key, template, status."""
    m, a = MESSAGES.c, WORKFLOW_ACTIONS.c
    cols = ["campaign", "profile_id", "key", "template", "status"]
    rows: list[tuple] = []
    workflows = sorted(set(parts.loc[parts["kind"] == "workflow", "campaign"]))
    for chunk in chunks(workflows):
        q = (
            sa.select(a.workflow, m.profile_id, m.idempotency_key, m.template, m.status)
            .join(WORKFLOW_ACTIONS, a.idempotency_key == m.idempotency_key)
            .where(a.workflow.in_(chunk))
        )
        rows.extend(tuple(r) for r in conn.execute(q).all())
    for name in sorted(set(parts.loc[parts["kind"] == "send", "campaign"])):
        q = (
            sa.select(m.profile_id, m.idempotency_key, m.template, m.status)
            .outerjoin(WORKFLOW_ACTIONS, a.idempotency_key == m.idempotency_key)
            .where(a.id.is_(None), m.idempotency_key.startswith(f"{name}:", autoescape=True))
        )
        rows.extend((name, pid, key, t, st) for pid, key, t, st in conn.execute(q))
    frame = pd.DataFrame(rows, columns=cols)
    return frame.merge(parts[["campaign", "profile_id"]], on=["campaign", "profile_id"])


def _events(
    conn: Connection,
    types: Sequence[str],
    parts: pd.DataFrame,
    end: pd.Timestamp,
    columns: Sequence[sa.ColumnElement],
) -> list[tuple]:
    """Events of ``types`` of the participants between the first assignment and ``end``."""
    start = parts["assigned_at"].min().to_pydatetime()
    base = sa.select(EVENTS.c.profile_id, _raw_ts(EVENTS.c.ts), *columns).where(
        EVENTS.c.type.in_(types), EVENTS.c.ts >= start, EVENTS.c.ts <= end.to_pydatetime()
    )
    people = parts["profile_id"].unique()
    # Plain tuples: pandas probes rows for namedtuple fields, slow on SQLAlchemy's Row.
    if len(people) > BY_PERSON_MAX:
        in_range = conn.execute(
            sa.select(sa.func.count()).select_from(base.with_only_columns(EVENTS.c.id).subquery())
        ).scalar_one()
        if in_range <= RANGE_PER_PERSON * len(people):
            return [tuple(r) for r in conn.execute(base).all()]
    rows: list[tuple] = []
    for chunk in chunks([int(p) for p in people]):
        rows.extend(tuple(r) for r in conn.execute(base.where(EVENTS.c.profile_id.in_(chunk))))
    return rows


def _in_window(frame: pd.DataFrame, window: timedelta) -> pd.DataFrame:
    offset = frame["ts"] - frame["assigned_at"]
    return frame[(offset >= pd.Timedelta(0)) & (offset < pd.Timedelta(window))]


def outcomes(
    conn: Connection,
    parts: pd.DataFrame,
    window: timedelta = WINDOW,
    *,
    as_of: datetime | None = None,
    visit_types: Sequence[str] = VISIT_TYPES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``parts`` with, per participant, the COUNTS (0/1) and revenue in the window;
    and the campaigns' messages with opened / clicked / unsubscribed per message."""
    people = parts.copy()
    for name in COUNTS:
        people[name] = 0
    people["revenue"] = 0.0
    msgs = pd.DataFrame(columns=["campaign", "profile_id", "key", "template", "status"])
    if people.empty:
        return people, msgs
    end = people["assigned_at"].max() + pd.Timedelta(window)
    if as_of is not None:
        end = min(end, pd.Timestamp(_utc(as_of)))
    key = ["campaign", "profile_id"]
    keyed = people[key + ["assigned_at"]]

    def flag(found: pd.DataFrame, name: str) -> None:
        index = pd.MultiIndex.from_frame(people[key])
        people[name] = index.isin(pd.MultiIndex.from_frame(found[key])).astype(int)

    visits = pd.DataFrame(_events(conn, visit_types, people, end, []), columns=["profile_id", "ts"])
    if not visits.empty:
        visits["ts"] = _times(visits["ts"])
        flag(_in_window(visits.merge(keyed, on="profile_id"), window), "visited")
    buys = pd.DataFrame(
        _events(conn, ("purchase",), people, end, [EVENTS.c.value]),
        columns=["profile_id", "ts", "value"],
    )
    if not buys.empty:
        buys["ts"] = _times(buys["ts"])
        bought = _in_window(buys.merge(keyed, on="profile_id"), window)
        flag(bought, "converted")
        # Summed in value order: a person's revenue does not depend on the order
        # the events came back in, so stored and recomputed outcomes agree.
        bought = bought.assign(value=bought["value"].fillna(0.0))
        ordered = bought.sort_values(key + ["value"], kind="stable")
        spent = ordered.groupby(key)["value"].sum().rename("spent")
        people = people.merge(spent, left_on=key, right_index=True, how="left")
        people["revenue"] = people.pop("spent").fillna(0.0).astype(float)

    msgs = _messages(conn, people)
    if not msgs.empty:
        flag(msgs[msgs["status"].isin(HANDED)], "sent")
        flag(msgs[msgs["status"] == "sent"], "delivered")
    for name in TRACKING.values():
        msgs[name] = 0
    tracked = pd.DataFrame(
        _events(
            conn,
            tuple(TRACKING),
            people,
            end,
            [EVENTS.c.type, EVENTS.c.campaign, EVENTS.c.properties["message"].as_string()],
        ),
        columns=["profile_id", "ts", "type", "event_campaign", "key"],
    )
    if not tracked.empty:
        tracked["ts"] = _times(tracked["ts"])
        tracked["what"] = tracked["type"].map(TRACKING)
        by_message = tracked.merge(
            msgs[["campaign", "profile_id", "key"]], on=["profile_id", "key"]
        )
        imported = set(people.loc[people["kind"] == "imported", "campaign"])
        by_campaign = tracked[tracked["event_campaign"].isin(imported)].assign(
            campaign=lambda f: f["event_campaign"]
        )
        found = pd.concat([by_message, by_campaign], ignore_index=True)
        found = _in_window(found.merge(keyed, on=key), window)
        for kind, name in TRACKING.items():
            flag(found[found["what"] == name], name)
            keys = set(found.loc[found["type"] == kind, "key"].dropna())
            msgs[name] = msgs["key"].isin(keys).astype(int)
    return people, msgs


# -- results ---------------------------------------------------------------------------


@dataclass
class ArmResult:
    """One arm of a campaign: counts of people, rates of the arm's n, revenue,
    and (arms other than the holdout) the lift against the holdout."""

    arm: str
    holdout: bool
    n: int
    counts: dict[str, int]
    revenue: float
    templates: list[str] = field(default_factory=list)
    lift: dict[str, dict[str, Any]] | None = None

    @property
    def rates(self) -> dict[str, float]:
        rates = {f"{name}_rate": self.counts[name] / self.n for name in COUNTS}
        rates["visit_rate"] = rates.pop("visited_rate")
        rates["conversion_rate"] = rates.pop("converted_rate")
        return rates

    @property
    def revenue_per_person(self) -> float:
        return self.revenue / self.n

    def as_dict(self) -> dict[str, Any]:
        lift = None
        if self.lift is not None:
            lift = {
                metric: {k: v.as_dict() if isinstance(v, Interval) else v for k, v in parts.items()}
                for metric, parts in self.lift.items()
            }
        return {
            "arm": self.arm,
            "holdout": self.holdout,
            "n": self.n,
            "templates": self.templates,
            **self.counts,
            "revenue": round(self.revenue, 2),
            **self.rates,
            "revenue_per_person": self.revenue_per_person,
            "lift": lift,
        }


@dataclass
class CampaignResult:
    campaign: str
    kind: str  # workflow | send | imported
    workflow: str | None
    segment: str | None
    window: timedelta
    arms: list[ArmResult]
    # Per (arm, template): messages handed over, delivered, opened, clicked, unsubscribed.
    templates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def holdout(self) -> str | None:
        return next((a.arm for a in self.arms if a.holdout), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "kind": self.kind,
            "workflow": self.workflow,
            "segment": self.segment,
            "window_days": self.window / timedelta(days=1),
            "holdout": self.holdout,
            "n": sum(a.n for a in self.arms),
            "arms": [a.as_dict() for a in self.arms],
            "templates": self.templates,
        }


@dataclass
class Group:
    """What ``summarise`` needs of a group of participants (an arm, or a
    campaign's holdout): how many, the COUNTS, and the non-zero revenues."""

    n: int
    counts: dict[str, int]
    nonzero: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> Group:
        revenue = frame["revenue"].to_numpy(float)
        return cls(len(frame), {c: int(frame[c].sum()) for c in COUNTS}, revenue[revenue != 0])

    @property
    def revenue(self) -> float:
        # Exactly rounded, whatever order the values come in.
        return math.fsum(self.nonzero.tolist())

    def revenues(self) -> np.ndarray:
        """Everyone's revenue, sorted: the bootstrap draws from a fixed order."""
        values = np.concatenate([np.zeros(self.n - self.nonzero.size), self.nonzero])
        return np.sort(values)


def _lift(
    arm: Group, hold: Group, confidence: float, seed: int, reps: int
) -> dict[str, dict[str, Any]]:
    lift: dict[str, dict[str, Any]] = {}
    for metric, name in LIFT_RATES.items():
        k1, n1, k0, n0 = arm.counts[name], arm.n, hold.counts[name], hold.n
        lift[metric] = {
            "difference": diff_proportions(k1, n1, k0, n0, confidence),
            "relative": relative(k1 / n1, k0 / n0),
        }
    if arm.n >= 2 and hold.n >= 2:
        x1, x0 = arm.revenues(), hold.revenues()
        means = mean_lift(x1, x0, confidence, reps=reps, seed=seed)
        lift["revenue_per_person"] = {
            "difference": means["interval"],
            "welch": means["welch"],
            "bootstrap": means["bootstrap"],
            "relative": relative(float(x1.mean()), float(x0.mean())),
        }
    return lift


def arm_result(
    name: str,
    holdout: bool,
    group: Group,
    hold: Group | None,
    templates: list[str],
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    reps: int = 2000,
) -> ArmResult:
    """One arm's result from its aggregate (and its campaign holdout's, for the lift)."""
    lift = None
    if not holdout and hold is not None and hold.n:
        lift = _lift(group, hold, confidence, seed, reps)
    return ArmResult(
        arm=name,
        holdout=holdout,
        n=group.n,
        counts=dict(group.counts),
        revenue=group.revenue,
        templates=templates,
        lift=lift,
    )


def summarise(
    people: pd.DataFrame,
    msgs: pd.DataFrame,
    window: timedelta = WINDOW,
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    reps: int = 2000,
) -> list[CampaignResult]:
    """Per campaign and arm, from ``outcomes``. The campaign's kind, workflow and
    segment are its earliest participant's (by assignment time, then profile id)."""
    results = []
    for name, camp in people.groupby("campaign", sort=True):
        first = camp.sort_values(["assigned_at", "profile_id"], kind="stable").iloc[0]
        held = camp[camp["holdout"]]
        hold = Group.of(held) if len(held) else None
        arms = []
        for arm_name, arm in camp.groupby("arm", sort=True):
            sent = msgs[(msgs["campaign"] == name) & msgs["profile_id"].isin(arm["profile_id"])]
            arms.append(
                arm_result(
                    str(arm_name),
                    bool(arm["holdout"].any()),
                    Group.of(arm),
                    hold,
                    sorted(set(sent["template"])),
                    confidence=confidence,
                    seed=seed,
                    reps=reps,
                )
            )
        arms.sort(key=lambda a: (a.holdout, a.arm))
        results.append(
            CampaignResult(
                campaign=str(name),
                kind=str(first["kind"]),
                workflow=first["workflow"] if isinstance(first["workflow"], str) else None,
                segment=first["segment"] if isinstance(first["segment"], str) else None,
                window=window,
                arms=arms,
                templates=_template_rows(camp, msgs[msgs["campaign"] == name]),
            )
        )
    return results


def _template_rows(camp: pd.DataFrame, msgs: pd.DataFrame) -> list[dict[str, Any]]:
    if msgs.empty:
        return []
    arms = camp[["profile_id", "arm"]]
    frame = msgs.merge(arms, on="profile_id")
    frame["handed"] = frame["status"].isin(HANDED).astype(int)
    frame["delivered"] = (frame["status"] == "sent").astype(int)
    rows = []
    for (arm, template), g in frame.groupby(["arm", "template"], sort=True):
        rows.append(
            {
                "arm": str(arm),
                "template": str(template),
                "messages": len(g),
                "sent": int(g["handed"].sum()),
                **{c: int(g[c].sum()) for c in ("delivered", "opened", "clicked", "unsubscribed")},
            }
        )
    return rows


def campaign_results(
    engine: Engine,
    *,
    campaign: str | None = None,
    window: timedelta = WINDOW,
    segment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    as_of: datetime | None = None,
    visit_types: Sequence[str] = VISIT_TYPES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[CampaignResult]:
    """Every campaign's results (or ``campaign``'s, or those aimed at
    ``segment``), for people assigned in [since, until], over ``window``."""
    with engine.connect() as conn:
        parts = participants(conn, campaign, since=since, until=until)
        if campaign is not None and parts.empty and participants(conn, campaign).empty:
            raise UnknownCampaign(f"no campaign {campaign!r} ({_known(conn)})")
        if segment is not None and not parts.empty:
            parts = parts[parts["segment"] == segment]
        people, msgs = outcomes(conn, parts, window, as_of=as_of, visit_types=visit_types)
    return summarise(people, msgs, window, confidence=confidence, seed=seed)


def _known(conn: Connection) -> str:
    frame = participants(conn)
    names = sorted(set(frame["campaign"])) if not frame.empty else []
    return f"known: {', '.join(names)}" if names else "none has participants yet"


# -- misclassification -----------------------------------------------------------------


def _rate(k: int, n: int) -> str:
    return f"{k / n:.2%} of {n:,}"


def misclassified_segments(
    engine: Engine,
    as_of: datetime,
    window: timedelta = WINDOW,
    *,
    lookback: timedelta = timedelta(days=30),
    metric: str = "converted",
    min_n: int = 30,
    confidence: float = CONFIDENCE,
    visit_types: Sequence[str] = VISIT_TYPES,
) -> list[Alert]:
    """Segments whose emailed members respond no better than they should.

    For each segment campaigns aim at (a workflow's trigger segment, a send's
    segment, an assignment's ``properties.segment``), among people assigned in
    the ``lookback`` before ``as_of``: the ``metric`` rate (converted or
    clicked) of its members who were sent an email (imported assignments:
    those in an arm other than the holdout), against (1) its
    campaigns' holdouts (conversion only: the holdout gets no email to click)
    and (2) the people other campaigns emailed. A comparison with at least
    ``min_n`` people on each side whose interval for the difference does not
    lie wholly above zero flags the segment: ``critical`` when it lies wholly
    below (the segment does worse), else ``warning``.
    """
    if metric not in ("converted", "clicked"):
        raise UsageError(f"metric {metric!r}: use converted or clicked")
    as_of = _utc(as_of)
    with engine.connect() as conn:
        parts = participants(conn, since=as_of - lookback, until=as_of)
        people, _ = outcomes(conn, parts, window, as_of=as_of, visit_types=visit_types)
    if people.empty:
        return []
    label = "conversion" if metric == "converted" else "click"
    alerts = []
    # Imported assignments carry no messages: their arms were the emailed ones.
    emailed = people[~people["holdout"] & ((people["sent"] > 0) | (people["kind"] == "imported"))]
    for segment in sorted(set(people["segment"].dropna())):
        aimed = people["segment"] == segment
        members = emailed[emailed["segment"] == segment]
        if len(members) < min_n:
            continue
        others = emailed[
            ~emailed["profile_id"].isin(members["profile_id"]) & ~aimed.loc[emailed.index]
        ]
        held = people[aimed & people["holdout"]]
        k1, n1 = int(members[metric].sum()), len(members)
        checks: list[tuple[str, int, int, Interval]] = []
        if metric == "converted" and len(held) >= min_n:
            k0, n0 = int(held[metric].sum()), len(held)
            checks.append(("held out", k0, n0, diff_proportions(k1, n1, k0, n0, confidence)))
        if len(others) >= min_n:
            k0, n0 = int(others[metric].sum()), len(others)
            checks.append(
                ("other recipients", k0, n0, diff_proportions(k1, n1, k0, n0, confidence))
            )
        failed = [c for c in checks if c[3].low <= 0]
        if not failed:
            continue
        worse = any(c[3].high < 0 for c in failed)
        parts_text = "; ".join(
            f"vs {what} {_rate(k0, n0)}: {iv.estimate * 100:+.2f} pt "
            f"[{iv.low * 100:+.2f}, {iv.high * 100:+.2f}]"
            for what, k0, n0, iv in failed
        )
        verdict = "worse" if worse else "no better"
        alerts.append(
            Alert(
                check="misclassified_segment",
                subject=segment,
                severity="critical" if worse else "warning",
                message=(
                    f"segment {segment}: {label} {_rate(k1, n1)} emailed members, {parts_text} "
                    f"({confidence:.0%} interval): {verdict}"
                ),
                day=as_of.date(),
                details={
                    "metric": metric,
                    "members": {"n": n1, "k": k1},
                    "comparisons": [
                        {"against": what, "n": n0, "k": k0, **iv.as_dict()}
                        for what, k0, n0, iv in checks
                    ],
                    "window_days": window / timedelta(days=1),
                    "lookback_days": lookback / timedelta(days=1),
                },
            )
        )
    return alerts


def lift_rows(results: Sequence[CampaignResult]) -> list[dict[str, Any]]:
    """One row per (campaign, arm, metric) with the arm's and the holdout's value
    and the difference's interval: the shape a lift chart plots."""
    values = {
        "visit_rate": lambda a: a.rates["visit_rate"],
        "conversion_rate": lambda a: a.rates["conversion_rate"],
        "revenue_per_person": lambda a: a.revenue_per_person,
    }
    rows = []
    for result in results:
        hold = next((a for a in result.arms if a.holdout), None)
        for arm in result.arms:
            if arm.lift is None or hold is None:
                continue
            for metric, parts in arm.lift.items():
                iv = parts["difference"]
                rows.append(
                    {
                        "campaign": result.campaign,
                        "segment": result.segment,
                        "arm": arm.arm,
                        "metric": metric,
                        "arm_value": values[metric](arm),
                        "holdout_value": values[metric](hold),
                        "estimate": iv.estimate,
                        "low": iv.low,
                        "high": iv.high,
                        "method": iv.method,
                        "relative": parts["relative"],
                    }
                )
    return rows


def campaign_names(engine: Engine) -> list[str]:
    """Every campaign with participants, by name."""
    with engine.connect() as conn:
        frame = participants(conn)
    return sorted(set(frame["campaign"])) if not frame.empty else []
