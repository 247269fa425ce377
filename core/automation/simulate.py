"""Replaying stored history through a workflow, sending and writing nothing.

Who would have entered between ``start`` and ``end`` (stored segment changes
and events through the workflow's trigger), which branch each took, what they
would have received and when. Each person's run goes through the same step
machine as the engine's (core/automation/steps.py), woken at its wait times
and at each of the person's later events; rules, segment membership included,
are evaluated on the events stored up to each moment, so the replay sees what
the engine would have seen. Frequency caps count the messages stored before
and the ones this replay would send.

Schedules and date triggers are asked once for the whole span, with today's
segment members: membership history is not replayed for them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from core.automation.engine import COUNTED, _zone
from core.automation.language import Registry, Workflow, default_registry
from core.automation.rules import RuleEvaluator
from core.automation.steps import Run, advance
from core.db.tables import CHANGES, EVENTS, MESSAGES, PROFILES, SEGMENTS
from core.segments.language import Rule
from core.segments.store import segments_by_name, stored_segments
from core.types import Change, Entry, StoredEvent

MAX_PEOPLE = 100_000
# A run woken this many times in one replay is left where it is (reported active).
MAX_WAKES = 10_000


class SimulatedAction(BaseModel):
    at: datetime
    step: str
    action: str
    params: dict[str, Any]


class SimulatedRun(BaseModel):
    profile_id: int
    user_id: str | None
    key: str
    entered_at: datetime
    status: str  # active (still waiting at the end) | completed | exited | held_out
    reason: str | None = None
    arm: str | None = None
    path: list[str] = []  # what happened, in order: "12:00 waiting ...", ...
    actions: list[SimulatedAction] = []


class Simulation(BaseModel):
    workflow: str
    start: datetime
    end: datetime
    triggered: int = 0
    entered: int = 0
    not_entered: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    arms: dict[str, int] = {}
    actions: dict[str, int] = {}
    runs: list[SimulatedRun] = []


@dataclass
class _SimEnv:
    evaluator: RuleEvaluator
    segments: dict[str, Any]
    zones: dict[int, ZoneInfo]
    sent: dict[int, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    as_of: datetime = datetime.min

    def holds(self, rule: Rule, pid: int, at: datetime) -> tuple[bool, datetime | None]:
        return self.evaluator.one(rule, pid, min(at, self.as_of))

    def in_segment(self, pid: int, segment: str) -> bool:
        seg = self.segments.get(segment)
        return seg is not None and self.evaluator.one(seg.rule, pid, self.as_of)[0]

    def timezone(self, pid: int) -> ZoneInfo:
        return self.zones.get(pid, ZoneInfo("UTC"))

    def sent_times(self, pid: int, since: datetime) -> list[datetime]:
        return [t for t in self.sent[pid] if t >= since]

    def record_send(self, pid: int, at: datetime) -> None:
        self.sent[pid].append(at)

    def consent_withdrawn(self, pid: int) -> str | None:
        # A replay of events: the consents it would need are today's, not the past's.
        return None


def _stored_event(row: Any) -> StoredEvent:
    fields = {
        "type": row.type,
        "session_id": row.session_id,
        "product_id": row.product_id,
        "value": row.value,
        "currency": row.currency,
        "url": row.url,
        "campaign": row.campaign,
        "properties": row.properties or {},
        "message_id": row.message_id,
    }
    return StoredEvent(fields, row.profile_id, row.ts, row.ts, build=lambda f: SimpleNamespace(**f))


def stored_events(conn, start: datetime, end: datetime) -> list[StoredEvent]:
    """The events stored with start < ts <= end, in time order, as triggers see them."""
    rows = conn.execute(
        sa.select(EVENTS).where(EVENTS.c.ts > start, EVENTS.c.ts <= end).order_by(EVENTS.c.ts)
    ).all()
    return [_stored_event(r) for r in rows]


def _entries(conn, wf: Workflow, start: datetime, end: datetime) -> list[Entry]:
    trigger, params = wf.trigger, wf.trigger_params
    out: list[Entry] = []
    if trigger.on_changes is not None:
        rows = conn.execute(
            sa.select(
                SEGMENTS.c.name,
                CHANGES.c.profile_id,
                CHANGES.c.change,
                CHANGES.c.at,
                SEGMENTS.c.version,
            )
            .join(SEGMENTS, SEGMENTS.c.id == CHANGES.c.segment_id)
            .where(CHANGES.c.at > start, CHANGES.c.at <= end)
            .order_by(CHANGES.c.at)
        ).all()
        out += trigger.on_changes(params, [Change(*r) for r in rows])
    if trigger.on_events is not None:
        out += trigger.on_events(params, stored_events(conn, start, end))
    if trigger.on_tick is not None:
        out += trigger.on_tick(params, conn, start, end)
    return sorted(out, key=lambda e: (e.at, e.profile_id, e.key))


def simulate(
    engine: Engine,
    wf: Workflow,
    start: datetime,
    end: datetime,
    *,
    registry: Registry | None = None,
    keep_runs: int = 1000,
) -> Simulation:
    """Replay ``start``..``end`` through ``wf`` (see the module docstring);
    the first ``keep_runs`` runs are reported one by one."""
    reg = registry or default_registry()
    report = Simulation(workflow=wf.name, start=start, end=end)
    with engine.connect() as conn:
        entries = _entries(conn, wf, start, end)
        report.triggered = len(entries)
        pids = sorted({e.profile_id for e in entries})[:MAX_PEOPLE]
        people = _people(conn, pids)
        evaluator = RuleEvaluator(conn, reg.kinds)
        env = _SimEnv(
            evaluator,
            segments_by_name(stored_segments(conn, reg.kinds)),
            {pid: p[1] for pid, p in people.items()},
        )
        _stored_sends(conn, env, pids, start, wf)
        later = _event_times(conn, pids, start, end)
        seen: dict[tuple[int, str], list[datetime]] = defaultdict(list)
        active: set[tuple[int, str]] = set()
        ends: dict[tuple[int, str], datetime] = {}
        run_id = 0

        def refuse(reason: str) -> None:
            report.not_entered[reason] = report.not_entered.get(reason, 0) + 1

        for e in entries:
            k = (e.profile_id, e.key)
            if e.profile_id not in people:
                refuse("profile merged")
                continue
            if k in active and ends.get(k, end) > e.at:
                refuse("already in the workflow")
                continue
            before = seen[k]
            if before and wf.reentry == "once":
                refuse("re-entry: once")
                continue
            every = wf.reentry_every if wf.reentry == "every" else None
            if before and every is not None and any(e.at - t < every for t in before):
                refuse("re-entry: too soon")
                continue
            if wf.entry is not None and not evaluator.one(wf.entry, e.profile_id, e.at)[0]:
                refuse("entry rule")
                continue
            run_id -= 1
            run = Run(
                run_id,
                wf.name,
                0,
                e.profile_id,
                e.key,
                step=wf.first,
                wake_at=e.at,
                entered_at=e.at,
            )
            seen[k].append(e.at)
            active.add(k)
            _play(run, wf, env, later.get(e.profile_id, []), end)
            ends[k] = run.ended_at or end
            report.entered += 1
            report.outcomes[run.status] = report.outcomes.get(run.status, 0) + 1
            if run.arm:
                report.arms[run.arm] = report.arms.get(run.arm, 0) + 1
            for node, _key, _at in run.actions:
                name = node.action.name if node.action else "?"
                report.actions[name] = report.actions.get(name, 0) + 1
            if len(report.runs) < keep_runs:
                report.runs.append(_described(run, people[e.profile_id][0]))
    return report


def _play(run: Run, wf: Workflow, env: _SimEnv, events: list[datetime], end: datetime) -> None:
    """Advance the run at each moment it would wake, until it ends or ``end``."""
    env.as_of = run.wake_at or end
    advance(run, wf, env)
    for _ in range(MAX_WAKES):
        if run.status != "active":
            return
        t = env.as_of
        upcoming = [x for x in events if x > t]
        wake = run.wake_at
        nxt = min(
            [x for x in (wake, upcoming[0] if upcoming else None) if x is not None], default=None
        )
        if nxt is None or nxt > end:
            return
        env.as_of = nxt
        by_event = bool(upcoming) and nxt == upcoming[0] and (wake is None or nxt < wake)
        advance(run, wf, env, woken_by_event=by_event)


def _people(conn, pids: list[int]) -> dict[int, tuple[str | None, ZoneInfo]]:
    import orjson

    out = {}
    for i in range(0, len(pids), 500):
        for pid, user_id, attrs in conn.execute(
            sa.select(PROFILES.c.id, PROFILES.c.user_id, PROFILES.c.attributes).where(
                PROFILES.c.id.in_(pids[i : i + 500]), PROFILES.c.merged_into.is_(None)
            )
        ):
            if isinstance(attrs, str | bytes):
                attrs = orjson.loads(attrs)
            tz = (attrs or {}).get("timezone")
            out[pid] = (user_id, _zone(tz if isinstance(tz, str) else "UTC"))
    return out


def _stored_sends(conn, env: _SimEnv, pids: list[int], start: datetime, wf: Workflow) -> None:
    if wf.cap is None:
        return
    since = start - wf.cap.per
    for i in range(0, len(pids), 500):
        for pid, at in conn.execute(
            sa.select(MESSAGES.c.profile_id, MESSAGES.c.created_at).where(
                MESSAGES.c.profile_id.in_(pids[i : i + 500]),
                MESSAGES.c.created_at >= since,
                MESSAGES.c.created_at <= start,
                MESSAGES.c.status.in_(COUNTED),
            )
        ):
            env.sent[pid].append(at)


def _event_times(conn, pids: list[int], start: datetime, end: datetime) -> dict[int, list]:
    out: dict[int, list[datetime]] = defaultdict(list)
    for i in range(0, len(pids), 500):
        for pid, ts in conn.execute(
            sa.select(EVENTS.c.profile_id, EVENTS.c.ts)
            .where(
                EVENTS.c.profile_id.in_(pids[i : i + 500]), EVENTS.c.ts > start, EVENTS.c.ts <= end
            )
            .order_by(EVENTS.c.ts)
        ):
            out[pid].append(ts)
    return out


def _described(run: Run, user_id: str | None) -> SimulatedRun:
    assert run.entered_at is not None
    return SimulatedRun(
        profile_id=run.profile_id,
        user_id=user_id,
        key=run.entry_key,
        entered_at=run.entered_at,
        status=run.status,
        reason=run.reason,
        arm=run.arm,
        path=[
            f"{at.isoformat()} {what}" + (f": {d}" if d else "") for at, _, what, d in run.history
        ],
        actions=[
            SimulatedAction(
                at=at,
                step=node.path,
                action=node.action.name if node.action else "?",
                params=_params(node),
            )
            for node, _key, at in run.actions
        ],
    )


def _params(node: Any) -> dict[str, Any]:
    from core.automation.engine import _raw_params

    return _raw_params(node)
