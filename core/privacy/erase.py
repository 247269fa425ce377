"""Erasure: a person deleted from every table, at every connector, and kept out.

    find the person (live profile + merged ones) --> one transaction:
        delete their rows, children first (core.privacy.person)
        suppression list += keyed hash of each identifier
        privacy_deletions += (connector, address) for each connector that deletes
        audit_log += privacy.erase: who, when, the subject's hash, counts per table
    --> each connector's delete, until it confirms (now, and every ``sync run``)

The transaction makes an erasure all or nothing: killed before its commit,
nothing changed and running it again erases; killed after, the person is
gone and running it again finds them suppressed, says so, and sends the
deletions still pending. A pending deletion keeps the address, the one thing
a connector deletes by, until that connector confirms; then the row goes.

On SQLite the erasing connection sets ``secure_delete`` (deleted content is
overwritten with zeros, in table and index pages alike); afterwards the WAL
is checkpointed and truncated, so no old frame holds the deleted pages, and
with ``vacuum`` (the default) the file is rebuilt first, so neither does the
slack that earlier page splits left in other pages. On PostgreSQL the
deleted tuples stay on disk until vacuum reclaims them; ``vacuum`` runs
VACUUM on the person tables at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core import audit
from core.db.models import utcnow
from core.db.sql import dialect_insert
from core.db.tables import EVENTS, PRIVACY_DELETIONS, SUPPRESSIONS, SYNC_STATES
from core.ingestion.activity import forget_events
from core.ingestion.crashpoints import crash_point
from core.privacy.person import Person, find_person, identifiers, person_tables
from core.privacy.suppress import KINDS, keyed_hash
from core.profiles import ProfileNotFound
from core.types import CommandError, EspConnector, RecordResult, SyncPerson, SyncTarget

ERASE_ACTION = "privacy.erase"


class ErasureReport(BaseModel):
    """What an erasure did. ``subject``: the keyed hash the audit record names;
    ``deleted``: rows per table; ``pending``: connector -> addresses not yet
    confirmed there (with the last reason)."""

    subject: str
    already_erased: bool = False
    deleted: dict[str, int] = {}
    suppressed: int = 0
    confirmed: dict[str, int] = {}
    pending: dict[str, dict[str, int]] = {}

    @property
    def done(self) -> bool:
        return not self.pending


def need_key(secret: str | None, why: str = "erasure", what: str = "the suppression list") -> str:
    if not secret:
        raise CommandError(
            f"{why} needs a secret key (secret_key in segflow.toml or SEGFLOW_SECRET_KEY): "
            f"it keys the hashes of {what}"
        )
    return secret


def subject_of(secret: str, key: str, person: Person | None) -> str:
    """The keyed hash an audit record names the person by: of their user id
    when they have one (whatever ``key`` was), else of ``key``."""
    if person is not None and person.user_id:
        return keyed_hash(secret, "user_id", person.user_id)
    kind = "email" if "@" in key else "user_id"
    return keyed_hash(secret, kind, key)


def _suppressed_as(conn: Connection, secret: str, key: str) -> str | None:
    """The subject of the erasure that suppressed ``key`` (as any kind of id), or None."""
    hashes = [keyed_hash(secret, kind, key) for kind in KINDS]
    return conn.execute(
        sa.select(SUPPRESSIONS.c.subject).where(SUPPRESSIONS.c.hash.in_(hashes)).limit(1)
    ).scalar()


def _emails(conn: Connection, person: Person, ids: set[tuple[str, str]]) -> set[str]:
    """Every address the person may be known by remotely: theirs, and those
    sync_states say a connector confirmed (an older address, maybe)."""
    found = {value for kind, value in ids if kind == "email"}
    rows = conn.execute(
        sa.select(SYNC_STATES.c.email).where(SYNC_STATES.c.profile_id.in_(person.profile_ids))
    ).scalars()
    found.update(e.strip().lower() for e in rows if e)
    return found


@contextlib.contextmanager
def _erasing(engine: Engine) -> Iterator[Connection]:
    """A transaction whose deletes overwrite what they delete (SQLite's
    secure_delete, for this connection only: it costs every other write)."""
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        try:
            with conn.begin():
                if sqlite:
                    conn.exec_driver_sql("PRAGMA secure_delete = ON")
                yield conn
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete = OFF")
                conn.commit()


def erase_person(
    engine: Engine,
    key: str,
    *,
    secret_key: str | None,
    connectors: Sequence[str] = (),
    actor: str | None = None,
    vacuum: bool = True,
) -> ErasureReport:
    """Erase the person ``key`` names (user id, anonymous id or email) from
    every table, suppress their identifiers, and record a deletion for each
    of ``connectors`` (names of connectors that delete); their deletions are
    sent by ``send_deletions``. Someone already erased: the report says so
    (``already_erased``) and lists what is pending. ProfileNotFound when no
    one is, or was, known by ``key``."""
    secret = need_key(secret_key)
    now = utcnow()
    with _erasing(engine) as conn:
        try:
            person = find_person(conn, key)
        except ProfileNotFound:
            subject = _suppressed_as(conn, secret, key)
            if subject is None:
                raise
            return ErasureReport(
                subject=subject, already_erased=True, pending=_pending(conn, subject)
            )
        subject = subject_of(secret, key, person)
        ids = identifiers(conn, person)
        emails = _emails(conn, person, ids)
        deleted: dict[str, int] = {}
        forget_events(conn, EVENTS.c.profile_id.in_(person.profile_ids))
        for table, selector in reversed(person_tables()):
            n = conn.execute(table.delete().where(selector(person))).rowcount
            deleted[table.name] = max(n, 0)
        hashes = sorted({keyed_hash(secret, kind, value) for kind, value in ids})
        if hashes:
            insert = dialect_insert(conn, SUPPRESSIONS)
            conn.execute(
                insert.on_conflict_do_nothing(index_elements=[SUPPRESSIONS.c.hash]),
                [{"hash": h, "subject": subject, "created_at": now} for h in hashes],
            )
        rows = [
            {"connector": name, "email": email, "subject": subject, "attempts": 0,
             "created_at": now, "updated_at": now}
            for name in sorted(set(connectors)) for email in sorted(emails)
        ]  # fmt: skip
        if rows:
            insert = dialect_insert(conn, PRIVACY_DELETIONS)
            conn.execute(
                insert.on_conflict_do_nothing(
                    index_elements=[PRIVACY_DELETIONS.c.connector, PRIVACY_DELETIONS.c.email]
                ),
                rows,
            )
        details = {
            "deleted": deleted,
            "suppressed": len(hashes),
            "connectors": sorted(set(connectors)),
            "deletions": len(rows),
        }
        audit.record(conn, actor, ERASE_ACTION, subject, details, at=now)
        pending = _pending(conn, subject)
    crash_point("privacy.erased")
    reclaim(engine, vacuum=vacuum)
    return ErasureReport(subject=subject, deleted=deleted, suppressed=len(hashes), pending=pending)


def reclaim(engine: Engine, *, vacuum: bool = True) -> None:
    """Leave no copy of deleted rows in the database files (see the module's
    docstring): SQLite's WAL checkpointed and truncated, and with ``vacuum``
    the file rebuilt first; PostgreSQL's person tables vacuumed."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if conn.dialect.name == "sqlite":
            if vacuum:
                conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif conn.dialect.name == "postgresql" and vacuum:
            names = ", ".join(t.name for t, _ in person_tables())
            conn.exec_driver_sql(f"VACUUM {names}")


