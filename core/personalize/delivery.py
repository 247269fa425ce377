"""Delivering rendered emails through a connector, once per idempotency key.

``deliver`` records every message before the provider call (``sending``) and
after it (``sent`` with the provider's id, ``deferred``, ``failed``), so the
messages table always says how far each got; see core/personalize/messages.py
for the statuses. Marketing email passes the consent gate
(``core.consents.email_refusals``) first; a refused one is recorded
``skipped`` with the reason.

A run killed between the provider call and the status update leaves the
message ``sending``. The next run asks the connector (``confirm``: the outbox
looks for its file) and, when the connector cannot tell (SMTP cannot), marks it
``unknown`` and does not send it again unless asked to (``retry_unknown``);
a resend carries the same Message-ID, so a receiving system can drop the copy.
At most once, then, unless someone chooses otherwise for the few in doubt.

``send`` is the same for a segment: its members, one key per (campaign,
segment, template, person).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core import audit
from core.consents import email_refusals
from core.db.models import utcnow
from core.db.tables import MEMBERSHIPS, PROFILES, SEGMENTS
from core.ingestion.crashpoints import crash_point
from core.personalize.messages import FINAL, OPEN, MessageRow, change, finish, known, record
from core.personalize.mime import sender_domain, to_mime
from core.types import (
    CommandError,
    DeliveryInDoubt,
    EspConnector,
    PermanentFailure,
    RenderedEmail,
    TemporaryFailure,
    UsageError,
)

CHUNK = 200
NO_ADDRESS = "no email address"
IN_DOUBT = (
    "the run sending it stopped before the answer was recorded; "
    "it may have been delivered (send again with --retry-unknown)"
)
CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REASON_MAX_LENGTH = 500

# (connection, template, profile id, idempotency key) -> the rendered email.
Render = Callable[[Connection, str, int, str], RenderedEmail]


@dataclass(frozen=True)
class RetryPolicy:
    """Temporary failures: hand-overs per message in one run, and the waits between."""

    attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    def delay(self, tries: int, retry_after: float | None) -> float:
        wait = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (tries - 1))
        return max(wait, min(retry_after or 0.0, self.max_backoff_seconds))


class DeliveryReport(BaseModel):
    """What a delivery did, by outcome; reasons map to how many messages had them.

    In a dry run nothing is recorded or sent and ``sent`` counts what would be.
    """

    via: str
    dry_run: bool = False
    sent: int = 0
    # Of ``sent``: messages a killed run had handed over, confirmed by the connector.
    recovered: int = 0
    skipped: dict[str, int] = {}
    deferred: dict[str, int] = {}
    failed: dict[str, int] = {}
    # Keys that may or may not have been delivered: not sent again.
    unknown: list[str] = []
    # Keys an earlier run settled: their status -> count (nothing done now).
    earlier: dict[str, int] = {}
    # The same key more than once in this call: delivered once.
    duplicates: int = 0

    def count(self, outcome: str, reason: str | None = None) -> None:
        if outcome == "sent":
            self.sent += 1
        else:
            bucket = getattr(self, outcome)
            key = reason or outcome
            bucket[key] = bucket.get(key, 0) + 1

    @property
    def total(self) -> int:
        groups = (self.skipped, self.deferred, self.failed, self.earlier)
        counted = sum(sum(g.values()) for g in groups)
        return self.sent + len(self.unknown) + self.duplicates + counted


class SendReport(DeliveryReport):
    """A segment send: the delivery report plus what was sent to whom."""

    template: str
    segment: str
    campaign: str
    members: int = 0


# (idempotency key, outcome, reason): after each message, e.g. for a progress bar.
OnMessage = Callable[[str, str, str | None], None]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:REASON_MAX_LENGTH]


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class _Run:
    """One delivery through one connector session."""

    def __init__(
        self,
        engine: Engine,
        via: EspConnector,
        sender: str,
        session: Any,
        report: DeliveryReport,
        *,
        retry_unknown: bool,
        retry: RetryPolicy,
        sleep: Callable[[float], None],
        on_message: OnMessage | None,
    ) -> None:
        self.engine, self.via, self.sender, self.session = engine, via, sender, session
        self.report, self.retry, self.sleep = report, retry, sleep
        self.retry_unknown, self.on_message = retry_unknown, on_message
        self.seen: set[str] = set()

    def outcome(self, key: str, outcome: str, reason: str | None = None) -> None:
        if outcome == "unknown":
            self.report.unknown.append(key)
        elif outcome == "duplicates":
            self.report.duplicates += 1
        else:
            self.report.count(outcome, reason)
        if self.on_message is not None:
            self.on_message(key, outcome, reason)

    def chunk(self, emails: list[RenderedEmail]) -> None:
        fresh = []
        for email in emails:
            if email.idempotency_key in self.seen:
                self.outcome(email.idempotency_key, "duplicates")
            else:
                self.seen.add(email.idempotency_key)
                fresh.append(email)
        if not fresh:
            return
        with self.engine.connect() as conn:
            refusals = email_refusals(conn, {e.profile_id for e in fresh if e.marketing})
        why = {
            e.idempotency_key: NO_ADDRESS if not e.to else refusals.get(e.profile_id)
            for e in fresh
            if not e.to or e.marketing
        }
        if self.report.dry_run:
            with self.engine.connect() as conn:
                rows = known(conn, (e.idempotency_key for e in fresh))
            for email in fresh:
                self.preview(email, rows.get(email.idempotency_key), why.get(email.idempotency_key))
            return
        rows = record(
            self.engine,
            [
                {
                    "profile_id": e.profile_id,
                    "template": e.template,
                    "version": e.version,
                    "subject": e.subject,
                    "idempotency_key": e.idempotency_key,
                    "status": "skipped" if why.get(e.idempotency_key) else "rendered",
                    "reason": why.get(e.idempotency_key),
                }
                for e in fresh
            ],
        )
        crash_point("deliver.recorded")
        for email in fresh:
            self.one(email, rows[email.idempotency_key], why.get(email.idempotency_key))

    def preview(self, email: RenderedEmail, row: MessageRow | None, refusal: str | None) -> None:
        key = email.idempotency_key
        if row is not None and row.status in FINAL:
            return self.outcome(key, "earlier", row.status)
        if row is not None and row.status in ("sending", "unknown") and not self.retry_unknown:
            return self.outcome(key, "unknown")
        if refusal:
            return self.outcome(key, "skipped", refusal)
        try:
            to_mime(email, self.sender)
        except ValueError as exc:
            return self.outcome(key, "failed", f"bad message: {_short(exc)}")
        self.outcome(key, "sent")

    def one(self, email: RenderedEmail, row: MessageRow, refusal: str | None) -> None:
        key = email.idempotency_key
        if row.status in FINAL:
            return self.outcome(key, "earlier", row.status)
        if row.status == "sending":
            found = self.recover(email, row)
            if found is None:
                return self.outcome(key, "earlier", "concurrent")
            row = found
            if row.status == "sent":
                self.report.recovered += 1
                return self.outcome(key, "sent")
        if row.status == "unknown" and not self.retry_unknown:
            return self.outcome(key, "unknown")
        if refusal:
            if row.status in OPEN and row.status != "skipped":
                change(self.engine, row, "skipped", reason=refusal)
            return self.outcome(key, "skipped", refusal)
        try:
            message = to_mime(email, self.sender)
        except ValueError as exc:
            reason = f"bad message: {_short(exc)}"
            change(self.engine, row, "failed", reason=reason)
            return self.outcome(key, "failed", reason)
        claimed = change(self.engine, row, "sending", count_attempt=True, via=self.via.name)
        if claimed is None:
            return self.outcome(key, "earlier", "concurrent")
        crash_point("deliver.claimed")
        self.hand_over(email, message, claimed)

    def hand_over(self, email: RenderedEmail, message: Any, claimed: MessageRow) -> None:
        key = email.idempotency_key
        assert self.via.send is not None
        tries = 1
        while True:
            try:
                provider_id = self.via.send(email, message, self.session)
            except TemporaryFailure as exc:
                if tries >= self.retry.attempts:
                    reason = f"{_short(exc)} (after {tries} attempts)"
                    finish(self.engine, claimed, "deferred", more_attempts=tries - 1, reason=reason)
                    return self.outcome(key, "deferred", _short(exc))
                self.sleep(self.retry.delay(tries, exc.retry_after))
                tries += 1
                continue
            except PermanentFailure as exc:
                finish(self.engine, claimed, "failed", more_attempts=tries - 1, reason=_short(exc))
                return self.outcome(key, "failed", _short(exc))
            except Exception as exc:
                # It may have reached the provider: never hand it over again by itself.
                reason = _short(exc)
                if not isinstance(exc, DeliveryInDoubt):
                    reason = f"{type(exc).__name__}: {reason}"
                finish(self.engine, claimed, "unknown", more_attempts=tries - 1, reason=reason)
                self.report.unknown.append(key)
                raise
            break
        crash_point("deliver.sent")
        finish(
            self.engine,
            claimed,
            "sent",
            more_attempts=tries - 1,
            provider_id=str(provider_id)[:255],
            reason=None,
        )
        crash_point("deliver.updated")
        self.outcome(key, "sent")

    def recover(self, email: RenderedEmail, row: MessageRow) -> MessageRow | None:
        """A message a killed run left ``sending``: sent (confirmed), back to be
        sent (certainly not delivered), or ``unknown``; None if another run moved it."""
        if row.via == self.via.name and self.via.confirm is not None:
            try:
                message = to_mime(email, self.sender)
            except ValueError:
                message = None
            if message is not None:
                provider_id = self.via.confirm(email, message, self.session)
                if provider_id is None:
                    return row  # not delivered: claimed again from ``sending``
                return change(
                    self.engine, row, "sent", provider_id=provider_id, sent_at=utcnow(), reason=None
                )
        return change(self.engine, row, "unknown", reason=IN_DOUBT)


def _sender(via: EspConnector, settings: Any) -> str:
    if via.send is None or via.sender is None:
        raise UsageError(f"the {via.name} connector does not send email")
    sender = via.sender(settings)
    try:
        sender_domain(sender)
    except ValueError:
        raise CommandError(
            f"{via.name}: the From address {sender!r} is not an email address"
        ) from None
    return sender


def deliver(
    engine: Engine,
    emails: Iterable[RenderedEmail],
    *,
    via: EspConnector,
    settings: Any,
    dry_run: bool = False,
    retry_unknown: bool = False,
    retry: RetryPolicy | None = None,
    on_message: OnMessage | None = None,
    sleep: Callable[[float], None] = time.sleep,
    report: DeliveryReport | None = None,
) -> DeliveryReport:
    """Deliver each email through ``via`` once per idempotency key.

    ``settings`` (core.Settings) holds the connector's section. Marketing
    email goes only to people the consent gate lets through; the rest are
    recorded ``skipped``. Temporary failures are retried with backoff
    (``retry``), then left ``deferred`` for a later run; permanent ones are
    ``failed`` for good. ``retry_unknown`` sends again messages that may have
    been delivered already (see the module's docstring). ``dry_run`` records
    and sends nothing and reports what would happen. ``report``: add to this
    report instead of a new one.
    """
    sender = _sender(via, settings)
    report = report or DeliveryReport(via=via.name)
    report.dry_run = dry_run
    # A dry run opens no connection: it must work without the service.
    with nullcontext() if dry_run else via.open(settings) as session:
        run = _Run(
            engine,
            via,
            sender,
            session,
            report,
            retry_unknown=retry_unknown,
            retry=retry or RetryPolicy(),
            sleep=sleep,
            on_message=on_message,
        )
        for batch in _batches(emails, CHUNK):
            run.chunk(batch)
    return report


def campaign_key(campaign: str, segment: str, template: str, profile_id: int) -> str:
    """The idempotency key of one person's email in a segment send."""
    return f"{campaign}:{segment}:{template}:{profile_id}"


def segment_members(conn: Connection, segment: str) -> list[int]:
    """The segment's members now (its last run), live profiles only, by id."""
    segment_id = conn.execute(sa.select(SEGMENTS.c.id).where(SEGMENTS.c.name == segment)).scalar()
    if segment_id is None:
        raise CommandError(f"no segment named {segment!r} (segflow segments run saves them)")
    return list(
        conn.execute(
            sa.select(MEMBERSHIPS.c.profile_id)
            .join(PROFILES, PROFILES.c.id == MEMBERSHIPS.c.profile_id)
            .where(MEMBERSHIPS.c.segment_id == segment_id, PROFILES.c.merged_into.is_(None))
            .order_by(MEMBERSHIPS.c.profile_id)
        ).scalars()
    )


def send(
    engine: Engine,
    template: str,
    segment: str,
    *,
    via: EspConnector,
    settings: Any,
    render: Render,
    dry_run: bool = False,
    campaign: str | None = None,
    retry_unknown: bool = False,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    actor: str | None = None,
) -> SendReport:
    """Send ``template`` to every member of ``segment`` through ``via``.

    A segment send is marketing: people the consent gate refuses are recorded
    ``skipped`` without being rendered. The key of each email is
    ``campaign:segment:template:profile id``, ``campaign`` defaulting to
    today's date (UTC): running it again the same day reaches only those not
    reached yet (new members, deferred ones); the next day it is a new send.
    ``render(conn, template, profile_id, key)`` renders one email;
    ``on_progress(done, total)`` follows the members. A send that is not a
    dry run is audited (``campaign.send`` by ``actor``) as it starts.
    """
    campaign = campaign or utcnow().date().isoformat()
    if not CAMPAIGN.match(campaign):
        raise UsageError(
            f"campaign {campaign!r}: letters, digits, '.', '_' and '-', at most 64 characters"
        )
    _sender(via, settings)  # before anything is recorded
    report = SendReport(via=via.name, template=template, segment=segment, campaign=campaign)
    report.dry_run = dry_run
    with engine.begin() as conn:
        members = segment_members(conn, segment)
        keys = {pid: campaign_key(campaign, segment, template, pid) for pid in members}
        rows = known(conn, keys.values())
        refusals = email_refusals(conn, members)
        if not dry_run:
            details = {"template": template, "segment": segment, "via": via.name,
                       "members": len(members), "retry_unknown": retry_unknown}  # fmt: skip
            audit.record(conn, actor, "campaign.send", campaign, details)
    report.members = total = len(members)
    done = 0

    def progressed(*_: Any) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    settled = FINAL if retry_unknown else FINAL | {"unknown"}
    to_render = []
    refused = []
    for pid in members:
        row = rows.get(keys[pid])
        if row is not None and row.status in settled:
            if row.status == "unknown":
                report.unknown.append(keys[pid])
            else:
                report.count("earlier", row.status)
            progressed()
        elif pid in refusals and (row is None or row.status != "sending"):
            # (A message a killed run left ``sending`` is settled by deliver first.)
            refused.append(pid)
        else:
            to_render.append(pid)
    if refused and not dry_run:
        recorded = record(
            engine,
            [
                {
                    "profile_id": pid,
                    "template": template,
                    "idempotency_key": keys[pid],
                    "status": "skipped",
                    "reason": refusals[pid],
                }
                for pid in refused
            ],
        )
        for pid in refused:
            row = recorded[keys[pid]]
            if row.status in OPEN and row.status != "skipped":
                change(engine, row, "skipped", reason=refusals[pid])
    for pid in refused:
        report.count("skipped", refusals[pid])
        progressed()

    def rendered() -> Iterator[RenderedEmail]:
        for batch in _batches(to_render, CHUNK):
            with engine.connect() as conn:
                emails = [render(conn, template, pid, keys[pid]) for pid in batch]
            for pid, email in zip(batch, emails, strict=True):
                # The key is the send's, whatever the renderer put there.
                yield replace(email, profile_id=pid, idempotency_key=keys[pid])

    deliver(
        engine,
        rendered(),
        via=via,
        settings=settings,
        dry_run=dry_run,
        retry_unknown=retry_unknown,
        retry=retry,
        on_message=progressed,
        sleep=sleep,
        report=report,
    )
    return report
