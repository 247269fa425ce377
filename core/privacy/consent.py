"""Consent per purpose: the current state per profile (with who recorded it,
when, and the version of the text agreed to), and the consent gate every
marketing email and every ESP subscription passes (``email_refusals``).

Purposes: ``tracking`` (behavioural events are kept about the person; see
``core.privacy.policy``), ``email_marketing`` (marketing email and ESP
subscription), ``personalisation``. ``email`` is the old name of
``email_marketing`` and still accepted everywhere a purpose is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.tables import AUDIT, CONSENTS, EVENTS, PROFILES
from core.profiles import find_profile_id

TRACKING = "tracking"
EMAIL_MARKETING = "email_marketing"
PERSONALISATION = "personalisation"
PURPOSES = (TRACKING, EMAIL_MARKETING, PERSONALISATION)
# Old names still accepted (settings, segment rules, API bodies), stored as the new.
ALIASES = {"email": EMAIL_MARKETING}
EMAIL = EMAIL_MARKETING
# What the one-click unsubscribe records (core.tracking), and ESP webhooks may too.
UNSUBSCRIBE_EVENT = "unsubscribe"
NO_CONSENT = "no email consent"
WITHDRAWN = "email consent withdrawn"
UNSUBSCRIBED = "unsubscribed"
MERGED_CHAIN_LIMIT = 100
# Beyond this many people, one pass over the consents (and merges, and
# unsubscribes) costs less than looking them up 500 at a time.
SCAN_ABOVE = 5000


def purpose_name(purpose: str) -> str:
    """The canonical name of a purpose (``email`` -> ``email_marketing``)."""
    return ALIASES.get(purpose, purpose)


def set_consent(
    engine: Engine,
    who: str,
    purpose: str,
    granted: bool,
    source: str,
    version: str | None = None,
) -> int:
    """Grant or withdraw a purpose for the person known by ``who``; returns the profile id."""
    with engine.begin() as conn:
        pid = find_profile_id(conn, who)
        record_consent(conn, pid, purpose, granted, source, version, utcnow())
    return pid


def record_consent(
    conn: Connection,
    pid: int,
    purpose: str,
    granted: bool,
    source: str,
    version: str | None,
    at: datetime,
) -> bool:
    """Write one decision in ``conn``'s transaction, with its audit record.

    A decision older than the one stored is ignored (False): events carrying
    consent may arrive out of order (a back-fill, a retried webhook), and
    the person's latest decision must win.
    """
    purpose = purpose_name(purpose)
    now = utcnow()
    current = conn.execute(
        sa.select(CONSENTS.c.updated_at).where(
            CONSENTS.c.profile_id == pid, CONSENTS.c.purpose == purpose
        )
    ).scalar()
    if current is not None and current > at:
        return False
    values = {"granted": granted, "source": source, "version": version, "updated_at": at}
    if current is not None:
        conn.execute(
            CONSENTS.update()
            .where(CONSENTS.c.profile_id == pid, CONSENTS.c.purpose == purpose)
            .values(**values)
        )
    else:
        conn.execute(CONSENTS.insert().values(profile_id=pid, purpose=purpose, **values))
    conn.execute(
        AUDIT.insert().values(
            at=now,
            actor=source,
            action="consent.grant" if granted else "consent.withdraw",
            target=str(pid),
            details={"purpose": purpose, "version": version},
        )
    )
    return True


def set_consents(
    engine: Engine,
    profile_ids: Iterable[int],
    purpose: str,
    granted: bool,
    source: str,
    version: str | None = None,
) -> int:
    """``set_consent`` for many profiles by id in one transaction (imports of a
    list's opt-ins, the demo's sign-ups); returns how many were set."""
    purpose = purpose_name(purpose)
    ids = sorted(set(profile_ids))
    now = utcnow()
    with engine.begin() as conn:
        for chunk in _chunks(ids):
            conn.execute(
                CONSENTS.delete().where(
                    CONSENTS.c.profile_id.in_(chunk), CONSENTS.c.purpose == purpose
                )
            )
        if ids:
            conn.execute(
                CONSENTS.insert(),
                [
                    {
                        "profile_id": pid,
                        "purpose": purpose,
                        "granted": granted,
                        "source": source,
                        "version": version,
                        "updated_at": now,
                    }
                    for pid in ids
                ],
            )
            action = "consent.grant" if granted else "consent.withdraw"
            conn.execute(
                AUDIT.insert(),
                [
                    {
                        "at": now,
                        "actor": source,
                        "action": action,
                        "target": str(pid),
                        "details": {"purpose": purpose, "version": version},
                    }
                    for pid in ids
                ],
            )
    return len(ids)


def granted(engine: Engine, profile_id: int, purpose: str) -> bool | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(CONSENTS.c.granted).where(
                CONSENTS.c.profile_id == profile_id, CONSENTS.c.purpose == purpose_name(purpose)
            )
        ).scalar()


def email_refusals(conn: Connection, profile_ids: Iterable[int]) -> dict[int, str]:
    """The consent gate: why marketing email may not go to each of these people.

    Returns profile id -> reason for the refused ones only; a profile not in
    the result may be sent marketing email. A person passes when their latest
    ``email_marketing`` consent is granted and no ``unsubscribe`` event came at or after
    that grant. Opt-in: no consent row at all is a refusal (``no email
    consent``), never a silent yes. A re-grant after an unsubscribe lets mail
    through again, since the grant is then the later decision.

    A merged profile is judged as the profile it was merged into, and the
    consents of every profile merged there count (consent rows stay on the
    profile they were given on): the latest decision wins.
    """
    wanted = set(profile_ids)
    if not wanted:
        return {}
    scan = len(wanted) > SCAN_ABOVE
    survivor = _survivors(conn, wanted)
    people = set(survivor.values())
    # Consent rows of the survivors and of the profiles merged into them.
    owner = sa.func.coalesce(PROFILES.c.merged_into, PROFILES.c.id)
    latest: dict[int, tuple[object, bool]] = {}
    consents = (
        sa.select(owner, CONSENTS.c.granted, CONSENTS.c.updated_at)
        .join(PROFILES, PROFILES.c.id == CONSENTS.c.profile_id)
        .where(CONSENTS.c.purpose == EMAIL)
    )

    def mine(chunk: list[int]) -> Any:
        return sa.or_(PROFILES.c.id.in_(chunk), PROFILES.c.merged_into.in_(chunk))

    for pid, granted_, at in _rows(conn, consents, mine, people, scan):
        if pid in people and (pid not in latest or at > latest[pid][0]):
            latest[pid] = (at, bool(granted_))
    decided = {
        pid: (NO_CONSENT if pid not in latest else None if latest[pid][1] else WITHDRAWN)
        for pid in people
    }
    granted_at = {pid: latest[pid][0] for pid, why in decided.items() if why is None}
    unsubscribes = (
        sa.select(EVENTS.c.profile_id, sa.func.max(EVENTS.c.ts))
        .where(EVENTS.c.type == UNSUBSCRIBE_EVENT)
        .group_by(EVENTS.c.profile_id)
    )
    for pid, at in _rows(conn, unsubscribes, EVENTS.c.profile_id.in_, granted_at, scan):
        if pid in granted_at and at is not None and at >= granted_at[pid]:
            decided[pid] = UNSUBSCRIBED
    return {pid: decided[survivor[pid]] for pid in wanted if decided[survivor[pid]] is not None}


def _rows(conn: Connection, query: Any, where: Any, ids: Iterable[int], scan: bool) -> Iterator:
    """``query``'s rows: all of them in one pass (``scan``), or those of ``ids``
    500 at a time (``where(chunk)`` narrows it to a chunk). Callers keep only
    their ids' rows either way."""
    if scan:
        yield from conn.execute(query)
        return
    for chunk in _chunks(sorted(ids)):
        yield from conn.execute(query.where(where(chunk)))


def _survivors(conn: Connection, profile_ids: set[int]) -> dict[int, int]:
    """profile id -> the live profile it is (itself, or the end of its merges)."""
    found = {pid: pid for pid in profile_ids}
    pending = set(profile_ids)
    merged = sa.select(PROFILES.c.id, PROFILES.c.merged_into).where(
        PROFILES.c.merged_into.is_not(None)
    )
    # Many people: every merge at once (there are few), then the chains in memory.
    every = dict(conn.execute(merged).all()) if len(pending) > SCAN_ABOVE else None
    for _ in range(MERGED_CHAIN_LIMIT):
        if not pending:
            return found
        step: dict[int, int] = {}
        if every is not None:
            step = {p: every[p] for p in {found[q] for q in pending} if p in every}
        else:
            for chunk in _chunks(sorted({found[p] for p in pending})):
                step.update(conn.execute(merged.where(PROFILES.c.id.in_(chunk))).all())
        pending = {p for p in pending if found[p] in step}
        for p in pending:
            found[p] = step[found[p]]
    raise ValueError("a profile merge chain does not end")


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
