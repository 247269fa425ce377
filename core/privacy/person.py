"""Where a person's data is: every table, and how to select their rows.

A person is their live profile and every profile merged into it. A table
holds person data when it has a ``profile_id`` column (found on the
metadata, so a table added later is covered without a change here), or is
one of the few keyed otherwise (``PERSON_BY``). Every other table is named
in ``NOT_PERSONAL`` with why; a test holds the two lists to the metadata,
so a new table must be put in one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.db.models  # noqa: F401  (registers the tables on the metadata)
from core.audit import PERSON_ACTIONS
from core.db.tables import (
    AUDIT,
    BULK_LOAD_MOVES,
    IDENTITIES,
    PROFILES,
    WORKFLOW_HISTORY,
    WORKFLOW_STATES,
)
from core.profiles import ProfileNotFound, find_profile_id

# Tables that hold no one's data, and why (a reviewer checks the reason).
NOT_PERSONAL: dict[str, str] = {
    "api_keys": "keys of API clients, not of people",
    "segments": "segment definitions",
    "segment_runs": "counts per evaluation run",
    "segment_sizes": "counts per segment and time",
    "source_states": "cursors of sources and syncs (ids, offsets)",
    "bulk_loads": "a load in progress: host, pid, index names",
    "products": "the catalogue",
    "product_related": "product-to-product scores",
    "product_popularity": "best-sellers per recommender",
    "recommender_runs": "when each recommender last ran",
    "workflows": "workflow definitions",
    "workflow_triggers": "when each trigger last looked",
    "sync_runs": "counts per sync run",
    "source_activity": "newest event time and counts per source and event type",
    "ingest_counts": "stored, duplicate and rejected counts per day and source",
    "ingest_minimised": "counts of dropped or rewritten properties, by property name",
    "event_counts": "events per day and type, counted over everyone",
    "product_counts": "events per product, type and day, counted over everyone",
    "campaign_outcome_runs": "when the stored campaign outcomes were last refreshed",
    "alerts": "monitoring findings about segments, sources and campaigns",
    "suppressions": "keyed hashes of erased identifiers, which name no one",
    "privacy_deletions": "addresses to erase at connectors, kept until they confirm",
}


@dataclass(frozen=True)
class Person:
    """The profiles of one person (the live one first) and their workflow runs."""

    profile_ids: tuple[int, ...]
    run_ids: tuple[int, ...]
    user_id: str | None

    @property
    def audit_targets(self) -> list[str]:
        return [str(pid) for pid in self.profile_ids]


def _by_profile(table: sa.Table) -> Callable[[Person], sa.ColumnElement[bool]]:
    return lambda person: table.c.profile_id.in_(person.profile_ids)


# Person tables keyed by something other than a profile_id column.
PERSON_BY: dict[str, Callable[[Person], sa.ColumnElement[bool]]] = {
    "profiles": lambda p: PROFILES.c.id.in_(p.profile_ids),
    "workflow_history": lambda p: WORKFLOW_HISTORY.c.run_id.in_(p.run_ids),
    # Merges and consent changes name the profile they happened to; admin
    # records name keys, segments and campaigns, which may look like an id.
    "audit_log": lambda p: sa.and_(
        AUDIT.c.action.in_(PERSON_ACTIONS), AUDIT.c.target.in_(p.audit_targets)
    ),
    "bulk_load_moves": lambda p: sa.or_(
        BULK_LOAD_MOVES.c.from_profile.in_(p.profile_ids),
        BULK_LOAD_MOVES.c.to_profile.in_(p.profile_ids),
    ),
}


def person_tables() -> list[tuple[sa.Table, Callable[[Person], sa.ColumnElement[bool]]]]:
    """Every table holding person data with its row selector, parents first
    (deleting goes the other way)."""
    out = []
    for table in SQLModel.metadata.sorted_tables:
        if table.name in PERSON_BY:
            out.append((table, PERSON_BY[table.name]))
        elif "profile_id" in table.c:
            out.append((table, _by_profile(table)))
    return out


def find_person(conn: Connection, key: str) -> Person:
    """The person known by ``key``: a user id, else an anonymous id or an
    email (as ``segflow profile show``); ProfileNotFound otherwise."""
    live = find_profile_id(conn, key)
    ids = [live]
    frontier = [live]
    # Merge chains are compressed on merge, so this is one round in practice.
    while frontier:
        found = conn.execute(
            sa.select(PROFILES.c.id).where(PROFILES.c.merged_into.in_(frontier))
        ).scalars()
        frontier = [pid for pid in found if pid not in ids]
        ids += frontier
    runs = conn.execute(
        sa.select(WORKFLOW_STATES.c.id)
        .where(WORKFLOW_STATES.c.profile_id.in_(ids))
        .order_by(WORKFLOW_STATES.c.id)
    ).scalars()
    user_id = conn.execute(sa.select(PROFILES.c.user_id).where(PROFILES.c.id == live)).scalar()
    return Person(tuple(ids), tuple(runs), user_id)


def identifiers(conn: Connection, person: Person) -> set[tuple[str, str]]:
    """Every (kind, value) the person is known by: user ids, anonymous ids, emails."""
    found: set[tuple[str, str]] = set()
    rows = conn.execute(
        sa.select(PROFILES.c.user_id, PROFILES.c.email).where(PROFILES.c.id.in_(person.profile_ids))
    )
    for user_id, email in rows:
        if user_id:
            found.add(("user_id", user_id))
        if email:
            found.add(("email", email.strip().lower()))
    rows = conn.execute(
        sa.select(IDENTITIES.c.kind, IDENTITIES.c.value, IDENTITIES.c.sealed).where(
            IDENTITIES.c.profile_id.in_(person.profile_ids)
        )
    )
    for kind, value, sealed in rows:
        if sealed:  # an email stored as its blind index: the address is sealed beside it
            value = sealed
        if kind in ("user_id", "anonymous_id", "email"):
            found.add((kind, value.strip().lower() if kind == "email" else value))
    return found


__all__ = ["NOT_PERSONAL", "Person", "ProfileNotFound", "find_person", "person_tables"]
