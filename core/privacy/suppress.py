"""The suppression list: keyed hashes of an erased person's identifiers.

A hash is HMAC-SHA256 under the settings' ``secret_key`` of ``kind:value``
(``user_id``, ``anonymous_id``, ``email``; emails trimmed and lower-cased),
so the list names no one: without the key, holding the database does not
tell whether an address was erased. Ingestion looks up a batch's
identifiers in one query and drops the events that name a suppressed one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from core.db.sql import fetch_in

KINDS = ("user_id", "anonymous_id", "email")
REASON = "an erased person (suppression list): not stored"


def normalise(kind: str, value: str) -> str:
    return value.strip().lower() if kind == "email" else value


def keyed_hash(secret: str, kind: str, value: str) -> str:
    message = f"{kind}:{normalise(kind, value)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def secret_key() -> str | None:
    """The key the suppression hashes are made with, as the commands read it:
    ``SEGFLOW_SECRET_KEY``, else ``secret_key`` in segflow.toml."""
    return os.environ.get("SEGFLOW_SECRET_KEY") or _file_key()


@functools.cache
def _file_key() -> str | None:
    from core.config import load_settings

    try:
        return load_settings().secret_key
    except Exception:  # noqa: BLE001 - a bad file fails the command itself, not this
        return None


def suppressed(
    conn: Connection, identifiers: Iterable[tuple[str, str]], secret: str | None
) -> set[tuple[str, str]]:
    """Which of the (kind, value) identifiers are on the suppression list: one query."""
    if secret is None:
        return set()
    by_hash = {keyed_hash(secret, kind, value): (kind, value) for kind, value in identifiers}
    if not by_hash:
        return set()
    rows = fetch_in(conn, "SELECT hash FROM suppressions WHERE 1 = 1", "hash", list(by_hash))
    return {by_hash[h] for (h,) in rows}
