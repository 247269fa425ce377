"""One batch's step: drop duplicates, resolve identities, insert."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from core.db.models import utcnow
from core.db.sql import fetch_in
from core.ingestion.activity import BatchActivity, tally, tally_days
from core.ingestion.bulk import DeferredLoad
from core.ingestion.identity import BatchResolver
from core.ingestion.plain import STORED_JSON, as_event
from core.ingestion.report import IngestReport, Rejection
from core.ingestion.schema import IDENTIFY, Event, Fields, trait_email
from core.ingestion.writers import EventWriter
from core.privacy.minimise import Counts, Minimiser
from core.privacy.policy import (
    DROPPED,
    ConsentChange,
    ConsentPolicy,
    anonymise,
    consent_change,
    record_changes,
    strip_trait,
    untracked,
)
from core.privacy.suppress import REASON, secret_key, suppressed
from core.types import StoredEvent


def store_batch(
    conn: Connection,
    writer: EventWriter,
    batch: list[Event | Fields],
    source: str,
    report: IngestReport,
    want_stored: bool = True,
    load: DeferredLoad | None = None,
    touched: set[int] | None = None,
    activity: BatchActivity | None = None,
    policy: ConsentPolicy | None = None,
    minimiser: Minimiser | None = None,
) -> list[StoredEvent]:
    """Store one batch in ``conn``'s transaction; its stored events when
    ``want_stored``, the ids of the profiles they went to added to
    ``touched``, and its events per type (with the newest time) to ``activity``.
    ``policy``: the consent policy (core.privacy.policy); none holds nothing back.
    ``minimiser``: what of each event is kept (core.privacy.minimise)."""
    fresh = _drop_duplicates(conn, batch, report)
    if not fresh:
        return []
    records: list[Fields] = [e if type(e) is dict else e.__dict__ for e in fresh]
    emails = [trait_email(r.get("traits")) if r["type"] == IDENTIFY else None for r in records]
    fresh, records, emails = _drop_suppressed(conn, fresh, records, emails, report)
    if not fresh:
        return []
    fresh, records, emails, changes = _apply_consent(
        conn, policy or ConsentPolicy(), fresh, records, emails, report
    )
    if not fresh:
        return []
    if minimiser is not None and minimiser.active:
        counts = _minimise(minimiser, fresh, records)
        if counts:
            for k, n in counts.items():
                report.minimised[k] = report.minimised.get(k, 0) + n
            if activity is not None:
                activity.minimised = counts
    resolver = BatchResolver(conn)
    ids = [(r.get("user_id"), r.get("anonymous_id"), r.get("email")) for r in records]
    keys: set[tuple[str, str]] = {("email", email) for email in emails if email is not None}
    # A batch holds a few hundred people's events: their ids, once each.
    for user_id, anonymous_id, address in set(ids):
        if user_id is not None:
            keys.add(("user_id", user_id))
        if anonymous_id is not None:
            keys.add(("anonymous_id", anonymous_id))
        if address is not None:
            keys.add(("email", address))
    resolver.prefetch(keys)
    handles = [
        resolver.resolve(*who, r.get("traits"), email)
        if r["type"] == IDENTIFY
        else resolver.resolve(*who)
        for who, r, email in zip(ids, records, emails, strict=True)
    ]
    deferring = load is not None and load.active
    moves: list[tuple[int, int]] | None = [] if deferring else None
    stats = resolver.apply(defer_moves=moves)
    if moves:
        load.queue_moves(conn, moves)  # type: ignore[union-attr]
    report.profiles_created += stats.created
    report.profiles_merged += stats.merged

    now = utcnow()
    pid_of = {h: resolver.profile_id(h) for h in set(handles)}
    pids = [pid_of[h] for h in handles]
    if touched is not None:
        touched.update(pid_of.values())
    if any(c is not None for c in changes):
        record_changes(conn, records, changes, pids, source, now)
    inserted = writer(conn, records, pids, source, now)
    if inserted != len(records):
        # Another writer stored some of these between our check and insert.
        report.duplicates += len(records) - inserted
    report.accepted += inserted
    # One pass gives both the report's counts and the monitoring's newest times.
    types = tally(records, now)
    for type_, (n, _) in types.items():
        report.by_type[type_] = report.by_type.get(type_, 0) + n
    report.identifies += types[IDENTIFY][0] if IDENTIFY in types else 0
    if activity is not None:
        activity.types = types
        activity.days = tally_days(records, now)
    if not want_stored:
        return []
    # The plain path's fields become an Event only if a hook asks for one.
    return [
        StoredEvent(e, pid, e.get("ts") or now, now, as_event)
        if type(e) is dict
        else StoredEvent(e, pid, e.ts or now, now)
        for e, pid in zip(fresh, pids, strict=True)
    ]


def _minimise(minimiser: Minimiser, fresh: list[Event | Fields], records: list[Fields]) -> Counts:
    """Replace, in place, each event minimisation changes by its minimised
    copy (the caller's Event or dict is left as it was); what it did, counted."""
    counts: Counts = {}
    for i, r in enumerate(records):
        changed = minimiser.event(r["type"], r, counts)
        if changed is None:
            continue
        item = fresh[i]
        if type(item) is dict:
            new = {**r, **changed}
            new.pop(STORED_JSON, None)  # the writer encodes the new properties
            fresh[i] = records[i] = new
        else:
            event = item.model_copy(update=changed)  # type: ignore[union-attr]
            fresh[i] = event
            records[i] = event.__dict__
    return counts


def _drop_suppressed(
    conn: Connection,
    fresh: list[Event | Fields],
    records: list[Fields],
    emails: list[str | None],
    report: IngestReport,
) -> tuple[list[Event | Fields], list[Fields], list[str | None]]:
    """Events naming an erased person are dropped, counted as rejected:
    one lookup of the batch's identifiers."""
    named = [
        [
            (kind, value)
            for kind, value in (
                ("user_id", r.get("user_id")),
                ("anonymous_id", r.get("anonymous_id")),
                ("email", r.get("email")),
                ("email", email),
            )
            if value
        ]
        for r, email in zip(records, emails, strict=True)
    ]
    hits = suppressed(conn, {i for ids in named for i in ids}, secret_key())
    if not hits:
        return fresh, records, emails
    keep = [not hits.intersection(ids) for ids in named]
    for r, kept in zip(records, keep, strict=True):
        if not kept:
            report.rejected.append(Rejection(f"message {r['message_id']}", REASON))
    return (
        [e for e, k in zip(fresh, keep, strict=True) if k],
        [r for r, k in zip(records, keep, strict=True) if k],
        [e for e, k in zip(emails, keep, strict=True) if k],
    )


def _apply_consent(
    conn: Connection,
    policy: ConsentPolicy,
    fresh: list[Event | Fields],
    records: list[Fields],
    emails: list[str | None],
    report: IngestReport,
) -> tuple[list[Event | Fields], list[Fields], list[str | None], list[ConsentChange | None]]:
    """Read the consent decisions the batch carries (unreadable ones reject
    their event), then hold back the events the tracking policy refuses."""
    changes: list[ConsentChange | None] = []
    keep: list[bool] = []
    for r in records:
        change = consent_change(r)
        if isinstance(change, str):
            report.rejected.append(Rejection(f"message {r['message_id']}", change))
            changes.append(None)
            keep.append(False)
            continue
        changes.append(change)
        keep.append(True)
        if change is not None:
            strip_trait(r)
    held = untracked(conn, policy, records, changes)
    for i, r in enumerate(records):
        if not keep[i] or not held[i]:
            continue
        if policy.tracking == "required":
            report.rejected.append(Rejection(f"message {r['message_id']}", DROPPED))
            keep[i] = False
        else:
            anonymise(r, policy.anonymous_properties)
            emails[i] = None
    if all(keep):
        return fresh, records, emails, changes

    def kept(items: list) -> list:
        return [x for x, k in zip(items, keep, strict=True) if k]

    return kept(fresh), kept(records), kept(emails), kept(changes)


def _drop_duplicates(
    conn: Connection, batch: list[Event | Fields], report: IngestReport
) -> list[Event | Fields]:
    ids = [e["message_id"] if type(e) is dict else e.message_id for e in batch]
    unique = batch
    if len(set(ids)) < len(ids):  # the same message twice in the batch: keep the first
        seen: set[str] = set()
        unique, kept = [], []
        for e, message_id in zip(batch, ids, strict=True):
            if message_id in seen:
                report.duplicates += 1
                continue
            seen.add(message_id)
            unique.append(e)
            kept.append(message_id)
        ids = kept
    rows = fetch_in(conn, "SELECT message_id FROM events WHERE 1 = 1", "message_id", ids)
    existing = {r[0] for r in rows}
    if existing:
        report.duplicates += len(existing)
        unique = [e for e, i in zip(unique, ids, strict=True) if i not in existing]
    return unique
