"""Stored campaign outcomes: each participant's counts and revenue for an
attribution window, kept in ``campaign_outcomes`` (and their messages in
``campaign_outcome_messages``), so campaign results are aggregated in SQL
instead of recomputed from the events on every look (docs/campaigns.md).

``refresh_outcomes`` brings the stored rows up to date with the database:
it recomputes (with ``core.monitoring.campaigns.outcomes``, the same
function the from-events results use) only the participants who are new,
whose assignment changed (arm, holdout, segment, time), who have events
stored since the last refresh (their ids past its ``max_event_id``: late
events count), whose profile changed (a merge brings events) or whose
messages changed (a bounce) since it started; participants no longer
assigned are dropped. Outcomes depend only on the events, messages and the
assignment (results are not cut at a time), so nothing else goes stale.
It runs in one transaction: a refresh that dies leaves the last one whole.

``stored_results`` aggregates the stored rows into the same
``CampaignResult`` objects ``campaign_results`` gives (counts and rates in
SQL, the lift intervals from those counts and the participants' non-zero
revenues), with a note of how fresh they are. ``assignment_overview`` is
what the campaigns notebook's filters offer, from the stored rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.sql import chunks
from core.db.tables import (
    CAMPAIGN_OUTCOME_MESSAGES,
    CAMPAIGN_OUTCOME_RUNS,
    CAMPAIGN_OUTCOMES,
    EVENTS,
    MESSAGES,
    PROFILES,
)
from core.ingestion.crashpoints import crash_point
from core.monitoring.campaigns import (
    COUNTS,
    HANDED,
    WINDOW,
    CampaignResult,
    Group,
    UnknownCampaign,
    arm_result,
    outcomes,
    participants,
)
from core.monitoring.lift import CONFIDENCE

_ASSIGNMENT = ["kind", "workflow", "segment", "arm", "holdout", "assigned_at"]
_KEY = ["campaign", "profile_id"]
# Participants recomputed per call of ``outcomes``: bounds the memory a first
# refresh of a big store takes, and each call reads its people's events.
_BATCH = 50_000


def _seconds(window: timedelta) -> int:
    seconds = window.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"window {window} must be a positive whole number of seconds")
    return int(seconds)


@dataclass
class RefreshReport:
    """What a refresh did: participants now stored, recomputed and dropped."""

    window: timedelta
    participants: int
    recomputed: int
    dropped: int
    max_event_id: int
    started_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_days": self.window / timedelta(days=1),
            "participants": self.participants,
            "recomputed": self.recomputed,
            "dropped": self.dropped,
            "max_event_id": self.max_event_id,
            "started_at": self.started_at.isoformat(),
        }


@dataclass
class Freshness:
    """When the stored outcomes were refreshed and how many events came since."""

    refreshed_at: datetime
    events_since: int

    @property
    def note(self) -> str:
        when = f"{self.refreshed_at:%Y-%m-%d %H:%M} UTC"
        if not self.events_since:
            return f"outcomes as of the refresh at {when}; no events stored since"
        return (
            f"outcomes as of the refresh at {when}; {self.events_since:,} events stored since "
            "(`segflow campaigns refresh` or the monitor flow brings them in)"
        )


@dataclass
class StoredResults:
    results: list[CampaignResult]
    freshness: Freshness


@dataclass
class AssignmentOverview:
    """Everyone stored as assigned: what the campaigns notebook's filters offer."""

    campaigns: int = 0
    people: int = 0
    first: datetime | None = None
    last: datetime | None = None
    workflows: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)


# -- refresh ---------------------------------------------------------------------------


def _stored_assignments(conn: Connection, seconds: int) -> pd.DataFrame:
    c = CAMPAIGN_OUTCOMES.c
    rows = conn.execute(
        sa.select(c.campaign, c.profile_id, *[c[n] for n in _ASSIGNMENT]).where(
            c.window_seconds == seconds
        )
    ).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=_KEY + _ASSIGNMENT)
    frame["assigned_at"] = pd.to_datetime(frame["assigned_at"], utc=True)
    frame["holdout"] = frame["holdout"].astype(bool)
    return frame


def _touched(conn: Connection, last: Any) -> set[int]:
    """People whose outcomes may have changed since the ``last`` refresh."""
    new_events = sa.select(EVENTS.c.profile_id).where(EVENTS.c.id > last.max_event_id)
    profiles = sa.select(PROFILES.c.id).where(PROFILES.c.updated_at >= last.started_at)
    messages = sa.select(MESSAGES.c.profile_id).where(MESSAGES.c.updated_at >= last.started_at)
    return {int(p) for p in conn.execute(sa.union(new_events, profiles, messages)).scalars()}


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    return (a == b) | (a.isna() & b.isna())


