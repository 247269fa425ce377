"""The automation engine: runs in the database, started by triggers, moved by ticks.

    triggers (segment changes, events, schedules) --> enrol --> workflow_states
    tick: every run due (wake_at <= now), in bulk --> steps.advance
          --> the run's new state + its history + its actions (pending), one transaction
    perform (core/automation/perform.py): pending actions --> plugins --> done / skipped / failed

A run's state change and the actions it reached commit together, so a crash
loses both or neither: the next tick redoes exactly what was lost. Actions
are recorded with the idempotency key (workflow, run, step) before they are
performed and their result after, so a crash between leaves them pending and
they are performed once more under the same key (a delivery of a key already
sent is not sent again).

Two writers meeting on one run (a tick and the real-time hook) do not both
move it: each update is compare-and-set on the run's ``updated_at``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core.automation.language import Registry, Workflow, default_registry
from core.automation.rules import RuleEvaluator
from core.automation.steps import Run, advance
from core.automation.store import Definitions, save_workflows
from core.db.models import utcnow
from core.db.tables import (
    MEMBERSHIPS,
    MESSAGES,
    PROFILES,
    SEGMENTS,
    WORKFLOW_ACTIONS,
    WORKFLOW_HISTORY,
    WORKFLOW_STATES,
    WORKFLOW_TRIGGERS,
)
from core.ingestion.crashpoints import crash_point
from core.privacy.consent import UNSUBSCRIBE_EVENT, UNSUBSCRIBED, WITHDRAWN, email_refusals
from core.privacy.policy import CONSENT_EVENT
from core.segments.language import Rule
from core.types import Change, Entry

BATCH = 500
# Events older than this when they arrive start no run: an import of last
# year's carts must not send cart reminders today.
STALE_EVENTS = timedelta(days=1)
# Events that may carry a consent decision (stored identify events no longer
# show their traits.consent, so every identify counts).
CONSENT_CARRIERS = frozenset({"identify", UNSUBSCRIBE_EVENT, CONSENT_EVENT})
# Marketing messages counted against caps: those handed over or about to be.
COUNTED = ("rendered", "sending", "sent", "unknown", "deferred")


class WorkflowCounts(BaseModel):
    entered: int = 0
    advanced: int = 0
    actions: int = 0
    completed: int = 0
    exited: int = 0
    held_out: int = 0
    skipped: dict[str, int] = {}
    deferred: dict[str, int] = {}
    not_entered: dict[str, int] = {}


class TickReport(BaseModel):
    """What a tick (or a trigger) did, per workflow."""

    as_of: datetime
    workflows: dict[str, WorkflowCounts] = {}

    def of(self, name: str) -> WorkflowCounts:
        return self.workflows.setdefault(name, WorkflowCounts())

    def total(self, field: str) -> int:
        return sum(getattr(c, field) for c in self.workflows.values())


# -- what the step machine asks, answered from the database ---------------------------


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class DbEnv:
    def __init__(self, conn: Connection, evaluator: RuleEvaluator, as_of: datetime) -> None:
        self.conn, self.evaluator, self.as_of = conn, evaluator, as_of
        self._members: dict[str, set[int]] = {}
        self._zones: dict[int, ZoneInfo] = {}
        self._sent: dict[int, list[datetime]] = defaultdict(list)
        # From when each person's marketing messages are loaded: a later batch
        # of the same transaction may count over a wider window.
        self._sent_since: dict[int, datetime] = {}
        self._since: datetime | None = None
        self._withdrawn: dict[int, str] = {}
        self._consent_read: set[int] = set()

    def prefetch(self, pids: list[int], since: datetime | None) -> None:
        """Timezones, withdrawn consents and recent marketing messages of a
        batch's people, a few queries for all of them."""
        self._read_consents(pids)
        todo = [p for p in pids if p not in self._zones]
        for chunk in _chunks(todo):
            for pid, attrs in self.conn.execute(
                sa.select(PROFILES.c.id, PROFILES.c.attributes).where(PROFILES.c.id.in_(chunk))
            ):
                if isinstance(attrs, str | bytes):
                    attrs = orjson.loads(attrs)
                tz = (attrs or {}).get("timezone")
                self._zones[pid] = _zone(tz if isinstance(tz, str) else "UTC")
        if since is None:
            return
        # Read afresh when a wider window is asked for: a batch prefetches
        # before it advances, when the sends recorded before are written.
        todo = [p for p in pids if p not in self._sent_since or self._sent_since[p] > since]
        for pid in todo:
            self._sent_since[pid] = since
            self._sent.pop(pid, None)
        for chunk in _chunks(todo):
            for pid, at in self.conn.execute(
                sa.select(MESSAGES.c.profile_id, MESSAGES.c.created_at).where(
                    MESSAGES.c.profile_id.in_(chunk),
                    MESSAGES.c.created_at >= since,
                    MESSAGES.c.status.in_(COUNTED),
                    # Workflow sends are counted below, from when they were decided.
                    sa.not_(MESSAGES.c.idempotency_key.startswith("wf:")),
                )
            ):
                self._sent[pid].append(at)
            for pid, at in self.conn.execute(
                sa.select(WORKFLOW_ACTIONS.c.profile_id, WORKFLOW_ACTIONS.c.created_at).where(
                    WORKFLOW_ACTIONS.c.profile_id.in_(chunk),
                    WORKFLOW_ACTIONS.c.created_at >= since,
                    WORKFLOW_ACTIONS.c.marketing.is_(True),
                    WORKFLOW_ACTIONS.c.status.in_(("pending", "done")),
                )
            ):
                self._sent[pid].append(at)

    def holds(self, rule: Rule, pid: int, at: datetime) -> tuple[bool, datetime | None]:
        return self.evaluator.one(rule, pid, min(at, self.as_of))

    def in_segment(self, pid: int, segment: str) -> bool:
        if segment not in self._members:
            self._members[segment] = set(
                self.conn.execute(
                    sa.select(MEMBERSHIPS.c.profile_id)
                    .join(SEGMENTS, SEGMENTS.c.id == MEMBERSHIPS.c.segment_id)
                    .where(SEGMENTS.c.name == segment)
                ).scalars()
            )
        return pid in self._members[segment]

    def timezone(self, pid: int) -> ZoneInfo:
        if pid not in self._zones:
            self.prefetch([pid], None)
        return self._zones.get(pid, ZoneInfo("UTC"))

    def sent_times(self, pid: int, since: datetime) -> list[datetime]:
        if pid not in self._sent_since:
            self.prefetch([pid], since)
        return [t for t in self._sent[pid] if t >= since]

    def record_send(self, pid: int, at: datetime) -> None:
        self._sent[pid].append(at)

    def consent_withdrawn(self, pid: int) -> str | None:
        """Why the person's email consent is withdrawn (a withdrawal, or an
        unsubscribe after the grant), else None. Never having consented is
        not a withdrawal: such runs go on, and the gate refuses their sends."""
        self._read_consents([pid])
        return self._withdrawn.get(pid)

    def _read_consents(self, pids: list[int]) -> None:
        todo = sorted({p for p in pids if p not in self._consent_read})
        if not todo:
            return
        self._consent_read.update(todo)
        for pid, why in email_refusals(self.conn, todo).items():
            if why in (WITHDRAWN, UNSUBSCRIBED):
                self._withdrawn[pid] = why


