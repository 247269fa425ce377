"""Sync runs: segflow's people, consent, segment membership and segment events
to one ESP or CRM target, sending only what changed.

    memberships, profiles, consents --> wanted state per person
    sync_states (what the remote confirmed) --diff--> upserts, adds, removes
    membership_changes since the target's cursor --> segment events
    each wave of batches --> the target's API --> sync_states, per confirmed record

Only new, changed and removed records are sent; a record the API refused or
that failed keeps its last confirmed state, so the next run sends it again
without holding up the rest. State is written after each wave of batches, so
a run killed at any point and run again sends what was not confirmed: an
upsert or membership call twice leaves the same remote state, and events
carry the same unique id every time they are sent.

A person is synced when they are a live profile with an email address; the
first run of a target sends no events for changes that happened before it
(its cursor starts at the newest change).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core import audit
from core.consents import NO_CONSENT, email_refusals
from core.db.models import utcnow
from core.db.sql import chunks, dialect_insert
from core.db.tables import (
    CHANGES,
    IDENTITIES,
    MEMBERSHIPS,
    PROFILES,
    SEGMENTS,
    SOURCE_STATES,
    SYNC_RUNS,
    SYNC_STATES,
)
from core.ingestion.crashpoints import crash_point
from core.privacy import crypto
from core.privacy.erase import send_deletions
from core.source_state import save_cursor
from core.sync.client import KeyRefused, SyncClient, SyncFailure
from core.types import (
    EspConnector,
    RecordResult,
    RemotePerson,
    SyncApi,
    SyncEvent,
    SyncPerson,
    SyncTarget,
    UsageError,
)

CHUNK = 500
# Beyond this many candidates that are also a quarter of all profiles, one
# pass over the profiles costs less than looking them up CHUNK at a time.
SCAN_ABOVE = 5000
ENTERED_EVENT = "Entered segment {segment}"
EXITED_EVENT = "Exited segment {segment}"

Progress = Callable[[int, int], None]


class SyncReport(BaseModel):
    """What a run did (or, dry, would do): people considered, records sent by
    kind, unchanged, and failures by reason (``retry``: temporary)."""

    connector: str
    dry_run: bool = False
    people: int = 0
    upserted: int = 0
    added: int = 0
    removed: int = 0
    events: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = {}
    failed: dict[str, int] = {}
    retry: dict[str, int] = {}
    requests: int = 0
    throttled: int = 0
    seconds: float = 0.0
    # Erasures (core.privacy) this run had the target confirm.
    erased: int = 0

    @property
    def sent(self) -> int:
        return self.upserted + self.added + self.removed + self.events


@dataclass
class State:
    email: str
    hash: str | None
    segments: frozenset[str]
    subscribed: bool | None
    remote_id: str | None
    status: str
    attempts: int


@dataclass
class Wanted:
    person: SyncPerson
    hash: str
    segments: frozenset[str]


@dataclass
class Plan:
    """The difference between what is wanted and what the remote confirmed."""

    states: dict[int, State] = field(default_factory=dict)
    wanted: dict[int, Wanted] = field(default_factory=dict)
    upserts: list[int] = field(default_factory=list)
    moved: set[int] = field(default_factory=set)  # a new email address: no segments remotely yet
    adds: dict[str, list[int]] = field(default_factory=dict)
    removes: dict[str, list[SyncPerson]] = field(default_factory=dict)
    events: list[tuple[int, SyncEvent]] = field(default_factory=list)
    forget: list[int] = field(default_factory=list)  # states of merged or email-less profiles
    cursor: int = 0  # membership_changes id the events reach
    delivered: set[int] = field(default_factory=set)  # changes past the cursor already sent
    people: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return (
            len(self.upserts)
            + sum(map(len, self.adds.values()))
            + sum(map(len, self.removes.values()))
            + len(self.events)
        )


def person_hash(person: SyncPerson) -> str:
    """What decides whether a person is sent again: the fields an upsert sends."""
    fields = [person.email, person.user_id, person.properties, person.subscribed]
    return hashlib.sha256(
        orjson.dumps(fields, default=str, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def cursor_name(target: SyncTarget) -> str:
    return f"sync:{target.name}:changes"


# -- what is wanted ----------------------------------------------------------------------


def _segment_ids(
    conn: Connection, target: SyncTarget, only: Iterable[str] | None
) -> dict[int, str]:
    names = list(target.segments)
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise UsageError(
                f"connector {target.name!r} does not sync {', '.join(unknown)} "
                f"(its segments: {', '.join(names) or 'none'})"
            )
        names = [n for n in names if n in set(only)]
    rows = conn.execute(sa.select(SEGMENTS.c.id, SEGMENTS.c.name).where(SEGMENTS.c.name.in_(names)))
    found = {sid: name for sid, name in rows}
    missing = sorted(set(names) - set(found.values()))
    if missing:
        raise UsageError(
            f"connector {target.name!r}: no segment named {', '.join(missing)} "
            "(segflow segments run --dir DIR defines them)"
        )
    return found


def _value(profile: Any, path: str) -> Any:
    if path in ("user_id", "email"):
        return getattr(profile, path)
    if path.startswith("attributes."):
        return (profile.attributes or {}).get(path.removeprefix("attributes."))
    raise UsageError(f"property source {path!r}: use user_id, email or attributes.NAME")


def _states(conn: Connection, target: SyncTarget) -> dict[int, State]:
    c = SYNC_STATES.c
    # Only what a plan reads: a timestamp parsed per person costs more than the rest.
    columns = (c.profile_id, c.email, c.hash, c.segments, c.subscribed, c.remote_id, c.status,
               c.attempts)  # fmt: skip
    rows = conn.execute(sa.select(*columns).where(c.connector == target.name))
    return {
        r.profile_id: State(
            r.email, r.hash, frozenset(r.segments or ()), r.subscribed, r.remote_id, r.status,
            r.attempts,
        )
        for r in rows
    }  # fmt: skip


def plan_sync(
    conn: Connection,
    target: SyncTarget,
    *,
    segments: Iterable[str] | None = None,
    only: Iterable[int] | None = None,
    remote: dict[str, RemotePerson] | None = None,
) -> Plan:
    """What a run of ``target`` would send (``segments``: only those of its
    segments; ``only``: only these profiles). Given ``remote`` (the target's
    state read back), the diff is against it instead of what was confirmed:
    everyone is upserted and the remote memberships segflow does not want,
    even of people it never synced, are removed."""
    seg_ids = _segment_ids(conn, target, segments)
    synced = frozenset(seg_ids.values())
    ids_filter = set(only) if only is not None else None
    states = _states(conn, target)
    member_of: dict[int, set[str]] = {}
    for chunk in chunks(sorted(seg_ids), CHUNK):
        rows = conn.execute(
            sa.select(MEMBERSHIPS.c.profile_id, MEMBERSHIPS.c.segment_id).where(
                MEMBERSHIPS.c.segment_id.in_(chunk)
            )
        )
        for pid, sid in rows:
            if ids_filter is None or pid in ids_filter:
                member_of.setdefault(pid, set()).add(seg_ids[sid])
    known = set(states) if ids_filter is None else set(states) & ids_filter
    if remote is not None:
        known |= _remote_members(conn, remote, synced, ids_filter)
    candidates = sorted(set(member_of) | known)
    plan = Plan(states=states)
    profiles = _profiles(conn, candidates)
    if remote is not None:
        states = _states_from(remote, profiles, states, synced)
        plan.states = states
    live = [pid for pid in candidates if pid in profiles and profiles[pid].merged_into is None]
    refusals = email_refusals(conn, [pid for pid in live if profiles[pid].email])
    for pid in candidates:
        profile = profiles.get(pid)
        state = states.get(pid)
        if profile is None or profile.merged_into is not None or not profile.email:
            if pid in member_of:
                plan.skipped["merged" if profile is not None and profile.merged_into else
                             "no email address"] += 1  # fmt: skip
            if state is not None:
                # The profile it was merged into is synced in its own right; taking
                # this one out remotely could take that person out too (same email).
                plan.forget.append(pid)
            continue
        plan.people += 1
        why = refusals.get(pid)
        person = SyncPerson(
            profile_id=pid,
            email=profile.email.strip().lower(),
            user_id=profile.user_id,
            properties={name: _value(profile, path) for name, path in target.properties.items()},
            subscribed=True if why is None else None if why == NO_CONSENT else False,
            remote_id=state.remote_id if state is not None else None,
        )
        wanted = Wanted(person, person_hash(person), frozenset(member_of.get(pid, ())))
        had = state.segments & synced if state is not None else frozenset()
        if state is not None and state.email != person.email:
            # A new address is a new person remotely: the old one leaves the segments.
            old = replace(person, email=state.email, remote_id=state.remote_id)
            for seg in sorted(had):
                plan.removes.setdefault(seg, []).append(old)
            had = frozenset()
            state = None
            plan.moved.add(pid)
        changed = state is None or state.hash != wanted.hash or state.status != "ok"
        if changed:
            plan.upserts.append(pid)
        for seg in sorted(wanted.segments - had):
            plan.adds.setdefault(seg, []).append(pid)
        for seg in sorted(had - wanted.segments):
            plan.removes.setdefault(seg, []).append(person)
        if not changed and wanted.segments == had:
            plan.unchanged += 1
        plan.wanted[pid] = wanted
    if target.events:
        _plan_events(conn, target, seg_ids, plan, ids_filter)
    return plan


def _profiles(conn: Connection, ids: list[int]) -> dict[int, Any]:
    """The candidates' profiles: looked up 500 at a time, or, when they are
    a good share of everyone, read in one pass."""
    columns = sa.select(
        PROFILES.c.id, PROFILES.c.email, PROFILES.c.user_id, PROFILES.c.attributes,
        PROFILES.c.merged_into,
    )  # fmt: skip
    if not ids:
        return {}
    span = conn.execute(sa.select(sa.func.max(PROFILES.c.id))).scalar() or 0
    if len(ids) > SCAN_ABOVE and len(ids) * 4 > span:
        wanted = set(ids)
        return {row.id: row for row in conn.execute(columns) if row.id in wanted}
    out: dict[int, Any] = {}
    for chunk in chunks(ids, CHUNK):
        out.update((row.id, row) for row in conn.execute(columns.where(PROFILES.c.id.in_(chunk))))
    return out


def _remote_members(conn, remote, synced, ids: set[int] | None) -> set[int]:
    """Profiles whose email is a remote member of a synced segment."""
    emails = sorted(e for e, r in remote.items() if r.segments & synced)
    found: set[int] = set()
    if (ring := crypto.keyring()) is not None:
        # Sealed addresses do not compare: found through their identities' blind index.
        stored = sorted({v for e in emails for v in crypto.email_lookups(e, ring)})
        for chunk in chunks(stored, CHUNK):
            rows = conn.execute(
                sa.select(IDENTITIES.c.profile_id)
                .join(PROFILES, PROFILES.c.id == IDENTITIES.c.profile_id)
                .where(
                    IDENTITIES.c.kind == "email",
                    IDENTITIES.c.value.in_(chunk),
                    PROFILES.c.merged_into.is_(None),
                )
            )
            found.update(pid for (pid,) in rows if ids is None or pid in ids)
        return found
    for chunk in chunks(emails, CHUNK):
        rows = conn.execute(
            sa.select(PROFILES.c.id).where(
                sa.func.lower(PROFILES.c.email).in_(chunk), PROFILES.c.merged_into.is_(None)
            )
        )
        found.update(pid for (pid,) in rows if ids is None or pid in ids)
    return found


def _states_from(remote, profiles, states, synced) -> dict[int, State]:
    """What the remote holds, as if it had been confirmed (fields unknown: sent again)."""
    out: dict[int, State] = {}
    for pid, profile in profiles.items():
        email = (profile.email or "").strip().lower()
        there = remote.get(email)
        old = states.get(pid)
        if there is None:
            if old is not None:
                out[pid] = replace(old, hash=None, segments=frozenset(), email=email)
            continue
        out[pid] = State(
            email, None, there.segments & synced, there.subscribed,
            there.remote_id or (old.remote_id if old else None), "retry", 0,
        )  # fmt: skip
    return out


def _plan_events(
    conn: Connection, target: SyncTarget, seg_ids: dict[int, str], plan: Plan, ids: set[int] | None
) -> None:
    # Read in the plan's own transaction (core.source_state.load_cursor opens one).
    saved = conn.execute(
        sa.select(SOURCE_STATES.c.cursor).where(SOURCE_STATES.c.name == cursor_name(target))
    ).scalar()
    stored = (saved or {}).get("cursor")
    newest = conn.execute(sa.select(sa.func.coalesce(sa.func.max(CHANGES.c.id), 0))).scalar_one()
    if stored is None:
        plan.cursor = newest  # the first run: no events for what happened before it
        return
    start = int(stored["id"])
    plan.cursor = newest
    plan.delivered = {int(c) for c in stored.get("done", ())}
    query = (
        sa.select(
            CHANGES.c.id, CHANGES.c.segment_id, CHANGES.c.profile_id, CHANGES.c.change,
            CHANGES.c.at,
        )
        .where(CHANGES.c.id > start, CHANGES.c.id <= newest,
               CHANGES.c.segment_id.in_(sorted(seg_ids)))
        .order_by(CHANGES.c.id)
    )  # fmt: skip
    for cid, sid, pid, change, at in conn.execute(query):
        if cid in plan.delivered or (ids is not None and pid not in ids):
            continue
        wanted = plan.wanted.get(pid)
        if wanted is None:
            continue  # no longer a person that can be synced (merged, no email)
        name = (ENTERED_EVENT if change == "entered" else EXITED_EVENT).format(segment=seg_ids[sid])
        event = SyncEvent(
            unique_id=f"segflow-{target.name}-{cid}",
            name=name,
            person=wanted.person,
            time=at if at.tzinfo else at.replace(tzinfo=UTC),
            properties={"segment": seg_ids[sid], "change": change},
        )
        plan.events.append((cid, event))


# -- running a plan ------------------------------------------------------------------------


def run_sync(
    engine: Engine,
    target: SyncTarget,
    connector: EspConnector,
    *,
    segments: Iterable[str] | None = None,
    only: Iterable[int] | None = None,
    dry_run: bool = False,
    reconcile: bool = False,
    progress: Progress | None = None,
    transport: Any = None,
) -> SyncReport:
    """Sync ``target`` through ``connector`` (its ``sync`` API): send the new,
    changed and removed people, memberships and segment events; ``dry_run``
    counts what would be sent and sends nothing. ``progress(done, total)``
    after each batch. ``reconcile``: read the remote state first and diff
    against it (after ``segflow sync verify`` found differences, or a lost
    database). ``transport``: an httpx transport (tests)."""
    api = _api(target, connector)
    segments = sorted(segments) if segments is not None else None
    started = datetime.now(UTC)
    remote = asyncio.run(read_remote(target, api, transport)) if reconcile else None
    with engine.connect() as conn:
        plan = plan_sync(conn, target, segments=segments, only=only, remote=remote)
    report = SyncReport(
        connector=target.name,
        dry_run=dry_run,
        people=plan.people,
        unchanged=plan.unchanged,
        skipped=dict(plan.skipped),
    )
    if dry_run:
        report.upserted = len(plan.upserts)
        report.added = sum(map(len, plan.adds.values()))
        report.removed = sum(map(len, plan.removes.values()))
        report.events = len(plan.events)
        return report
    # A run for a few people is a workflow's action, recorded with the
    # workflow's actions; a whole run is someone's (or a schedule's) decision.
    scope = {"kind": target.kind, "segments": segments, "reconcile": reconcile}
    run_id = _start_run(engine, target, started, None if only is not None else scope)
    try:
        _erasures(engine, target, connector, report, transport)
        asyncio.run(_execute(engine, target, api, plan, report, progress, transport))
    except BaseException as exc:
        _finish_run(engine, run_id, report, started, "failed", f"{type(exc).__name__}: {exc}")
        raise
    _finish_run(engine, run_id, report, started, "done")
    return report


def _erasures(engine: Engine, target: SyncTarget, connector: EspConnector, report, transport):
    """The erasures the target has not confirmed yet, sent again every run
    until it does (core.privacy); those still pending count as ``retry``."""
    if connector.sync is None or connector.sync.delete is None:
        return
    confirmed, left = send_deletions(engine, target, connector, transport=transport)
    report.erased = confirmed
    for reason, n in left.items():
        why = f"erasure: {reason}"
        report.retry[why] = report.retry.get(why, 0) + n


def _client(target: SyncTarget, api: SyncApi, transport: Any) -> SyncClient:
    return SyncClient(
        target.base_url,
        api.limits,
        headers=api.auth_headers(target),
        rate_state=api.rate_state,
        transport=transport,
        rate_group=api.rate_group,
    )


async def read_remote(target: SyncTarget, api: SyncApi, transport: Any = None):
    """The target's remote state (``SyncApi.read``), email -> RemotePerson."""
    async with _client(target, api, transport) as client, api.open(target, client) as session:
        found = await api.read(session)
    return {email.strip().lower(): person for email, person in found.items()}


