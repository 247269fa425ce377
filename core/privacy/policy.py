"""The consent policy at ingestion: what happens to the events of people
without ``tracking`` consent, and consent changes carried by events.

``[privacy.consent]`` in segflow.toml (``ConsentPolicy``)::

    [segflow.privacy.consent]
    tracking = "required"        # "off" (default) | "required" | "anonymise"
    anonymous_properties = ["plan"]

- ``off``: events are kept as they come (consent is still recorded and the
  email gate still applies).
- ``required``: an event of someone whose latest ``tracking`` decision is not
  a grant (none, or withdrawn) is dropped and counted as rejected.
- ``anonymise``: such an event is stored on one shared anonymous profile
  (``ANONYMOUS_ID``) with no user id, email or session, its URL cut to scheme,
  host and path, and only ``anonymous_properties`` kept: counts per type and
  product survive, no person does.

Identify calls, unsubscribes and consent events always pass: they are how a
person is known and how their decisions arrive. A batch costs one lookup
(its identifiers' tracking decisions), and a grant earlier in the same batch
counts for the events after it.

Consent changes as events: an identify whose ``traits.consent`` is an object
``{<purpose>: true|false, ..., "version": "v3", "source": "signup"}`` records
each purpose's decision for the person, at the event's time.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from sqlalchemy.engine import Connection

from core.db.sql import fetch_in
from core.ingestion.plain import STORED_JSON
from core.privacy.consent import (
    ALIASES,
    PURPOSES,
    TRACKING,
    UNSUBSCRIBE_EVENT,
    purpose_name,
    record_consent,
)
from core.privacy.settings import ConsentPolicy

ANONYMOUS_ID = "segflow:anonymous"
CONSENT_EVENT = "consent"
# Events that carry identity or consent itself: never held back by the policy.
ALWAYS_KEPT = frozenset({"identify", UNSUBSCRIBE_EVENT, CONSENT_EVENT})
DROPPED = "no tracking consent ([privacy.consent] tracking = required): not stored"
TRAIT = "consent"
# Keys of traits.consent that are not purposes.
META_KEYS = ("version", "source")


_cached: tuple[tuple[str, float], ConsentPolicy] | None = None


def current_policy() -> ConsentPolicy:
    """The policy in the settings file the commands read (SEGFLOW_CONFIG or
    ./segflow.toml), re-read when the file changes; the default without one."""
    global _cached
    path = Path(os.environ.get("SEGFLOW_CONFIG", "segflow.toml"))
    try:
        stamp = (str(path.resolve()), path.stat().st_mtime)
    except OSError:
        return ConsentPolicy()
    if _cached is not None and _cached[0] == stamp:
        return _cached[1]
    from core.config import load_settings

    policy = load_settings().privacy.consent
    _cached = (stamp, policy)
    return policy


class ConsentChange(BaseModel):
    purposes: dict[str, bool]
    version: str | None = None
    source: str | None = None


def consent_change(record: dict[str, Any]) -> ConsentChange | str | None:
    """The consent decisions an event carries (identify ``traits.consent``, a
    ``consent`` event's properties), None if none, or why they are unreadable."""
    if record["type"] == CONSENT_EVENT:
        raw: Any = record.get("properties") or {}
        where = "properties"
    else:
        traits = record.get("traits")
        if record["type"] != "identify" or not traits or TRAIT not in traits:
            return None
        raw, where = traits[TRAIT], f"traits.{TRAIT}"
    if not isinstance(raw, dict):
        return f"{where}: expected an object of purposes, got {type(raw).__name__}"
    purposes: dict[str, bool] = {}
    for key, value in raw.items():
        if key in META_KEYS:
            if value is not None and not isinstance(value, str):
                return f"{where}.{key}: expected a string"
            continue
        name = purpose_name(key)
        if name not in PURPOSES:
            known = ", ".join((*PURPOSES, *ALIASES))
            return f"{where}.{key}: unknown purpose (purposes: {known})"
        if not isinstance(value, bool):
            return f"{where}.{key}: expected true or false, got {value!r}"
        purposes[name] = value
    if not purposes:
        return f"{where}: names no purpose ({', '.join(PURPOSES)})"
    return ConsentChange(purposes=purposes, version=raw.get("version"), source=raw.get("source"))


def identifiers(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (kind, record[kind]) for kind in ("user_id", "anonymous_id", "email") if record.get(kind)
    ]


def tracking_decisions(
    conn: Connection, ids: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[datetime, bool]]:
    """Each identifier's latest tracking decision: one query for the batch."""
    rows = fetch_in(
        conn,
        "SELECT i.kind, i.value, c.granted, c.updated_at FROM identities i "
        "JOIN consents c ON c.profile_id = i.profile_id WHERE c.purpose = ?",
        "i.value",
        sorted({value for _, value in ids}),
        (TRACKING,),
    )
    found: dict[tuple[str, str], tuple[datetime, bool]] = {}
    for kind, value, granted, at in rows:
        key = (kind, value)
        if key in ids and (key not in found or at > found[key][0]):
            found[key] = (at, bool(granted))
    return found


def untracked(
    conn: Connection,
    policy: ConsentPolicy,
    records: list[dict[str, Any]],
    changes: list[ConsentChange | None],
) -> list[bool]:
    """Per record: True when the policy holds it back (no tracking consent)."""
    if policy.tracking == "off":
        return [False] * len(records)
    named = [identifiers(r) for r in records]
    stored = tracking_decisions(conn, {i for ids in named for i in ids})
    decided = {key: granted for key, (_, granted) in stored.items()}
    out: list[bool] = []
    for r, ids, change in zip(records, named, changes, strict=True):
        if change is not None and TRACKING in change.purposes:
            # Later events of this batch see the decision at once.
            decided.update(dict.fromkeys(ids, change.purposes[TRACKING]))
        if r["type"] in ALWAYS_KEPT:
            out.append(False)
            continue
        out.append(not any(decided.get(i) for i in ids))
    return out


def anonymise(record: dict[str, Any], keep: list[str]) -> None:
    """Strip a record of everything naming the person, in place."""
    record["user_id"] = None
    record["email"] = None
    record["anonymous_id"] = ANONYMOUS_ID
    record["session_id"] = None
    url = record.get("url")
    if url:
        parts = urlsplit(url)
        record["url"] = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    props = record.get("properties") or {}
    record["properties"] = {k: v for k, v in props.items() if k in keep}
    # The plain path's copy of the properties as stored, now out of date.
    record.pop(STORED_JSON, None)


def strip_trait(record: dict[str, Any]) -> None:
    """Consent is kept in the consents table, not among the profile's attributes."""
    traits = record.get("traits")
    if traits and TRAIT in traits:
        record["traits"] = {k: v for k, v in traits.items() if k != TRAIT}
        record.pop(STORED_JSON, None)


def record_changes(
    conn: Connection,
    records: list[dict[str, Any]],
    changes: list[ConsentChange | None],
    pids: list[int],
    source: str,
    now: datetime,
) -> int:
    """Write the consent decisions the stored events carry; how many were written."""
    written = 0
    for r, change, pid in zip(records, changes, pids, strict=True):
        if change is None:
            continue
        at = r.get("ts") or now
        for purpose, granted in change.purposes.items():
            written += record_consent(
                conn, pid, purpose, granted, change.source or source, change.version, at
            )
    return written