def _chunks(items: list[Any], size: int = BATCH) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- reading and writing runs -------------------------------------------------------------

_RUN_COLUMNS = (
    "id", "workflow", "version", "profile_id", "entry_key", "status", "step", "waiting",
    "wake_at", "deadline", "arm", "reason", "entered_at", "updated_at",
)  # fmt: skip


def _runs(conn: Connection, where: Any, limit: int | None = None) -> list[Run]:
    query = sa.select(*(WORKFLOW_STATES.c[c] for c in _RUN_COLUMNS)).where(where)
    query = query.order_by(WORKFLOW_STATES.c.id)
    if limit:
        query = query.limit(limit)
    return [Run(**dict(zip(_RUN_COLUMNS, row, strict=True))) for row in conn.execute(query)]


def _write(conn: Connection, runs: list[Run], report: TickReport, now: datetime) -> list[Run]:
    """Store each run's new state, history and actions; the runs another writer
    moved first are left to it (their changes dropped). Returns those written."""
    moved = [run for run in runs if run.history or run.actions]
    written = _store_states(conn, moved, now)
    history = [
        {"run_id": r.id, "at": at, "step": step, "what": what, "detail": detail}
        for r in written
        for at, step, what, detail in r.history
    ]
    actions = [
        {
            "idempotency_key": key,
            "run_id": r.id,
            "profile_id": r.profile_id,
            "workflow": r.workflow,
            "step": node.path,
            "action": node.action.name,
            "params": _raw_params(node),
            "marketing": node.marketing,
            "status": "pending",
            "attempts": 0,
            "created_at": at,
            "updated_at": now,
        }
        for r in written
        for node, key, at in r.actions
        if node.action is not None
    ]
    if history:
        conn.execute(WORKFLOW_HISTORY.insert(), history)
    if actions:
        conn.execute(WORKFLOW_ACTIONS.insert(), actions)
    for r in written:
        _count(report.of(r.workflow), r)
        r.history.clear()
        r.actions.clear()
    return written


