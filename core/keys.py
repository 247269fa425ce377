"""API keys with scopes, stored hashed.

A key looks like ``sf_<prefix>_<secret>``; only its SHA-256 is stored (the
secret part is 32 random bytes, so a fast hash is as good as a slow one: there
is nothing to brute-force), plus the prefix so listings can tell keys apart.
The key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import audit
from core.db.models import utcnow
from core.db.tables import API_KEYS

SCOPES = ("events:write", "profiles:read", "admin")


class UnknownKey(LookupError):
    """No such key, or it was revoked (HTTP 401)."""


class ScopeError(PermissionError):
    """The key is valid but lacks the scope (HTTP 403)."""


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``segflow keys list --json`` (never the key itself)."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked": self.revoked_at is not None,
        }


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}"
            if unknown
            else f"give at least one scope ({', '.join(SCOPES)})"
        )
    return tuple(s for s in SCOPES if s in scopes)


def create_key(
    engine: Engine, name: str, scopes: list[str], actor: str | None = None
) -> tuple[KeyInfo, str]:
    """Store a new key; returns its info and the key itself (shown only now).
    ``actor``: who, for the audit record (default the process's)."""
    scopes_t = check_scopes(scopes)
    if not name.strip():
        raise ValueError("a key needs a name")
    prefix = secrets.token_hex(4)
    key = f"sf_{prefix}_{secrets.token_urlsafe(32)}"
    now = utcnow()
    with engine.begin() as conn:
        if conn.execute(sa.select(API_KEYS.c.id).where(API_KEYS.c.name == name)).first():
            raise ValueError(f"a key named {name!r} exists already")
        kid = conn.execute(
            API_KEYS.insert()
            .values(
                name=name, prefix=prefix, key_hash=_hash(key), scopes=list(scopes_t), created_at=now
            )
            .returning(API_KEYS.c.id)
        ).scalar_one()
        details = {"scopes": list(scopes_t), "prefix": prefix}
        audit.record(conn, actor, "key.create", name, details, at=now)
    return KeyInfo(kid, name, prefix, scopes_t, now, None, None), key


def _info(row) -> KeyInfo:
    return KeyInfo(
        row.id,
        row.name,
        row.prefix,
        tuple(row.scopes),
        row.created_at,
        row.last_used_at,
        row.revoked_at,
    )


# Keys verified recently: (database URL, key hash) -> (info, monotonic time of the check).
# Only valid keys are kept; a revocation in this process clears them at once.
_verified: dict[tuple[object, str], tuple[KeyInfo, float]] = {}
_verified_lock = threading.Lock()


def verify_key(engine: Engine, key: str, scope: str, max_age: float = 0.0) -> KeyInfo:
    """The key's info if it exists, is not revoked and has ``scope``.

    ``max_age``: seconds a successful check may be reused without reading the
    database (the API answers thousands of requests a second with a handful of
    keys); a key revoked by another process then stops working within that time.
    """
    digest = _hash(key or "")
    slot = (engine.url, digest)
    now = time.monotonic()
    cached = _verified.get(slot) if max_age > 0 else None
    if cached is not None and now - cached[1] < max_age:
        info = cached[0]
    else:
        with engine.connect() as conn:
            row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.key_hash == digest)).first()
        if row is None or row.revoked_at is not None:
            with _verified_lock:
                _verified.pop(slot, None)
            if row is None:
                raise UnknownKey("unknown API key")
            raise UnknownKey(f"API key {row.name!r} was revoked")
        info = _info(row)
        if max_age > 0:
            with _verified_lock:
                _verified[slot] = (info, now)
    if not info.allows(scope):
        raise ScopeError(f"API key {info.name!r} lacks the scope {scope!r}")
    return info


def touch(engine: Engine, key_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(API_KEYS.update().where(API_KEYS.c.id == key_id).values(last_used_at=utcnow()))


def list_keys(engine: Engine) -> list[KeyInfo]:
    with engine.connect() as conn:
        return [_info(r) for r in conn.execute(sa.select(API_KEYS).order_by(API_KEYS.c.name))]


def revoke_key(engine: Engine, name: str, actor: str | None = None) -> KeyInfo:
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.name == name)).first()
        if row is None:
            raise UnknownKey(f"no API key named {name!r}")
        conn.execute(API_KEYS.update().where(API_KEYS.c.id == row.id).values(revoked_at=now))
        audit.record(conn, actor, "key.revoke", name, {"prefix": row.prefix}, at=now)
        row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.id == row.id)).one()
    # After the commit: a check racing the revocation cannot re-cache the key.
    with _verified_lock:
        _verified.clear()
    return _info(row)


def rotate_key(engine: Engine, name: str, actor: str | None = None) -> tuple[KeyInfo, str]:
    """A new secret for the key ``name``, same name and scopes; the old one
    stops working at once. Returns the info and the new key (shown only now)."""
    prefix = secrets.token_hex(4)
    key = f"sf_{prefix}_{secrets.token_urlsafe(32)}"
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.name == name)).first()
        if row is None:
            raise UnknownKey(f"no API key named {name!r}")
        if row.revoked_at is not None:
            raise UnknownKey(f"API key {name!r} was revoked: create a new one")
        conn.execute(
            API_KEYS.update()
            .where(API_KEYS.c.id == row.id)
            .values(prefix=prefix, key_hash=_hash(key), created_at=now, last_used_at=None)
        )
        details = {"old_prefix": row.prefix, "prefix": prefix}
        audit.record(conn, actor, "key.rotate", name, details, at=now)
        row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.id == row.id)).one()
    with _verified_lock:
        _verified.clear()
    return _info(row), key
