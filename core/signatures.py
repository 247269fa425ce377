"""Timestamped HMAC signatures (Stripe's scheme): ``t=<unix time>,v1=<hex>``,
the HMAC-SHA256 of ``"<t>." + body``, refused outside a tolerance so a captured
request cannot be replayed later. Stripe's webhooks and segflow's CMP webhook
use it."""

from __future__ import annotations

import hashlib
import hmac
import time


class SignatureError(ValueError):
    """The request is not signed with the secret (or was signed too long ago)."""


def timestamped_signature(body: bytes, secret: str, at: int) -> str:
    """The header value that signs ``body`` at unix time ``at``."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify_timestamped(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    name: str,
    tolerance: int,
    now: float | None = None,
) -> None:
    """SignatureError, naming the header ``name``, unless ``header`` signs ``body``
    with ``secret`` (any of its ``v1`` values) within ``tolerance`` seconds."""
    if not header:
        raise SignatureError(f"missing {name}")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        at = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{name} has no timestamp (t=)") from None
    if abs((time.time() if now is None else now) - at) > tolerance:
        raise SignatureError(f"{name} timestamp outside the {tolerance} s tolerance")
    expected = timestamped_signature(body, secret, at).partition(",v1=")[2]
    if not any(hmac.compare_digest(v, expected) for v in parts.get("v1", [])):
        raise SignatureError(f"bad {name}")