def _delete(conn: Connection, seconds: int, keys: pd.DataFrame) -> None:
    for table in (CAMPAIGN_OUTCOMES, CAMPAIGN_OUTCOME_MESSAGES):
        for campaign, group in keys.groupby("campaign"):
            for chunk in chunks([int(p) for p in group["profile_id"]]):
                conn.execute(
                    table.delete().where(
                        table.c.window_seconds == seconds,
                        table.c.campaign == campaign,
                        table.c.profile_id.in_(chunk),
                    )
                )


def _store(conn: Connection, seconds: int, people: pd.DataFrame, msgs: pd.DataFrame) -> None:
    now = utcnow()
    cols = _KEY + _ASSIGNMENT + list(COUNTS) + ["revenue"]
    rows = []
    for r in people[cols].itertuples(index=False):
        row = dict(zip(cols, r, strict=True))
        row["profile_id"] = int(row["profile_id"])
        row["assigned_at"] = row["assigned_at"].to_pydatetime()
        row["holdout"] = bool(row["holdout"])
        for name in ("workflow", "segment"):
            row[name] = row[name] if isinstance(row[name], str) else None
        for name in COUNTS:
            row[name] = int(row[name])
        row["revenue"] = float(row["revenue"])
        rows.append({"window_seconds": seconds, "computed_at": now, **row})
    for start in range(0, len(rows), 10_000):
        conn.execute(CAMPAIGN_OUTCOMES.insert(), rows[start : start + 10_000])
    if msgs.empty:
        return
    arms = people[_KEY + ["arm"]]
    sent = msgs.merge(arms, on=_KEY)
    mcols = ["key", "campaign", "profile_id", "arm", "template", "status"]
    mrows = [
        {
            "window_seconds": seconds,
            **dict(zip(mcols, r[:6], strict=True)),
            "profile_id": int(r[2]),
            "opened": int(r[6]),
            "clicked": int(r[7]),
            "unsubscribed": int(r[8]),
        }
        for r in sent[mcols + ["opened", "clicked", "unsubscribed"]].itertuples(index=False)
    ]
    for start in range(0, len(mrows), 10_000):
        conn.execute(CAMPAIGN_OUTCOME_MESSAGES.insert(), mrows[start : start + 10_000])


def refresh_outcomes(engine: Engine, window: timedelta = WINDOW) -> RefreshReport:
    """Bring the stored outcomes for ``window`` up to date (see the module's doc)."""
    seconds = _seconds(window)
    runs = CAMPAIGN_OUTCOME_RUNS.c
    with engine.begin() as conn:
        started = utcnow()
        max_event_id = conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))
        ).scalar_one()
        last = conn.execute(
            sa.select(CAMPAIGN_OUTCOME_RUNS).where(runs.window_seconds == seconds)
        ).first()
        parts = participants(conn)
        if parts.empty:
            parts = pd.DataFrame(columns=_KEY + _ASSIGNMENT)
        stored = _stored_assignments(conn, seconds)
        both = parts.merge(stored, on=_KEY, how="outer", suffixes=("", "_stored"), indicator=True)
        gone = both[both["_merge"] == "right_only"][_KEY]
        current = both[both["_merge"] != "right_only"]
        stale = current["_merge"] == "left_only"
        for name in _ASSIGNMENT:
            stale |= ~_same(current[name], current[f"{name}_stored"])
        if last is None:
            stale[:] = True
        else:
            stale |= current["profile_id"].astype("int64").isin(_touched(conn, last))
        redo = current[stale][_KEY]
        if last is None:
            for table in (CAMPAIGN_OUTCOMES, CAMPAIGN_OUTCOME_MESSAGES):
                conn.execute(table.delete().where(table.c.window_seconds == seconds))
        else:
            _delete(conn, seconds, pd.concat([gone, redo], ignore_index=True))
        todo = parts.merge(redo, on=_KEY)
        for start in range(0, len(todo), _BATCH):
            people, msgs = outcomes(conn, todo.iloc[start : start + _BATCH], window)
            _store(conn, seconds, people, msgs)
            crash_point("campaigns.outcomes_batch")
        values = {
            "max_event_id": int(max_event_id),
            "started_at": started,
            "finished_at": utcnow(),
            "participants": len(parts),
            "recomputed": len(todo),
        }
        if last is None:
            conn.execute(CAMPAIGN_OUTCOME_RUNS.insert().values(window_seconds=seconds, **values))
        else:
            conn.execute(
                CAMPAIGN_OUTCOME_RUNS.update()
                .where(runs.window_seconds == seconds)
                .values(**values)
            )
    return RefreshReport(window, len(parts), len(todo), len(gone), int(max_event_id), started)