def _api(target: SyncTarget, connector: EspConnector) -> SyncApi:
    if connector.sync is None:
        raise UsageError(f"connector {target.name!r}: {target.kind} cannot sync people")
    if target.membership not in connector.sync.memberships:
        raise UsageError(
            f"connector {target.name!r}: {target.kind} expresses membership as "
            f"{' or '.join(connector.sync.memberships)}, not {target.membership!r}"
        )
    return connector.sync


class _Run:
    """One run's bookkeeping: confirmed segments per person, counts, progress."""

    def __init__(self, engine, target, plan, report, progress) -> None:
        self.engine, self.target, self.plan, self.report = engine, target, plan, report
        self.progress = progress
        self.done = 0
        self.confirmed: dict[int, set[str]] = {
            pid: set(st.segments) for pid, st in plan.states.items()
        }
        self.has_state = {pid for pid, st in plan.states.items() if st.hash is not None}

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.plan.total)

    def count(self, result: RecordResult, field_name: str) -> bool:
        if result.status == "ok":
            setattr(self.report, field_name, getattr(self.report, field_name) + 1)
            return True
        into = self.report.failed if result.status == "failed" else self.report.retry
        reason = result.reason or result.status
        into[reason] = into.get(reason, 0) + 1
        return False


def _results(batch: Sequence[Any], outcome: Any) -> list[RecordResult]:
    """A call's results, or ``retry`` for every record of a call that raised."""
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, Exception) or isinstance(outcome, KeyRefused):
            raise outcome
        reason = str(outcome) if isinstance(outcome, SyncFailure) else (
            f"{type(outcome).__name__}: {outcome}")  # fmt: skip
        return [RecordResult("retry", reason)] * len(batch)
    results = list(outcome)
    if len(results) != len(batch):
        raise RuntimeError(f"connector answered {len(results)} results for {len(batch)} records")
    return results


