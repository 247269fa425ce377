"""A rendered email as a MIME message: what every connector hands over.

multipart/alternative with the text part first and the HTML part last (the
one clients prefer), both quoted-printable: inlined HTML comes as very long
lines, which SMTP limits to 998 characters, and 7-bit content passes every
relay. The Message-ID is derived from the idempotency key and the sending
domain, so a retried send carries the same id and receivers can tell it is
the same message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, formataddr, parseaddr

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
    return _sender(sender)[1]


def _domain(address: str, sender: str) -> str:
    domain = address.rpartition("@")[2]
    if not address or "@" not in address or not domain:
        raise ValueError(f"not an email address: {sender!r}")
    return domain.lower()


@functools.lru_cache(maxsize=64)
def _sender(sender: str) -> tuple[str, str]:
    # A send has one sender for all its emails: parsed once.
    address = parseaddr(sender)[1]
    return address, _domain(address, sender)


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
    (no idempotency key, a bad address, a header with a line break, a reserved header).

    The message is written out as bytes directly and parsed back: the email
    package's own builder spends most of a send's time refolding headers and
    re-encoding parts through its header registry. A parsed message keeps its
    source lines, so ``as_bytes()`` gives them back unchanged. What the direct
    writer does not cover (an address whose mailbox is not ASCII) goes through
    the email package.
    """
    if not email.idempotency_key:
        raise ValueError("the email has no idempotency key")
    sender_address, domain = _sender(sender)
    to_address = envelope_address(email.to)
    headers = [
        ("From", sender),
        ("To", email.to),
        ("Subject", email.subject),
        ("Date", format_datetime(date or utcnow())),
        ("Message-ID", message_id(email.idempotency_key, domain)),
    ]
    for name, value in email.headers.items():
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} may not be set by the email")
        headers.append((name, value))
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} may not contain a linefeed or carriage return")
    if not (sender_address.isascii() and to_address.isascii()):
        return _package_mime(email, headers)
    return _assemble(email, headers)


ADDRESS_HEADERS = frozenset({"from", "to", "reply-to"})


def _header_value(name: str, value: str) -> str:
    """The value as it goes on the wire: ASCII, RFC 2047 encoded words where not."""
    if value.isascii() and len(name) + len(value) + 2 <= 998:
        return value
    if name.lower() in ADDRESS_HEADERS:
        value = formataddr(parseaddr(value), charset="utf-8")
        if value.isascii() and len(name) + len(value) + 2 <= 998:
            return value
    return _encoded_words(value)


def _encoded_words(value: str) -> str:
    """RFC 2047 base64 words of at most 75 characters, one a folded line, never
    splitting a character (the whitespace between words is not part of the text)."""
    raw = value.encode()
    words, start = [], 0
    while start < len(raw):
        end = min(start + 45, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:
            end -= 1  # back off to the start of a UTF-8 character
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode()}?=")
        start = end
    return "\r\n ".join(words)


def _qp_body(text: str) -> str:
    # Lines end in CRLF on the wire; b2a_qp keeps "\n" as the line break and
    # wraps at 76 characters with soft breaks, escaping "=" (so the boundary,
    # which starts with "==", can never occur in a part).
    body = text.replace("\r\n", "\n").replace("\r", "\n").encode()
    encoded = binascii.b2a_qp(body, istext=True).decode("ascii")
    return encoded if encoded.endswith("\n") else encoded + "\n"


class PreparedMessage(EmailMessage):
    """An ``EmailMessage`` that also holds its own wire form, written when it was built.

    ``as_bytes()`` returns that form while the message is as built (the email
    package's generator would produce the same bytes, far more slowly); once a
    connector changes a header or a part, it is generated afresh.
    """

    _wire: bytes | None = None
    _built: object = None

    def _shape(self) -> object:
        # The raw payloads: get_payload() parses each part's
        # Content-Transfer-Encoding header through the header registry, which
        # costs more than writing the message did.
        parts = self._payload if isinstance(self._payload, list) else []
        return (
            list(self.raw_items()),
            [(list(p.raw_items()), p._payload) for p in parts],
        )

    def _freeze(self, wire: bytes) -> None:
        self._wire, self._built = wire, self._shape()

    def as_bytes(self, unixfrom: bool = False, policy: Policy | None = None) -> bytes:
        unchanged = self._wire is not None and self._shape() == self._built
        if unchanged and not unixfrom and policy is None:
            return self._wire
        return super().as_bytes(unixfrom=unixfrom, policy=policy)

    def __bytes__(self) -> bytes:
        return self.as_bytes()


def _assemble(email: RenderedEmail, headers: list[tuple[str, str]]) -> EmailMessage:
    boundary = f"==segflow{secrets.token_hex(12)}=="
    top = [(name, _header_value(name, value)) for name, value in headers]
    top += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    msg = PreparedMessage(policy=WRITE_POLICY)
    for name, value in top:
        msg.set_raw(name, value)
    texts = []
    for subtype, body in (("plain", email.text), ("html", email.html)):
        part = EmailMessage(policy=WRITE_POLICY)
        part_headers = [
            ("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("Content-Transfer-Encoding", "quoted-printable"),
        ]
        for name, value in part_headers:
            part.set_raw(name, value)
        payload = _qp_body(body)
        part.set_payload(payload)
        msg.attach(part)
        texts.append(_header_block(part_headers) + payload.replace("\n", "\r\n"))
    # The generator's layout: the CRLF before each boundary belongs to it.
    wire = _header_block(top) + f"--{boundary}\r\n" + texts[0]
    wire += f"\r\n--{boundary}\r\n" + texts[1] + f"\r\n--{boundary}--\r\n"
    msg._freeze(wire.encode("ascii"))
    return msg


def _header_block(headers: list[tuple[str, str]]) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"


def _package_mime(email: RenderedEmail, headers: list[tuple[str, str]]) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    for name, value in headers:
        msg[name] = value
    msg.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # the top level says it once
    msg.policy = WRITE_POLICY
    return msg
