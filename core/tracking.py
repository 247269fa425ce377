"""Email tracking: the open pixel, signed click links and one-click unsubscribe.

Tokens are ``<payload>.<signature>``: the payload is base64url JSON, the
signature an HMAC-SHA256 over a purpose tag and the payload, keyed with the
installation's secret. The purpose is part of what is signed, so an open token
is never accepted as a click or unsubscribe token. A click token carries its
destination inside the signed payload: the redirect goes only where the
sender's template pointed, so links are never open redirects. Templates call
these functions; they never build tracking URLs by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

# The classic transparent 1x1 GIF: 43 bytes.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
PURPOSES = ("open", "click", "unsubscribe")


class BadToken(ValueError):
    """The token is malformed, tampered with, or for another purpose."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(purpose: str, payload: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), f"segflow:{purpose}:{payload}".encode(), hashlib.sha256)
    return _b64(mac.digest())


def sign(purpose: str, data: dict[str, Any], secret: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    if not secret:
        raise ValueError("tracking needs a secret key (secret_key in segflow.toml)")
    payload = _b64(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    return f"{payload}.{_signature(purpose, payload, secret)}"


def verify(purpose: str, token: str, secret: str) -> dict[str, Any]:
    payload, sep, signature = (token or "").partition(".")
    if not sep or not payload or not signature:
        raise BadToken("malformed token")
    if not hmac.compare_digest(signature, _signature(purpose, payload, secret)):
        raise BadToken("bad signature")
    try:
        data = orjson.loads(_unb64(payload))
    except (ValueError, orjson.JSONDecodeError):
        raise BadToken("malformed payload") from None
    if not isinstance(data, dict):
        raise BadToken("malformed payload")
    return data


def _recipient(
    message_id: str, user_id: str | None, email: str | None, campaign: str | None
) -> dict[str, Any]:
    if not (user_id or email):
        raise ValueError("a tracked message needs the recipient's user_id or email")
    data = {"m": message_id, "u": user_id, "e": email, "c": campaign}
    return {k: v for k, v in data.items() if v is not None}


def open_url(
    base_url: str,
    secret: str,
    *,
    message_id: str,
    user_id: str | None = None,
    email: str | None = None,
    campaign: str | None = None,
) -> str:
    token = sign("open", _recipient(message_id, user_id, email, campaign), secret)
    return f"{base_url.rstrip('/')}/t/o/{token}.gif"


def click_url(
    base_url: str,
    secret: str,
    destination: str,
    *,
    message_id: str,
    link: int,
    user_id: str | None = None,
    email: str | None = None,
    campaign: str | None = None,
) -> str:
    parts = urlsplit(destination)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"click destination must be an http(s) URL, not {destination!r}")
    data = _recipient(message_id, user_id, email, campaign) | {"l": link, "d": destination}
    return f"{base_url.rstrip('/')}/t/c/{sign('click', data, secret)}"


def unsubscribe_url(
    base_url: str,
    secret: str,
    *,
    message_id: str,
    user_id: str | None = None,
    email: str | None = None,
    campaign: str | None = None,
) -> str:
    token = sign("unsubscribe", _recipient(message_id, user_id, email, campaign), secret)
    return f"{base_url.rstrip('/')}/t/u/{token}"


def tracking_event(
    kind: str, data: dict[str, Any], at: datetime, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The canonical event a verified token records (email_open, email_click, unsubscribe).

    Each open or click is its own event (people open mail twice); the
    message_id ties it to the token and the second it happened, so a retried
    request within that second is a duplicate.
    """
    types = {"open": "email_open", "click": "email_click", "unsubscribe": "unsubscribe"}
    properties = {"message": data["m"], **(extra or {})}
    if kind == "click":
        properties |= {"link": data["l"], "destination": data["d"]}
    event = {
        "type": types[kind],
        "user_id": data.get("u"),
        "email": data.get("e"),
        "campaign": data.get("c"),
        "ts": at.isoformat(),
        "url": data.get("d"),
        "properties": properties,
        "message_id": f"{types[kind]}:{data['m']}:{data.get('l', '')}:{int(at.timestamp())}",
    }
    return {k: v for k, v in event.items() if v is not None}