async def _batches(items: Sequence[Any], size: int, call, waves: int, *, ordered: bool = True):
    """Yield (batch, results) for each batch, ``waves`` batches in flight at once;
    a batch whose call raised gets ``retry`` for every record. ``ordered``: in
    waves, each yielded in order once the whole wave is answered; else the next
    batch starts as soon as one is answered, and each is yielded when it is."""
    batches = list(chunks(items, max(1, size)))
    if not ordered:
        async for pair in _sliding(batches, call, max(1, waves)):
            yield pair
        return
    for start in range(0, len(batches), max(1, waves)):
        wave = batches[start : start + waves]
        outcomes = await asyncio.gather(*(call(b) for b in wave), return_exceptions=True)
        for batch, outcome in zip(wave, outcomes, strict=True):
            yield batch, _results(batch, outcome)


async def _sliding(batches: list[Any], call, width: int):
    async def one(batch):
        try:
            return batch, await call(batch)
        except Exception as exc:  # noqa: BLE001 - the batch's records are retried
            return batch, exc

    pending: set[asyncio.Task] = set()
    queue = iter(batches)
    try:
        while True:
            for batch in queue:
                pending.add(asyncio.ensure_future(one(batch)))
                if len(pending) >= width:
                    break
            if not pending:
                return
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                batch, outcome = task.result()
                yield batch, _results(batch, outcome)
    finally:
        for task in pending:
            task.cancel()