_STATE_COLUMNS = ("status", "step", "waiting", "wake_at", "deadline", "arm", "reason")


def _store_states(conn: Connection, runs: list[Run], now: datetime) -> list[Run]:
    """Each run's new state, unless another writer moved it since it was read
    (its ``updated_at`` no longer the one read); the runs written, stamped ``now``.

    One executemany per shape of row (active runs; ended ones also clear
    their key): the batch's runs in a round trip or two, not one each. When
    the rows written fall short, the ones this transaction stamped ``now`` are
    the ones written.
    """
    written: list[Run] = []
    for ended in (False, True):
        group = [run for run in runs if (run.status != "active") == ended]
        if not group:
            continue
        values = {c: sa.bindparam(f"v_{c}") for c in _STATE_COLUMNS}
        values["updated_at"] = sa.bindparam("v_updated_at")
        if ended:
            values |= {"ended_at": sa.bindparam("v_ended_at"), "active_key": None}
        stmt = (
            WORKFLOW_STATES.update()
            .where(
                WORKFLOW_STATES.c.id == sa.bindparam("b_id"),
                WORKFLOW_STATES.c.updated_at == sa.bindparam("b_updated_at"),
            )
            .values(**values)
        )
        rows = []
        for run in group:
            row = {f"v_{c}": getattr(run, c) for c in _STATE_COLUMNS}
            row |= {"v_updated_at": now, "b_id": run.id, "b_updated_at": run.updated_at}
            if ended:
                row["v_ended_at"] = run.ended_at
            rows.append(row)
        done = conn.execute(stmt, rows)
        if done.rowcount == len(group):
            kept = group
        else:
            stamped = set(
                conn.execute(
                    sa.select(WORKFLOW_STATES.c.id).where(
                        WORKFLOW_STATES.c.id.in_([run.id for run in group]),
                        WORKFLOW_STATES.c.updated_at == now,
                    )
                ).scalars()
            )
            kept = [run for run in group if run.id in stamped]
        for run in kept:
            run.updated_at = now
        written += kept
    order = {run.id: i for i, run in enumerate(runs)}
    return sorted(written, key=lambda run: order[run.id])


def _raw_params(node: Any) -> dict[str, Any]:
    params = node.params
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    return dict(params) if isinstance(params, dict) else {"value": params}


def _count(counts: WorkflowCounts, run: Run) -> None:
    counts.advanced += 1
    counts.actions += len(run.actions)
    for _at, _step, what, detail in run.history:
        if what in ("completed", "exited", "held_out"):
            setattr(counts, what, getattr(counts, what) + 1)
        elif what in ("skipped", "deferred"):
            bucket = getattr(counts, what)
            reason = (detail or what).split(": until")[0]
            bucket[reason] = bucket.get(reason, 0) + 1


def _advance_runs(
    conn: Connection,
    runs: list[Run],
    defs: Definitions,
    env: DbEnv,
    report: TickReport,
    *,
    woken_by_event: bool = False,
) -> list[Run]:
    caps = [defs.get(r.workflow, r.version).cap for r in runs]
    widest = max((c.per for c in caps if c is not None), default=None)
    # A run woken before its wake_at (an event met its rule) acts as of now.
    earliest = min((min(r.wake_at or env.as_of, env.as_of) for r in runs), default=env.as_of)
    pids = [r.profile_id for r in runs]
    env.prefetch(pids, earliest - widest if widest else None)
    env.evaluator.want(pids, env.as_of)
    for run in runs:
        advance(run, defs.get(run.workflow, run.version), env, woken_by_event=woken_by_event)
    crash_point("tick.advanced")
    return _write(conn, runs, report, utcnow())