def ensure_outcomes(engine: Engine, window: timedelta = WINDOW) -> RefreshReport | None:
    """Refresh ``window``'s outcomes when none were ever stored (a first look)."""
    with engine.connect() as conn:
        done = conn.execute(
            sa.select(CAMPAIGN_OUTCOME_RUNS.c.window_seconds).where(
                CAMPAIGN_OUTCOME_RUNS.c.window_seconds == _seconds(window)
            )
        ).first()
    return None if done else refresh_outcomes(engine, window)


# -- results from the stored rows ------------------------------------------------------


def _filters(
    seconds: int,
    campaign: str | None,
    segment: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[sa.ColumnElement[bool]]:
    c = CAMPAIGN_OUTCOMES.c
    where = [c.window_seconds == seconds]
    if campaign is not None:
        where.append(c.campaign == campaign)
    if segment is not None:
        where.append(c.segment == segment)
    if since is not None:
        where.append(c.assigned_at >= _utc(since))
    if until is not None:
        where.append(c.assigned_at <= _utc(until))
    return where


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _freshness(conn: Connection, seconds: int) -> Freshness | None:
    run = conn.execute(
        sa.select(CAMPAIGN_OUTCOME_RUNS).where(CAMPAIGN_OUTCOME_RUNS.c.window_seconds == seconds)
    ).first()
    if run is None:
        return None
    since = conn.execute(
        sa.select(sa.func.count()).where(EVENTS.c.id > run.max_event_id)
    ).scalar_one()
    return Freshness(run.started_at, int(since))


def stored_results(
    engine: Engine,
    *,
    campaign: str | None = None,
    window: timedelta = WINDOW,
    segment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    reps: int = 2000,
) -> StoredResults | None:
    """``campaign_results`` (same arguments but ``as_of`` and ``visit_types``)
    from the stored outcomes of ``window``; None when none were ever stored."""
    seconds = _seconds(window)
    c, m = CAMPAIGN_OUTCOMES.c, CAMPAIGN_OUTCOME_MESSAGES.c
    where = _filters(seconds, campaign, segment, since, until)
    with engine.connect() as conn:
        fresh = _freshness(conn, seconds)
        if fresh is None:
            return None
        sums = [sa.func.sum(c[name]).label(name) for name in COUNTS]
        groups = conn.execute(
            sa.select(c.campaign, c.arm, c.holdout, sa.func.count().label("n"), *sums)
            .where(*where)
            .group_by(c.campaign, c.arm, c.holdout)
        ).all()
        if not groups:
            if campaign is not None and not _has(conn, seconds, campaign):
                raise UnknownCampaign(f"no campaign {campaign!r} ({_known(conn, seconds)})")
            return StoredResults([], fresh)
        nonzero: dict[tuple[str, str, bool], list[float]] = {}
        for name, arm, hold, value in conn.execute(
            sa.select(c.campaign, c.arm, c.holdout, c.revenue).where(*where, c.revenue != 0)
        ):
            nonzero.setdefault((name, arm, bool(hold)), []).append(value)
        handed = sa.func.sum(sa.case((m.status.in_(HANDED), 1), else_=0))
        delivered = sa.func.sum(sa.case((m.status == "sent", 1), else_=0))
        mail = sa.select(
            m.campaign,
            m.arm,
            m.template,
            sa.func.count(),
            handed,
            delivered,
            sa.func.sum(m.opened),
            sa.func.sum(m.clicked),
            sa.func.sum(m.unsubscribed),
        ).where(m.window_seconds == seconds)
        if len(where) > 1 or campaign is not None:
            mail = mail.join(
                CAMPAIGN_OUTCOMES,
                sa.and_(
                    c.window_seconds == m.window_seconds,
                    c.campaign == m.campaign,
                    c.profile_id == m.profile_id,
                ),
            ).where(*where)
        templates = conn.execute(mail.group_by(m.campaign, m.arm, m.template)).all()
        names = sorted({g.campaign for g in groups})
        firsts = {name: _first(conn, seconds, name, where) for name in names}
    results = _assemble(groups, nonzero, templates, firsts, window, confidence, seed, reps)
    return StoredResults(results, fresh)


def _first(
    conn: Connection, seconds: int, campaign: str, where: Sequence[sa.ColumnElement[bool]]
) -> tuple[str, str | None, str | None]:
    """The campaign's earliest participant's kind, workflow and segment."""
    c = CAMPAIGN_OUTCOMES.c
    row = conn.execute(
        sa.select(c.kind, c.workflow, c.segment)
        .where(*where, c.campaign == campaign)
        .order_by(c.assigned_at, c.profile_id)
        .limit(1)
    ).one()
    return row.kind, row.workflow, row.segment


def _group(rows: list[Any], nonzero: dict[tuple[str, str, bool], list[float]]) -> Group:
    values: list[float] = []
    for r in rows:
        values += nonzero.get((r.campaign, r.arm, bool(r.holdout)), [])
    return Group(
        sum(int(r.n) for r in rows),
        {name: sum(int(getattr(r, name)) for r in rows) for name in COUNTS},
        np.asarray(values, dtype=float),
    )


def _assemble(
    groups: Sequence[Any],
    nonzero: dict[tuple[str, str, bool], list[float]],
    templates: Sequence[Any],
    firsts: dict[str, tuple[str, str | None, str | None]],
    window: timedelta,
    confidence: float,
    seed: int,
    reps: int,
) -> list[CampaignResult]:
    by_campaign: dict[str, list[Any]] = {}
    for g in groups:
        by_campaign.setdefault(g.campaign, []).append(g)
    mail: dict[str, list[Any]] = {}
    for t in templates:
        mail.setdefault(t[0], []).append(t)
    results = []
    for name in sorted(by_campaign):
        rows = by_campaign[name]
        held = [r for r in rows if r.holdout]
        hold = _group(held, nonzero) if held else None
        arms = []
        for arm in sorted({r.arm for r in rows}):
            of_arm = [r for r in rows if r.arm == arm]
            used = sorted({t[2] for t in mail.get(name, []) if t[1] == arm})
            arms.append(
                arm_result(
                    arm,
                    any(r.holdout for r in of_arm),
                    _group(of_arm, nonzero),
                    hold,
                    used,
                    confidence=confidence,
                    seed=seed,
                    reps=reps,
                )
            )
        arms.sort(key=lambda a: (a.holdout, a.arm))
        kind, workflow, segment = firsts[name]
        results.append(
            CampaignResult(
                campaign=name,
                kind=kind,
                workflow=workflow,
                segment=segment,
                window=window,
                arms=arms,
                templates=[
                    {
                        "arm": arm,
                        "template": template,
                        "messages": int(n),
                        "sent": int(sent),
                        "delivered": int(delivered),
                        "opened": int(opened),
                        "clicked": int(clicked),
                        "unsubscribed": int(unsub),
                    }
                    for _, arm, template, n, sent, delivered, opened, clicked, unsub in sorted(
                        mail.get(name, []), key=lambda t: (t[1], t[2])
                    )
                ],
            )
        )
    return results


def _has(conn: Connection, seconds: int, campaign: str) -> bool:
    c = CAMPAIGN_OUTCOMES.c
    found = conn.execute(
        sa.select(c.profile_id).where(c.window_seconds == seconds, c.campaign == campaign).limit(1)
    ).first()
    return found is not None


def _known(conn: Connection, seconds: int) -> str:
    c = CAMPAIGN_OUTCOMES.c
    names = conn.execute(
        sa.select(c.campaign).where(c.window_seconds == seconds).distinct().order_by(c.campaign)
    ).scalars()
    listed = list(names)
    return f"known: {', '.join(listed)}" if listed else "none has participants yet"


def assignment_overview(engine: Engine, window: timedelta = WINDOW) -> AssignmentOverview:
    """Campaigns, people, first and last assignment, workflows and segments of
    the stored participants of ``window``."""
    c = CAMPAIGN_OUTCOMES.c
    query = (
        sa.select(
            c.campaign,
            c.workflow,
            c.segment,
            sa.func.count(),
            sa.func.min(c.assigned_at),
            sa.func.max(c.assigned_at),
        )
        .where(c.window_seconds == _seconds(window))
        .group_by(c.campaign, c.workflow, c.segment)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return AssignmentOverview()
    return AssignmentOverview(
        campaigns=len({r[0] for r in rows}),
        people=sum(int(r[3]) for r in rows),
        first=min(r[4] for r in rows),
        last=max(r[5] for r in rows),
        workflows=sorted({r[1] for r in rows if r[1] is not None}),
        segments=sorted({r[2] for r in rows if r[2] is not None}),
    )


def current_results(
    engine: Engine,
    *,
    campaign: str | None = None,
    window: timedelta = WINDOW,
    segment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[CampaignResult]:
    """``stored_results`` after a refresh: what ``campaign_results`` gives,
    computed only for what changed since the last refresh."""
    refresh_outcomes(engine, window)
    stored = stored_results(
        engine,
        campaign=campaign,
        window=window,
        segment=segment,
        since=since,
        until=until,
        confidence=confidence,
        seed=seed,
    )
    assert stored is not None  # the refresh recorded its run
    return stored.results


def overview_of(frame: pd.DataFrame) -> AssignmentOverview:
    """``assignment_overview`` of a ``participants`` frame (nothing stored yet)."""
    if frame.empty:
        return AssignmentOverview()
    return AssignmentOverview(
        campaigns=int(frame["campaign"].nunique()),
        people=len(frame),
        first=frame["assigned_at"].min().to_pydatetime(),
        last=frame["assigned_at"].max().to_pydatetime(),
        workflows=sorted(set(frame["workflow"].dropna())),
        segments=sorted(set(frame["segment"].dropna())),
    )