async def _execute(engine, target, api: SyncApi, plan: Plan, report, progress, transport) -> None:
    run = _Run(engine, target, plan, report, progress)
    limits = api.limits
    client = _client(target, api, transport)
    _forget(engine, target, plan.forget)
    async with client, api.open(target, client) as session:
        # Each upsert batch's people, once settled: their events go out then,
        # beside the next batches, which an API that counts them apart paces apart.
        settled: asyncio.Queue[list[int] | None] = asyncio.Queue()
        events = asyncio.ensure_future(_events(run, api, session, limits, settled))
        tasks = [events]
        try:
            try:
                await _upserts(run, api, session, limits, settled)
            finally:
                settled.put_nowait(None)
            # Memberships need the upserts' remote ids: after them, beside the events.
            tasks.append(asyncio.ensure_future(_memberships(run, api, session, limits)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            report.requests, report.throttled = client.stats.requests, client.stats.throttled
            if client.refused is not None:
                raise client.refused


def _joining(run: _Run, api: SyncApi) -> dict[int, frozenset[str]]:
    """The segments each person to upsert joins in this run, when the upsert adds them."""
    if not api.adds_on_upsert:
        return {}
    upserting = set(run.plan.upserts)
    joins: dict[int, set[str]] = {}
    for segment, pids in run.plan.adds.items():
        for pid in pids:
            if pid in upserting:
                joins.setdefault(pid, set()).add(segment)
    return {pid: frozenset(segs) for pid, segs in joins.items()}


async def _upserts(run: _Run, api: SyncApi, session, limits, settled: asyncio.Queue) -> None:
    joins = _joining(run, api)
    upserts = run.plan.upserts
    if joins:
        # People who join the same segments side by side: the connector's bulk
        # jobs, one per segment joined, come out fewer and fuller.
        order = {segs: sorted(segs) for segs in set(joins.values())}
        upserts = sorted(upserts, key=lambda pid: (order.get(joins.get(pid), []), pid))
    people = [run.plan.wanted[pid] for pid in upserts]

    def sent(batch: Sequence[Wanted]) -> list[SyncPerson]:
        return [replace(w.person, add_to=segs) if (segs := joins.get(w.person.profile_id))
                else w.person for w in batch]  # fmt: skip

    async def call(batch):
        return await api.upsert(session, sent(batch))

    at_once = limits.upserts_at_once or limits.concurrency
    if api.upsert_parts is not None:
        answered = _parts(api.upsert_parts, session, chunks(people, limits.profiles_per_call),
                          sent, at_once)  # fmt: skip
    else:
        answered = _batches(people, limits.profiles_per_call, call, at_once, ordered=False)
    async for batch, results in answered:
        crash_point("sync.sent")
        rows = []
        joined = 0
        for wanted, result in zip(batch, results, strict=True):
            pid = wanted.person.profile_id
            if run.count(result, "upserted"):
                if pid in run.plan.moved:
                    run.confirmed[pid] = set()
                added = joins.get(pid, frozenset())
                run.confirmed.setdefault(pid, set()).update(added)
                run.report.added += len(added)
                joined += len(added)
                remote = result.remote_id or wanted.person.remote_id
                if remote != wanted.person.remote_id:
                    person = replace(wanted.person, remote_id=remote)
                    run.plan.wanted[pid] = replace(wanted, person=person)
                run.has_state.add(pid)
                rows.append((pid, wanted, "ok", None, remote))
            else:
                rows.append((pid, wanted, result.status, result.reason, None))
        _write_upserts(run, rows)
        crash_point("sync.written")
        run.tick(len(batch) + joined)
        settled.put_nowait([w.person.profile_id for w in batch])


async def _parts(upsert_parts, session, batches, sent, at_once: int):
    """Yield (records, results) for each part of each call as the connector
    answers it (``SyncApi.upsert_parts``), ``at_once`` calls in flight; the
    records of a call that raised, or that it left unanswered, get ``retry``."""
    queue: asyncio.Queue[tuple[list[Any], Any] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(max(1, at_once))

    async def one(batch: list[Any]) -> None:
        answered: set[int] = set()
        outcome: Any = RuntimeError("the connector did not answer these records")
        try:
            async with slots:
                async for indexes, results in upsert_parts(session, sent(batch)):
                    answered.update(indexes)
                    queue.put_nowait(([batch[i] for i in indexes], results))
        except Exception as exc:  # noqa: BLE001 - the call's other records are retried
            outcome = exc
        finally:
            rest = [w for i, w in enumerate(batch) if i not in answered]
            if rest:
                queue.put_nowait((rest, outcome))
            queue.put_nowait(None)

    tasks = [asyncio.ensure_future(one(list(batch))) for batch in batches]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            part, outcome = item
            yield part, _results(part, outcome)
    finally:
        for task in tasks:
            task.cancel()


def _with_person(event: SyncEvent, person: SyncPerson) -> SyncEvent:
    return event if event.person is person else replace(event, person=person)


async def _memberships(run: _Run, api: SyncApi, session, limits) -> None:
    size, waves = limits.members_per_call, limits.concurrency
    for segment, people in sorted(run.plan.removes.items()):

        async def remove(batch, segment=segment):
            return await api.remove(session, segment, batch)

        async for batch, results in _batches(people, size, remove, waves, ordered=False):
            crash_point("sync.sent")
            done = []
            for person, result in zip(batch, results, strict=True):
                if run.count(result, "removed") and person.profile_id not in run.plan.moved:
                    run.confirmed.setdefault(person.profile_id, set()).discard(segment)
                    done.append(person.profile_id)
            _write_segments(run, done)
            crash_point("sync.written")
            run.tick(len(batch))
    for segment, pids in sorted(run.plan.adds.items()):
        # Those the upsert added (adds_on_upsert) are confirmed already.
        pids = [pid for pid in pids if segment not in run.confirmed.get(pid, ())]
        ready = [pid for pid in pids if pid in run.has_state]
        waiting = len(pids) - len(ready)
        if waiting:
            run.report.retry["not upserted"] = run.report.retry.get("not upserted", 0) + waiting
            run.tick(waiting)
        people = [run.plan.wanted[pid].person for pid in ready]

        async def add(batch, segment=segment):
            return await api.add(session, segment, batch)

        async for batch, results in _batches(people, size, add, waves, ordered=False):
            crash_point("sync.sent")
            done = []
            for person, result in zip(batch, results, strict=True):
                if run.count(result, "added"):
                    run.confirmed.setdefault(person.profile_id, set()).add(segment)
                    done.append(person.profile_id)
            _write_segments(run, done)
            crash_point("sync.written")
            run.tick(len(batch))


async def _events(run: _Run, api: SyncApi, session, limits, settled: asyncio.Queue) -> None:
    """Send each person's segment events once their upsert is settled (at
    once for those not upserted this run), ``events_per_call`` a call, while
    later upserts are still going; the cursor stops before the first event
    not delivered, so the next run sends it again."""
    plan, target = run.plan, run.target
    if not target.events:
        while await settled.get() is not None:
            pass
        return
    items = plan.events if api.events is not None else []
    upserting = set(plan.upserts)
    waiting: dict[int, list[tuple[int, SyncEvent]]] = {}
    queue: list[tuple[int, SyncEvent]] = []
    for cid, ev in items:
        pid = ev.person.profile_id
        if pid in upserting:
            waiting.setdefault(pid, []).append((cid, ev))
        elif pid in run.has_state:
            queue.append((cid, ev))
        else:
            waiting.setdefault(pid, []).append((cid, ev))
    # Change ids not settled yet, in order: the cursor is just before the first.
    unsettled = sorted(cid for cid, _ev in items)
    open_ids = set(unsettled)
    first = 0
    # Delivered past the first failure: remembered, so the next run does not send them again.
    done = set(plan.delivered)
    slots = asyncio.Semaphore(max(1, limits.concurrency))
    sending: list[asyncio.Task] = []

    def cursor() -> int:
        nonlocal first
        while first < len(unsettled) and unsettled[first] not in open_ids:
            first += 1
        return unsettled[first] - 1 if first < len(unsettled) else plan.cursor

    async def send(batch: list[tuple[int, SyncEvent]]) -> None:
        async with slots:
            try:
                # With the remote id the upsert answered.
                sent = [_with_person(ev, plan.wanted[ev.person.profile_id].person)
                        for _cid, ev in batch]  # fmt: skip
                outcome: Any = await api.events(session, sent)
            except Exception as exc:  # noqa: BLE001 - the batch's events are retried
                outcome = exc
        results = _results(batch, outcome)
        crash_point("sync.sent")
        for (cid, _ev), result in zip(batch, results, strict=True):
            if run.count(result, "events") or result.status == "failed":
                done.add(cid)
                open_ids.discard(cid)
        _save_cursor(run.engine, target, cursor(), done)
        crash_point("sync.written")
        run.tick(len(batch))

    size = max(1, limits.events_per_call)

    def flush(last: bool = False) -> None:
        nonlocal queue
        while len(queue) >= size or (last and queue):
            batch, queue = queue[:size], queue[size:]
            sending.append(asyncio.ensure_future(send(batch)))

    try:
        flush()
        while (pids := await settled.get()) is not None:
            for pid in pids:
                if pid in run.has_state:
                    queue.extend(waiting.pop(pid, ()))
            flush()
        # The rest of a person whose upsert failed waits with them.
        for pid in list(waiting):
            if pid in run.has_state:
                queue.extend(waiting.pop(pid))
        held = sum(map(len, waiting.values()))
        if held:
            run.report.retry["not upserted"] = run.report.retry.get("not upserted", 0) + held
            run.tick(held)
        flush(last=True)
        await asyncio.gather(*sending)
    finally:
        for task in sending:
            task.cancel()
    _save_cursor(run.engine, target, cursor(), done)


# -- state writes ----------------------------------------------------------------------------


def _write_upserts(run: _Run, rows: list[tuple[int, Wanted, str, str | None, str | None]]) -> None:
    """A wave's upsert results in one transaction: confirmed people get what was
    sent; failed ones keep what was confirmed before and count an attempt."""
    if not rows:
        return
    now = utcnow()
    confirmed, refused = [], []
    for pid, wanted, status, reason, remote in rows:
        person = wanted.person
        row = {"connector": run.target.name, "profile_id": pid, "email": person.email,
               "updated_at": now}  # fmt: skip
        if status == "ok":
            confirmed.append(row | {
                "hash": wanted.hash, "subscribed": person.subscribed, "remote_id": remote,
                "segments": sorted(run.confirmed.get(pid, ())), "status": "ok", "reason": None,
                "attempts": 0,
            })  # fmt: skip
        else:
            refused.append(row | {"hash": None, "segments": [], "status": status,
                                  "reason": reason, "attempts": 1})  # fmt: skip
    key = [SYNC_STATES.c.connector, SYNC_STATES.c.profile_id]
    with run.engine.begin() as conn:
        insert = dialect_insert(conn, SYNC_STATES)
        if confirmed:
            sent = ("email", "hash", "subscribed", "remote_id", "segments", "status", "reason",
                    "attempts", "updated_at")  # fmt: skip
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=key, set_={c: insert.excluded[c] for c in sent}
                ),
                confirmed,
            )
        if refused:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=key,
                    set_={
                        "status": insert.excluded.status,
                        "reason": insert.excluded.reason,
                        "updated_at": insert.excluded.updated_at,
                        "attempts": SYNC_STATES.c.attempts + 1,
                    },
                ),  # fmt: skip
                refused,
            )


