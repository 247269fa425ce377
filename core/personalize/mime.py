"""A rendered email as a MIME message: what every connector hands over.

multipart/alternative with the text part first and the HTML part last (the
one clients prefer), both quoted-printable: inlined HTML comes as very long
lines, which SMTP limits to 998 characters, and 7-bit content passes every
relay. The Message-ID is derived from the idempotency key and the sending
domain, so a retried send carries the same id and receivers can tell it is
the same message.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from core.db.models import utcnow
from core.types import RenderedEmail

# Set here from the email's own fields; a template's headers may not replace them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Sender",
        "Return-Path",
    )
)
HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable, no colon
# Written out with lines up to RFC 5322's limit: a List-Unsubscribe URL (a
# signed token, no space to fold at) is longer than SMTP's 78, and the email
# package would otherwise rewrite it as RFC 2047 encoded words, which mail
# clients do not decode there, so one-click unsubscribe would break. The
# parts' bodies are encoded before, at 76 characters a line.
WRITE_POLICY = policy.SMTP.clone(max_line_length=998)


def sender_domain(sender: str) -> str:
    """The domain of a From address (``Shop <news@shop.example>`` -> ``shop.example``)."""
    _, address = parseaddr(sender)
    domain = address.rpartition("@")[2]
    if not address or "@" not in address or not domain:
        raise ValueError(f"not an email address: {sender!r}")
    return domain.lower()


def envelope_address(value: str) -> str:
    """The bare address of a header value (``Ann <ann@x.io>`` -> ``ann@x.io``)."""
    _, address = parseaddr(value)
    if "@" not in address:
        raise ValueError(f"not an email address: {value!r}")
    return address


def message_id(idempotency_key: str, domain: str) -> str:
    """``<hash of the key@domain>``: stable across retries, reveals nothing of the key."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def to_mime(email: RenderedEmail, sender: str, *, date: datetime | None = None) -> EmailMessage:
    """The MIME message for ``email`` from ``sender``; ValueError naming what is wrong
    (no idempotency key, a bad address, a header with a line break, a reserved header)."""
    if not email.idempotency_key:
        raise ValueError("the email has no idempotency key")
    domain = sender_domain(sender)
    envelope_address(email.to)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(date or utcnow())
    msg["Message-ID"] = message_id(email.idempotency_key, domain)
    for name, value in email.headers.items():
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} may not be set by the email")
        msg[name] = value
    msg.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # the top level says it once
    msg.policy = WRITE_POLICY
    return msg