def _pending(conn: Connection, subject: str | None = None) -> dict[str, dict[str, int]]:
    query = sa.select(PRIVACY_DELETIONS.c.connector, PRIVACY_DELETIONS.c.reason)
    if subject is not None:
        query = query.where(PRIVACY_DELETIONS.c.subject == subject)
    out: dict[str, dict[str, int]] = {}
    for connector, reason in conn.execute(query):
        why = out.setdefault(connector, {})
        why[reason or "not sent yet"] = why.get(reason or "not sent yet", 0) + 1
    return out


def pending_deletions(engine: Engine) -> dict[str, dict[str, int]]:
    """connector -> {reason: addresses} of every deletion not yet confirmed."""
    with engine.connect() as conn:
        return _pending(conn)


# -- sending the deletions ---------------------------------------------------------------


def send_deletions(
    engine: Engine,
    target: SyncTarget,
    connector: EspConnector,
    *,
    transport: Any = None,
    backoff: Any = None,
) -> tuple[int, dict[str, int]]:
    """Send ``target``'s pending deletions through its connector: the confirmed
    ones are removed, the others count an attempt and keep their reason.
    (confirmed, {reason: still pending})."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(PRIVACY_DELETIONS.c.id, PRIVACY_DELETIONS.c.email)
            .where(PRIVACY_DELETIONS.c.connector == target.name)
            .order_by(PRIVACY_DELETIONS.c.id)
        ).all()
    if not rows:
        return 0, {}
    api = connector.sync
    if api is None or api.delete is None:
        results = [("failed", f"{target.kind} cannot delete people")] * len(rows)
    else:
        emails = [email for _, email in rows]
        results = asyncio.run(_delete(target, api, emails, transport, backoff))
    crash_point("privacy.sent")
    confirmed = [rid for (rid, _), (status, _) in zip(rows, results, strict=True) if status == "ok"]
    left: dict[str, int] = {}
    now = utcnow()
    with _erasing(engine) as conn:
        if confirmed:
            conn.execute(PRIVACY_DELETIONS.delete().where(PRIVACY_DELETIONS.c.id.in_(confirmed)))
        for (rid, _), (status, reason) in zip(rows, results, strict=True):
            if status == "ok":
                continue
            why = reason or status
            left[why] = left.get(why, 0) + 1
            conn.execute(
                PRIVACY_DELETIONS.update()
                .where(PRIVACY_DELETIONS.c.id == rid)
                .values(attempts=PRIVACY_DELETIONS.c.attempts + 1, reason=why, updated_at=now)
            )
    return len(confirmed), left


async def _delete(
    target: SyncTarget, api: Any, emails: list[str], transport: Any, backoff: Any
) -> list[tuple[str, str | None]]:
    from core.sync.client import SyncClient, SyncFailure

    client = SyncClient(
        target.base_url,
        api.limits,
        headers=api.auth_headers(target),
        rate_state=api.rate_state,
        transport=transport,
        backoff=backoff,
    )
    people = [SyncPerson(profile_id=0, email=email) for email in emails]
    try:
        async with client, api.open(target, client) as session:
            out: list[tuple[str, str | None]] = []
            size = max(1, api.limits.profiles_per_call)
            for start in range(0, len(people), size):
                batch = people[start : start + size]
                try:
                    results = await api.delete(session, batch)
                except SyncFailure as exc:
                    results = [RecordResult("retry", str(exc))] * len(batch)
                out += [(r.status, r.reason) for r in results]
            return out
    except SyncFailure as exc:  # the session could not open: everything waits
        return [("retry", str(exc))] * len(emails)


def erase_and_send(
    engine: Engine,
    key: str,
    *,
    secret_key: str | None,
    targets: Sequence[tuple[SyncTarget, EspConnector]] = (),
    unresolved: dict[str, str] | None = None,
    actor: str | None = None,
    vacuum: bool = True,
    transport: Any = None,
    backoff: Any = None,
) -> ErasureReport:
    """``erase_person``, then each connector's deletions tried at once; what
    is not confirmed stays pending for the next ``segflow sync run``.
    ``unresolved``: connectors that delete but cannot be reached now (no key
    set): their deletions are recorded, and pending, with the reason."""
    names = [t.name for t, c in targets if c.sync is not None and c.sync.delete is not None]
    names += list(unresolved or {})
    report = erase_person(
        engine, key, secret_key=secret_key, connectors=names, actor=actor, vacuum=vacuum
    )
    for target, connector in targets:
        if target.name not in names:
            continue
        confirmed, _left = send_deletions(
            engine, target, connector, transport=transport, backoff=backoff
        )
        if confirmed:
            report.confirmed[target.name] = confirmed
    with engine.begin() as conn:
        for name, why in (unresolved or {}).items():
            conn.execute(
                PRIVACY_DELETIONS.update()
                .where(
                    PRIVACY_DELETIONS.c.connector == name,
                    PRIVACY_DELETIONS.c.subject == report.subject,
                )
                .values(reason=why, updated_at=utcnow())
            )
        report.pending = _pending(conn, report.subject)
    return report


def erase_everywhere(
    engine: Engine, settings: Any, key: str, *, actor: str | None = None, vacuum: bool = True
) -> ErasureReport:
    """``erase_and_send`` to every configured connector that deletes (the
    settings' ``[[connectors]]``), keyed by the settings' secret key."""
    from core.privacy.connectors import deleting_connectors

    targets, unresolved = deleting_connectors(settings)
    return erase_and_send(
        engine,
        key,
        secret_key=settings.secret_key,
        targets=targets,
        unresolved=unresolved,
        actor=actor,
        vacuum=vacuum,
    )