def _write_segments(run: _Run, pids: list[int]) -> None:
    if not pids:
        return
    now = utcnow()
    stmt = (
        SYNC_STATES.update()
        .where(
            SYNC_STATES.c.connector == run.target.name,
            SYNC_STATES.c.profile_id == sa.bindparam("pid"),
        )
        .values(segments=sa.bindparam("segs"), updated_at=now)
    )
    with run.engine.begin() as conn:
        conn.execute(stmt, [{"pid": p, "segs": sorted(run.confirmed.get(p, ()))} for p in pids])


def _forget(engine: Engine, target: SyncTarget, pids: list[int]) -> None:
    if not pids:
        return
    with engine.begin() as conn:
        for chunk in chunks(sorted(pids), CHUNK):
            conn.execute(
                SYNC_STATES.delete().where(
                    SYNC_STATES.c.connector == target.name, SYNC_STATES.c.profile_id.in_(chunk)
                )
            )


def _save_cursor(engine: Engine, target: SyncTarget, cursor: int, done: Iterable[int] = ()) -> None:
    """The events' cursor: the change id all events up to are settled, and
    those past it already delivered."""
    save_cursor(
        engine,
        cursor_name(target),
        {"id": cursor, "done": sorted(c for c in done if c > cursor)},
    )


def _start_run(
    engine: Engine, target: SyncTarget, started: datetime, details: dict[str, Any] | None
) -> int:
    with engine.begin() as conn:
        run_id = conn.execute(
            SYNC_RUNS.insert()
            .values(connector=target.name, status="running", counts={}, started_at=started)
            .returning(SYNC_RUNS.c.id)
        ).scalar_one()
        if details is not None:
            audit.record(conn, None, "sync.run", target.name, {"run": run_id, **details})
        return run_id


def _finish_run(engine, run_id, report, started, status, error=None) -> None:
    now = utcnow()
    report.seconds = round((now - started).total_seconds(), 3)
    with engine.begin() as conn:
        conn.execute(
            SYNC_RUNS.update()
            .where(SYNC_RUNS.c.id == run_id)
            .values(status=status, counts=report.model_dump(mode="json"), error=error,
                    finished_at=now)
        )  # fmt: skip