# -- entering ------------------------------------------------------------------------------


@dataclass
class _Prior:
    active: bool
    entered_at: datetime


def _enrol(
    conn: Connection,
    wf: Workflow,
    version: int,
    entries: Sequence[Entry],
    evaluator: RuleEvaluator,
    as_of: datetime,
    counts: WorkflowCounts,
) -> list[Run]:
    """Start runs for the entries that pass re-entry and the entry rule."""
    first: dict[tuple[int, str], Entry] = {}
    for e in entries:
        k = (e.profile_id, str(e.key))
        if k not in first or e.at < first[k].at:
            first[k] = e
    if not first:
        return []
    pids = sorted({pid for pid, _ in first})
    prior: dict[tuple[int, str], list[_Prior]] = defaultdict(list)
    live: set[int] = set()
    for chunk in _chunks(pids):
        for pid, key, status, entered in conn.execute(
            sa.select(
                WORKFLOW_STATES.c.profile_id,
                WORKFLOW_STATES.c.entry_key,
                WORKFLOW_STATES.c.status,
                WORKFLOW_STATES.c.entered_at,
            ).where(WORKFLOW_STATES.c.workflow == wf.name, WORKFLOW_STATES.c.profile_id.in_(chunk))
        ):
            prior[(pid, key)].append(_Prior(status == "active", entered))
        live.update(
            conn.execute(
                sa.select(PROFILES.c.id).where(
                    PROFILES.c.id.in_(chunk), PROFILES.c.merged_into.is_(None)
                )
            ).scalars()
        )

    def refuse(reason: str) -> None:
        counts.not_entered[reason] = counts.not_entered.get(reason, 0) + 1

    chosen = []
    for (pid, key), e in sorted(first.items()):
        before = prior.get((pid, key), [])
        if pid not in live:
            refuse("profile merged")
        elif any(p.active for p in before):
            refuse("already in the workflow")
        elif before and wf.reentry == "once":
            refuse("re-entry: once")
        elif (
            before
            and wf.reentry == "every"
            and wf.reentry_every is not None
            and any(e.at - p.entered_at < wf.reentry_every for p in before)
        ):
            refuse("re-entry: too soon")
        else:
            chosen.append(e)
    if wf.entry is not None and chosen:
        ok = evaluator.members(wf.entry, [e.profile_id for e in chosen], as_of)
        for e in chosen:
            if e.profile_id not in ok:
                refuse("entry rule")
        chosen = [e for e in chosen if e.profile_id in ok]
    if not chosen:
        return []
    now = utcnow()
    rows = [
        {
            "workflow": wf.name,
            "version": version,
            "profile_id": e.profile_id,
            "entry_key": str(e.key),
            "active_key": f"{wf.name}:{e.profile_id}:{e.key}",
            "status": "active",
            "step": wf.first,
            "wake_at": e.at,
            "entered_at": e.at,
            "updated_at": now,
        }
        for e in chosen
    ]
    for chunk in _chunks(rows):
        conn.execute(_insert_new(conn), chunk)
    keys = [r["active_key"] for r in rows]
    runs = []
    for chunk in _chunks(keys):
        runs += _runs(
            conn, WORKFLOW_STATES.c.active_key.in_(chunk) & (WORKFLOW_STATES.c.updated_at == now)
        )
    conn.execute(
        WORKFLOW_HISTORY.insert(),
        [
            {
                "run_id": r.id,
                "at": r.entered_at,
                "step": None,
                "what": "entered",
                "detail": r.entry_key or None,
            }
            for r in runs
        ],
    )
    counts.entered += len(runs)
    return runs


