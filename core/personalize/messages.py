"""The messages table: every email from the decision to send it to the provider's
answer, one row per idempotency key.

Statuses, and what a later send with the same key does with each:

- ``rendered``: recorded, not handed to a provider yet -> sent;
- ``skipped``: refused by the consent gate (``reason`` says why) -> judged again;
- ``sending``: handed to the connector, its answer not recorded: found at the
  start of a send it is a run that died -> asked of the connector (``confirm``),
  else ``unknown``;
- ``sent``: the provider took it (``provider_id``) -> never sent again;
- ``deferred``: temporary failures until retries ran out -> tried again;
- ``failed``: a permanent failure (``reason``) -> never sent again;
- ``unknown``: may or may not have been delivered -> sent again only when asked;
- ``bounced``: the provider reported a bounce later -> never sent again.

Changes of status are compare-and-set on (status, attempts), so two runs that
meet on one message do not both hand it over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.tables import MESSAGES

STATUSES = ("rendered", "sending", "sent", "deferred", "failed", "unknown", "bounced", "skipped")
# Never handed over again under the same key.
FINAL = frozenset({"sent", "failed", "bounced"})
# Handed over when the gate lets them through.
OPEN = frozenset({"rendered", "skipped", "deferred"})
KEY_MAX_LENGTH = 255
CHUNK = 500


@dataclass(frozen=True)
class MessageRow:
    id: int
    status: str
    attempts: int
    via: str | None
    provider_id: str | None = None


_COLUMNS = (
    MESSAGES.c.idempotency_key,
    MESSAGES.c.id,
    MESSAGES.c.status,
    MESSAGES.c.attempts,
    MESSAGES.c.via,
    MESSAGES.c.provider_id,
)


def known(conn: Connection, keys: Iterable[str]) -> dict[str, MessageRow]:
    """The recorded messages among ``keys``, by key."""
    keys = list(keys)
    found: dict[str, MessageRow] = {}
    for start in range(0, len(keys), CHUNK):
        rows = conn.execute(
            sa.select(*_COLUMNS).where(MESSAGES.c.idempotency_key.in_(keys[start : start + CHUNK]))
        )
        for key, *rest in rows:
            found[key] = MessageRow(*rest)
    return found


def record(engine: Engine, entries: Sequence[dict[str, Any]]) -> dict[str, MessageRow]:
    """Insert the entries whose key is not recorded yet (others are left as they
    are) and return every entry's row by key.

    An entry has profile_id, template, version, subject, idempotency_key,
    status and optionally reason and via.
    """
    for key in (e["idempotency_key"] for e in entries):
        if not key or len(key) > KEY_MAX_LENGTH:
            raise ValueError(f"idempotency key {key!r}: 1 to {KEY_MAX_LENGTH} characters")
    for attempt in (1, 2):
        now = utcnow()
        try:
            with engine.begin() as conn:
                have = known(conn, (e["idempotency_key"] for e in entries))
                new = [
                    {"reason": None, "via": None, **e, "created_at": now, "updated_at": now}
                    for e in entries
                    if e["idempotency_key"] not in have
                ]
                if new:
                    conn.execute(MESSAGES.insert(), new)
                    have.update(known(conn, (e["idempotency_key"] for e in new)))
                return have
        except sa.exc.IntegrityError:
            # Another run recorded one of these keys in between: read it again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def change(
    engine: Engine, row: MessageRow, status: str, *, count_attempt: bool = False, **values: Any
) -> MessageRow | None:
    """Move ``row`` to ``status`` if nobody changed it since it was read: the new
    row, or None when another run got there first. ``count_attempt`` counts a
    hand-over to the provider; other keyword arguments are columns to set."""
    assert status in STATUSES
    attempts = row.attempts + 1 if count_attempt else row.attempts
    with engine.begin() as conn:
        done = conn.execute(
            MESSAGES.update()
            .where(
                MESSAGES.c.id == row.id,
                MESSAGES.c.status == row.status,
                MESSAGES.c.attempts == row.attempts,
            )
            .values(status=status, attempts=attempts, updated_at=utcnow(), **values)
        ).rowcount
    if not done:
        return None
    return MessageRow(
        row.id, status, attempts, values.get("via", row.via), values.get("provider_id")
    )


def finish(
    engine: Engine, row: MessageRow, status: str, *, more_attempts: int = 0, **values: Any
) -> None:
    """Record the provider's answer for a message this run handed over.

    Unconditional: what the provider did is the truth, even if another run
    marked the message ``unknown`` meanwhile. ``more_attempts``: hand-overs
    beyond the one counted when the message was claimed (retries).
    """
    assert status in STATUSES
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            MESSAGES.update()
            .where(MESSAGES.c.id == row.id)
            .values(
                status=status,
                attempts=MESSAGES.c.attempts + more_attempts,
                updated_at=now,
                **({"sent_at": now} if status == "sent" else {}),
                **values,
            )
        )


def status_counts(engine: Engine) -> dict[str, int]:
    """How many messages are in each status."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(MESSAGES.c.status, sa.func.count()).group_by(MESSAGES.c.status)
        )
        return {status: n for status, n in rows}
