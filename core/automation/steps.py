"""Moving one run through its workflow's steps: the step machine.

``advance`` is the whole semantics of the steps, shared by the engine (which
reads the world from the database and writes what happened) and by the
simulation (which reads stored history at past times and writes nothing). It
asks an ``Env`` what it needs to know (does a rule hold, is the person in a
segment, their timezone, the marketing messages they got lately) and leaves
what happened on the run: its new position, the history and the actions to
record.

The run's clock is the time it should have reached a step (a wait ends at
entry + 1h however late the tick runs), so waits add up exactly and a
simulation gives the engine's answer; rules are read as of that time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from core.automation.language import Node, Workflow
from core.segments.language import Rule

# A run passes at most this many steps in one advance: a definition is a tree
# (no loops), so only a very long one gets near it; it then continues next tick.
MAX_STEPS = 200


class Env(Protocol):
    as_of: datetime

    def holds(self, rule: Rule, pid: int, at: datetime) -> tuple[bool, datetime | None]: ...

    def in_segment(self, pid: int, segment: str) -> bool: ...

    def timezone(self, pid: int) -> ZoneInfo: ...

    def sent_times(self, pid: int, since: datetime) -> list[datetime]: ...

    def record_send(self, pid: int, at: datetime) -> None: ...

    def consent_withdrawn(self, pid: int) -> str | None: ...


@dataclass
class Run:
    id: int
    workflow: str
    version: int
    profile_id: int
    entry_key: str
    status: str = "active"
    step: str | None = None
    waiting: str | None = None
    wake_at: datetime | None = None
    deadline: datetime | None = None
    arm: str | None = None
    reason: str | None = None
    entered_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    # What this advance did: (at, step, what, detail) and (node, idempotency key, at).
    history: list[tuple[datetime, str | None, str, str | None]] = field(default_factory=list)
    actions: list[tuple[Node, str, datetime]] = field(default_factory=list)

    def note(self, at: datetime, what: str, detail: str | None = None, step: str | None = None):
        self.history.append((at, step if step is not None else self.step, what, detail))


def action_key(workflow: str, run_id: int, step: str) -> str:
    """The idempotency key of the action a run reaches at ``step``."""
    return f"wf:{workflow}:{run_id}:{step}"


def bucket(workflow: str, path: str, pid: int) -> float:
    """A number in [0, 100), fixed per person, workflow and split: the arm."""
    digest = hashlib.sha256(f"{workflow}:{path}:{pid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def next_local(after: datetime, at: time, tz: ZoneInfo) -> datetime:
    """The first moment after ``after`` when the person's clock shows ``at``."""
    local = after.astimezone(tz)
    candidate = datetime.combine(local.date(), at, tzinfo=tz)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=tz)
    return candidate.astimezone(after.tzinfo)


def _end(run: Run, at: datetime, status: str, reason: str | None) -> None:
    run.note(at, status, reason)
    run.status, run.reason, run.ended_at = status, reason, at
    run.step = run.waiting = run.wake_at = run.deadline = None


def _move(run: Run, path: str | None) -> None:
    run.step, run.waiting, run.deadline = path, None, None


def exit_reason(run: Run, wf: Workflow, env: Env, at: datetime) -> str | None:
    """Why the run must stop now (its exit conditions), else None."""
    if wf.exit_on_leave and wf.segment and not env.in_segment(run.profile_id, wf.segment):
        return f"left segment {wf.segment}"
    if wf.exit_rule is not None and env.holds(wf.exit_rule, run.profile_id, at)[0]:
        return "exit_when holds"
    if wf.marketing:
        return env.consent_withdrawn(run.profile_id)
    return None


def advance(run: Run, wf: Workflow, env: Env, *, woken_by_event: bool = False) -> None:
    """Take the run as far as it can go now; see the module docstring.

    A run not due yet only has its exit conditions checked, and, when an event
    woke it (``woken_by_event``), a ``wait until`` rule it waits on.
    """
    if run.status != "active":
        return
    as_of = env.as_of
    due = run.wake_at is None or run.wake_at <= as_of
    clock = run.wake_at if due and run.wake_at is not None else as_of
    why = exit_reason(run, wf, env, min(clock, as_of) if due else as_of)
    if why:
        return _end(run, as_of if not due else clock, "exited", why)
    if not due:
        if not (woken_by_event and run.waiting == "until"):
            return
        clock = as_of
    for _ in range(MAX_STEPS):
        node = wf.node(run.step)
        if node is None:
            return _end(run, clock, "completed", None)
        clock = _step(run, wf, node, env, clock)
        if clock is None or run.status != "active":
            return
    run.wake_at = clock