def _insert_new(conn: Connection) -> Any:
    """An insert that leaves alone a run already active under the same key."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(WORKFLOW_STATES).on_conflict_do_nothing(index_elements=["active_key"])


def enter(
    engine: Engine,
    entries: dict[str, Sequence[Entry]],
    *,
    as_of: datetime | None = None,
    registry: Registry | None = None,
    report: TickReport | None = None,
    looked: Iterable[str] = (),
) -> TickReport:
    """Start runs for ``entries`` (workflow name -> entries) and take them as far
    as they go now. ``looked``: workflows whose tick trigger produced these
    entries; its look is recorded in the same transaction."""
    as_of = as_of or datetime.now(UTC)
    reg = registry or default_registry()
    report = report or TickReport(as_of=as_of)
    with engine.begin() as conn:
        defs = Definitions(conn, reg)
        _enter(conn, defs, DbEnv(conn, RuleEvaluator(conn, reg.kinds), as_of), entries, report)
        _mark_looked(conn, looked, as_of)
    return report


def _enter(
    conn: Connection,
    defs: Definitions,
    env: DbEnv,
    entries: dict[str, Sequence[Entry]],
    report: TickReport,
) -> None:
    for name, items in entries.items():
        if name not in defs.latest or not items:
            continue  # (a tick trigger with no one to start is still looked at)
        version = defs.latest[name]
        wf = defs.get(name, version)
        runs = _enrol(conn, wf, version, items, env.evaluator, env.as_of, report.of(name))
        for chunk in _chunks(runs):
            _advance_runs(conn, chunk, defs, env, report)


# -- triggers ------------------------------------------------------------------------------


def on_segment_changes(
    engine: Engine, changes: Sequence[Change], *, registry: Registry | None = None
) -> TickReport | None:
    """Segment changes just committed: start the runs they trigger and end the
    runs whose people left their workflow's segment."""
    if not changes:
        return None
    reg = registry or default_registry()
    as_of = max(c.at for c in changes)
    with engine.connect() as conn:
        current = Definitions(conn, reg).current()
    if not current:
        return None
    entries = {
        name: list(wf.trigger.on_changes(wf.trigger_params, changes))
        for name, wf in current.items()
        if wf.trigger.on_changes is not None
    }
    report = enter(engine, entries, as_of=as_of, registry=reg)
    left = defaultdict(set)
    for c in changes:
        if c.change == "exited":
            left[c.segment].add(c.profile_id)
    leaving = [wf.name for wf in current.values() if wf.exit_on_leave and wf.segment in left]
    for name in leaving:
        pids = sorted(left[current[name].segment])
        _wake(engine, reg, as_of, report, name, pids)
    return report


def on_events(
    engine: Engine, events: Sequence[Any], *, registry: Registry | None = None
) -> TickReport | None:
    """Events just stored: start the runs they trigger, and give the runs of
    their people that wait on a rule or exit on one the chance to move now."""
    if not events:
        return None
    reg = registry or default_registry()
    as_of = max(datetime.now(UTC), max(e.ts for e in events))
    # One transaction, read once: the runs these events start and the runs of
    # their people they wake share the definitions and the people's data (a
    # per-batch cost the real-time path pays on every request's events).
    with engine.begin() as conn:
        defs = Definitions(conn, reg)
        current = defs.current()
        if not current:
            return None
        report = TickReport(as_of=as_of)
        entries: dict[str, list[Entry]] = {}
        for name, wf in current.items():
            if wf.trigger.on_events is None:
                continue
            entries[name] = []
            for e in wf.trigger.on_events(wf.trigger_params, events):
                if e.at < as_of - STALE_EVENTS:
                    counts = report.of(name).not_entered
                    counts["event older than a day"] = counts.get("event older than a day", 0) + 1
                else:
                    entries[name].append(e)
        env = DbEnv(conn, RuleEvaluator(conn, reg.kinds), as_of)
        _enter(conn, defs, env, entries, report)
        watching = [
            n for n, wf in current.items() if wf.exit_rule is not None or _waits_on_rules(wf)
        ]
        if watching:
            pids = sorted({e.profile_id for e in events})
            for name in watching:
                _wake_runs(conn, defs, env, report, name, pids, woken_by_event=True)
        # A consent decision (identify traits, an unsubscribe, the API) ends the
        # person's marketing runs now, not at their next step.
        deciding = sorted({e.profile_id for e in events if e.type in CONSENT_CARRIERS})
        if deciding:
            for name in [n for n, wf in current.items() if wf.marketing and n not in watching]:
                _wake_runs(conn, defs, env, report, name, deciding)
    return report


