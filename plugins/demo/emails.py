"""The demo's emails: the cart and browse emails for a few demo people, rendered
and delivered through the outbox connector (files a marketer opens).

The demo's people signed up with their email, and most ticked the newsletter
box: those get email consent, the rest show the consent gate at work.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import (
    MEMBERSHIPS,
    MESSAGES,
    PROFILES,
    SEGMENTS,
    deliver,
    esp_connectors,
    render_email,
    set_consents,
)

# (template, the segment whose members get it): the seed's two cases.
DEMO_EMAILS = (
    ("cart_abandonment", "cart_abandoners"),
    ("browse_recommendations", "engaged_browsers"),
)
# One person in this many never opted in (deterministic by profile id).
NO_CONSENT_EVERY = 10


def grant_signup_consents(engine: Engine) -> int:
    """Email consent for the demo's people with an email, but one in ten."""
    with engine.connect() as conn:
        ids = conn.execute(
            sa.select(PROFILES.c.id).where(
                PROFILES.c.email.is_not(None), PROFILES.c.merged_into.is_(None)
            )
        ).scalars()
        opted_in = [pid for pid in ids if pid % NO_CONSENT_EVERY]
    return set_consents(engine, opted_in, "email_marketing", True, "demo signup")


def _members(engine: Engine, segment: str, limit: int) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(MEMBERSHIPS.c.profile_id)
                .join(SEGMENTS, SEGMENTS.c.id == MEMBERSHIPS.c.segment_id)
                .join(PROFILES, PROFILES.c.id == MEMBERSHIPS.c.profile_id)
                .where(
                    SEGMENTS.c.name == segment,
                    PROFILES.c.email.is_not(None),
                    PROFILES.c.id % NO_CONSENT_EVERY != 0,
                )
                .order_by(MEMBERSHIPS.c.profile_id)
                .limit(limit)
            ).scalars()
        )


def send_demo_emails(
    engine: Engine, settings: Any, as_of: datetime, *, per_template: int = 3
) -> dict[str, Any]:
    """Render each demo email for a few members of its segment and deliver them to
    the outbox folder; what was written, per template, and the delivery report."""
    outbox = esp_connectors()["outbox"]
    folder = Path(settings.plugin("esp.outbox").folder)
    written: dict[str, list[dict[str, Any]]] = {}
    emails = []
    with engine.connect() as conn:
        for template, segment in DEMO_EMAILS:
            for pid in _members(engine, segment, per_template):
                key = f"demo:{as_of:%Y-%m-%d}:{template}:{pid}"
                email = render_email(
                    conn, template, pid, as_of=as_of, message_key=key, settings=settings
                )
                emails.append(email)
                written.setdefault(template, []).append(
                    {"profile_id": pid, "to": email.to, "subject": email.subject, "key": key}
                )
    report = deliver(engine, emails, via=outbox, settings=settings)
    # The outbox's provider id is the .eml file's name; the .html is beside it.
    with engine.connect() as conn:
        files = dict(
            conn.execute(
                sa.select(MESSAGES.c.idempotency_key, MESSAGES.c.provider_id).where(
                    MESSAGES.c.idempotency_key.in_([e.idempotency_key for e in emails])
                )
            ).all()
        )
    for items in written.values():
        for item in items:
            name = files.get(item["key"])
            item["eml"] = str(folder / name) if name else None
            item["html"] = str(folder / name).removesuffix(".eml") + ".html" if name else None
    return {"folder": str(folder), "emails": written, "report": report.model_dump()}