def _step(run: Run, wf: Workflow, node: Node, env: Env, clock: datetime) -> datetime | None:
    """Do one step; the clock after it, or None when the run now waits."""
    pid = run.profile_id
    if node.kind in ("wait", "wait_local"):
        if run.waiting == "time":
            run.note(clock, "woke")
            _move(run, node.next)
            return clock
        if node.kind == "wait":
            assert node.duration is not None
            wake = clock + node.duration
        else:
            assert node.local_time is not None
            wake = next_local(clock, node.local_time, env.timezone(pid))
        run.waiting, run.wake_at = "time", wake
        run.note(clock, "waiting", f"until {wake.isoformat()}")
        return _wait_or_go(run, wake, env)
    if node.kind == "wait_until":
        assert node.rule is not None and node.timeout is not None
        if run.waiting != "until":
            run.waiting, run.deadline = "until", clock + node.timeout
            run.note(
                clock, "waiting", f"until the rule holds, at most to {run.deadline.isoformat()}"
            )
        assert run.deadline is not None
        at = min(clock, run.deadline)
        holds, changes = env.holds(node.rule, pid, at)
        if holds:
            run.note(at, "branch", "then: the rule holds")
            _move(run, node.then)
            return at
        if clock >= run.deadline:
            run.note(run.deadline, "branch", "on_timeout")
            deadline = run.deadline
            _move(run, node.otherwise)
            return deadline
        wake = run.deadline if changes is None else min(run.deadline, changes)
        run.wake_at = wake
        return None
    if node.kind == "if":
        assert node.rule is not None
        holds = env.holds(node.rule, pid, clock)[0]
        run.note(clock, "branch", "then" if holds else "else")
        _move(run, node.then if holds else node.otherwise)
        return clock
    if node.kind == "split":
        b = bucket(wf.name, node.path, pid)
        edge = 0.0
        for arm in node.arms:
            edge += arm.percent
            if b < edge:
                run.arm = arm.name
                run.note(clock, "arm", arm.name)
                _move(run, arm.first)
                return clock
        assert node.holdout is not None
        run.arm = node.holdout.name
        _end(run, clock, "held_out", f"holdout {node.holdout.name}")
        return None
    if node.kind == "exit":
        _end(run, clock, "exited", node.reason)
        return None
    return _action(run, wf, node, env, clock)


def _wait_or_go(run: Run, wake: datetime, env: Env) -> datetime | None:
    """A wait already over (a late tick, a simulation): go on at its end."""
    if wake <= env.as_of:
        return wake
    run.wake_at = wake
    return None


def _action(run: Run, wf: Workflow, node: Node, env: Env, clock: datetime) -> datetime | None:
    pid = run.profile_id
    if run.waiting == "retry":
        run.waiting = None
    if wf.filter is not None and not env.holds(wf.filter, pid, clock)[0]:
        _end(run, clock, "exited", f"filter no longer holds at {node.path}")
        return None
    if node.marketing:
        outcome, wake = _held_back(run, wf, node, env, clock)
        if outcome == "skipped":
            return clock
        if outcome == "deferred":
            assert wake is not None
            return _wait_or_go(run, wake, env)
    key = action_key(wf.name, run.id, node.path)
    run.actions.append((node, key, clock))
    run.note(clock, "action", f"{node.action.name if node.action else '?'} {key}")
    if node.marketing:
        env.record_send(pid, clock)
    _move(run, node.next)
    return clock


def _held_back(
    run: Run, wf: Workflow, node: Node, env: Env, clock: datetime
) -> tuple[str, datetime | None]:
    """Quiet hours and the frequency cap: ("go", None); ("skipped", None), the
    run going on past the action; or ("deferred", when to try it again)."""
    pid = run.profile_id
    quiet = wf.quiet_hours
    if quiet is not None:
        tz = env.timezone(pid)
        if quiet.contains(clock.astimezone(tz).time().replace(tzinfo=None)):
            reason = f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M}"
            if quiet.then == "skip":
                return _skip(run, node, clock, reason)
            return _defer(run, clock, next_local(clock, quiet.end, tz), reason)
    cap = wf.cap
    if cap is not None:
        # The window is (clock - per, clock]: a message sent exactly ``per`` ago is out.
        since = clock - cap.per
        sent = sorted(t for t in env.sent_times(pid, since) if since < t <= clock)
        if len(sent) >= cap.max:
            reason = f"frequency cap {cap.max} per {_span(cap.per)}"
            if cap.then == "skip":
                return _skip(run, node, clock, reason)
            return _defer(run, clock, sent[len(sent) - cap.max] + cap.per, reason)
    return "go", None


def _skip(run: Run, node: Node, clock: datetime, reason: str) -> tuple[str, None]:
    run.note(clock, "skipped", reason)
    _move(run, node.next)
    return "skipped", None


def _defer(run: Run, clock: datetime, wake: datetime, reason: str) -> tuple[str, datetime]:
    run.note(clock, "deferred", f"{reason}: until {wake.isoformat()}")
    run.waiting = "retry"
    return "deferred", wake


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