def enter_from_history(
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    as_of: datetime | None = None,
    registry: Registry | None = None,
    report: TickReport | None = None,
) -> TickReport:
    """Start the runs that events stored between ``start`` and ``end`` trigger,
    as if they had just arrived: for a workflow defined after its events were
    loaded (a back-load, the demo). Keys and re-entry apply as usual; counts
    are added to ``report`` when given."""
    from core.automation.simulate import stored_events

    reg = registry or default_registry()
    as_of = as_of or datetime.now(UTC)
    with engine.connect() as conn:
        current = Definitions(conn, reg).current()
        events = stored_events(conn, start, end)
    entries = {
        name: list(wf.trigger.on_events(wf.trigger_params, events))
        for name, wf in current.items()
        if wf.trigger.on_events is not None
    }
    return enter(engine, entries, as_of=as_of, registry=reg, report=report)


def _waits_on_rules(wf: Workflow) -> bool:
    return any(n.kind == "wait_until" for n in wf.nodes.values())


def _wake(engine, reg, as_of, report, name, pids, *, woken_by_event=False) -> None:
    with engine.begin() as conn:
        env = DbEnv(conn, RuleEvaluator(conn, reg.kinds), as_of)
        _wake_runs(conn, Definitions(conn, reg), env, report, name, pids, woken_by_event)


def _wake_runs(conn, defs, env, report, name, pids, woken_by_event=False) -> None:
    for chunk in _chunks(pids):
        runs = _runs(
            conn,
            (WORKFLOW_STATES.c.workflow == name)
            & (WORKFLOW_STATES.c.status == "active")
            & WORKFLOW_STATES.c.profile_id.in_(chunk),
        )
        if runs:
            _advance_runs(conn, runs, defs, env, report, woken_by_event=woken_by_event)


def _tick_entries(engine: Engine, reg: Registry, as_of: datetime) -> dict[str, list[Entry]]:
    """What schedules and date triggers start since their last look (recorded
    by ``enter`` with the runs they start)."""
    out: dict[str, list[Entry]] = {}
    with engine.begin() as conn:
        current = Definitions(conn, reg).current()
        looked = dict(conn.execute(sa.select(WORKFLOW_TRIGGERS)).all())
        for name, wf in current.items():
            if wf.trigger.on_tick is None:
                continue
            since = looked.get(name)
            if since is not None and since >= as_of:
                continue
            out[name] = list(wf.trigger.on_tick(wf.trigger_params, conn, since, as_of))
    return out


def _mark_looked(conn: Connection, names: Iterable[str], as_of: datetime) -> None:
    for name in names:
        updated = conn.execute(
            WORKFLOW_TRIGGERS.update()
            .where(WORKFLOW_TRIGGERS.c.workflow == name)
            .values(checked_at=as_of)
        )
        if updated.rowcount == 0:
            conn.execute(WORKFLOW_TRIGGERS.insert().values(workflow=name, checked_at=as_of))


# -- the tick ------------------------------------------------------------------------------


def run_tick(
    engine: Engine,
    settings: Any = None,
    *,
    as_of: datetime | None = None,
    definitions: dict[str, Workflow] | None = None,
    registry: Registry | None = None,
) -> TickReport:
    """Save ``definitions`` (new versions of changed ones), start what schedules
    and dates trigger, then move every due run, in batches. ``settings`` is
    accepted for symmetry with ``perform_pending``; the tick needs none."""
    as_of = as_of or datetime.now(UTC)
    reg = registry or default_registry()
    report = TickReport(as_of=as_of)
    if definitions:
        with engine.begin() as conn:
            save_workflows(conn, definitions)
    scheduled = _tick_entries(engine, reg, as_of)
    if scheduled:
        enter(engine, scheduled, as_of=as_of, registry=reg, report=report, looked=scheduled)
    last = 0
    while True:
        with engine.begin() as conn:
            runs = _runs(
                conn,
                (WORKFLOW_STATES.c.wake_at <= as_of)
                & (WORKFLOW_STATES.c.status == "active")
                & (WORKFLOW_STATES.c.id > last),
                limit=BATCH,
            )
            if not runs:
                break
            last = runs[-1].id
            defs = Definitions(conn, reg)
            env = DbEnv(conn, RuleEvaluator(conn, reg.kinds), as_of)
            _advance_runs(conn, runs, defs, env, report)
    return report


def waiting_counts(conn: Connection) -> dict[str, int]:
    """Active runs per workflow."""
    return dict(
        conn.execute(
            sa.select(WORKFLOW_STATES.c.workflow, sa.func.count())
            .where(WORKFLOW_STATES.c.status == "active")
            .group_by(WORKFLOW_STATES.c.workflow)
        ).all()
    )
