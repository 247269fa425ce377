"""The audit log of admin actions: who did what to what, and when.

An admin action is one that changes who may do what (API keys), reads or
deletes one person's data on someone's behalf (export, erasure), or changes
what segflow does to people (definitions that go live, sends, syncs,
deployments). ``ACTIONS`` lists them; docs/audit.md says why each is there
and why the others (ingestion, segment and score runs) are not.

Each record is written by ``record`` in the transaction of the change it
describes, so an action that fails leaves none. A record names its target by
name (a key, a segment, a campaign) or, for one person, by the keyed hash the
erasure uses: ``record`` refuses details holding an email address, and the
callers never pass a user id.

Who (``actor``): ``key:<name>`` for the HTTP API (``key_actor``); otherwise
``SEGFLOW_ACTOR`` when set (a CI job, a Prefect deployment), else
``prefect:<flow run name>`` inside a Prefect flow run, else the OS user.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.tables import AUDIT

ACTOR_ENV = "SEGFLOW_ACTOR"

# The built-in admin actions -> what each records (plugins audit their own
# commands with their own ``area.verb`` names). Consent changes and merges (core.privacy.consent,
# core.ingestion.identity) are person records, not admin ones: their actor is
# the source the change came from.
ACTIONS: dict[str, str] = {
    "key.create": "an API key was created (target: its name; details: scopes, prefix)",
    "key.revoke": "an API key was revoked (target: its name)",
    "key.rotate": "an API key was given a new secret (target: its name; old and new prefix)",
    "privacy.export": "a person's data was exported (target: the keyed hash of their id)",
    "privacy.erase": "a person was erased (target: the keyed hash of their id; counts)",
    "privacy.purge": "events past their retention were deleted (no target; cutoffs, counts)",
    "segment.define": "a segment definition was saved as a new version (target: its name)",
    "segment.export": "a segment's members were exported as CSV (target: its name; rows, columns)",
    "workflow.define": "a workflow definition was saved as a new version (target: its name)",
    "campaign.send": "a segment send started (target: the campaign; template, segment, via)",
    "sync.run": "a sync to a connector started (target: the connector)",
    "deploy.serve": "the flows were served as Prefect deployments (target: the name)",
    "db.upgrade": "the schema was migrated (target: the new revision; from, to)",
}

# Consent and merge records name a profile id: they are the person's rows.
PERSON_ACTIONS = ("consent.grant", "consent.withdraw", "profile.merge")

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


class AuditRecord(BaseModel):
    """One row of ``segflow audit``."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]


def current_actor(environ: Mapping[str, str] | None = None) -> str:
    """Who runs this process: ``SEGFLOW_ACTOR``, the Prefect flow run, or the OS user."""
    env = os.environ if environ is None else environ
    if named := env.get(ACTOR_ENV, "").strip():
        return named[:255]
    if (run := _prefect_flow_run()) is not None:
        return f"prefect:{run}"[:255]
    try:
        return getpass.getuser()[:255]
    except (OSError, KeyError):  # no login name (a container's bare uid)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _prefect_flow_run() -> str | None:
    # Only when Prefect is loaded already: importing it here would load it for
    # every command, and a process without it runs no flow.
    context = sys.modules.get("prefect.context")
    if context is None:
        return None
    try:
        run = context.FlowRunContext.get()
    except Exception:  # an old or half-imported Prefect: fall back to the user
        return None
    flow_run = getattr(run, "flow_run", None)
    return getattr(flow_run, "name", None)


def key_actor(name: str) -> str:
    """The actor of an action made over the HTTP API with the key ``name``."""
    return f"key:{name}"[:255]


def _check_no_email(value: Any, path: str) -> None:
    if isinstance(value, str):
        if _EMAIL.search(value):
            raise ValueError(f"audit {path} holds an email address; name people by keyed hash")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_no_email(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_no_email(v, f"{path}[{i}]")


def record(
    conn: Connection,
    actor: str | None,
    action: str,
    target: str | None,
    details: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> int:
    """Write one audit record in ``conn``'s transaction. ``actor`` None: the
    process's (``current_actor``). ValueError when ``action`` is not an
    ``area.verb`` name, or the target or details hold an email address.
    Returns the record's id (a long action, a purge, updates its counts)."""
    if not _ACTION.match(action) or action in PERSON_ACTIONS:
        raise ValueError(
            f"audit action {action!r}: name it area.verb in lower case (key.create, "
            "myplugin.reset); consent and merge records are written by their own code"
        )
    body = dict(details or {})
    _check_no_email(target, "target")
    _check_no_email(body, "details")
    return conn.execute(
        AUDIT.insert()
        .values(
            at=at or utcnow(),
            actor=actor or current_actor(),
            action=action,
            target=target[:255] if target else target,
            details=body,
        )
        .returning(AUDIT.c.id)
    ).scalar_one()


def _like(pattern: str) -> tuple[str, bool]:
    """``key:*`` -> a LIKE prefix; anything else matches exactly."""
    if pattern.endswith("*"):
        stem = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return stem + "%", True
    return pattern, False


def _matches(column: sa.ColumnElement[Any], pattern: str) -> sa.ColumnElement[bool]:
    value, prefix = _like(pattern)
    return column.like(value, escape="\\") if prefix else column == value


def list_records(
    engine: Engine,
    *,
    since: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 50,
) -> list[AuditRecord]:
    """Audit records, newest first: the admin ones (all but consent and merge
    records), or with ``action`` those it names, person records included. ``actor`` and
    ``action`` match exactly, or by prefix when they end with ``*`` (``key:*``,
    ``consent.*``)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    query = sa.select(AUDIT)
    if not action:
        query = query.where(AUDIT.c.action.not_in(PERSON_ACTIONS))
    if since is not None:
        query = query.where(AUDIT.c.at >= since)
    if actor:
        query = query.where(_matches(AUDIT.c.actor, actor))
    if action:
        query = query.where(_matches(AUDIT.c.action, action))
    query = query.order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [
            AuditRecord(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                target=r.target,
                details=r.details or {},
            )
            for r in conn.execute(query)
        ]
