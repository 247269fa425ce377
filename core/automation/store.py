"""Workflow definitions in the database: one row per version.

Saving a definition whose digest differs from the latest version adds a
version; runs keep the version they entered on, unless the new one says
``migrate: true`` (then active runs move to it where their step exists in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core import audit
from core.automation.language import Registry, Workflow, WorkflowError, parse_workflow
from core.db.models import utcnow
from core.db.tables import WORKFLOW_HISTORY, WORKFLOW_STATES, WORKFLOWS


@dataclass(frozen=True)
class Saved:
    name: str
    version: int
    changed: bool
    migrated: int = 0


def save_workflows(conn: Connection, workflows: dict[str, Workflow]) -> dict[str, Saved]:
    """Store each workflow as a new version when it changed; migrate runs if asked."""
    latest = _latest(conn)
    out = {}
    for name, wf in workflows.items():
        version, digest = latest.get(name, (0, None))
        if digest == wf.digest:
            out[name] = Saved(name, version, False)
            continue
        version += 1
        conn.execute(
            WORKFLOWS.insert().values(
                name=name,
                version=version,
                digest=wf.digest,
                definition=wf.definition,
                created_at=utcnow(),
            )
        )
        migrated = _migrate(conn, wf, version) if wf.migrate and version > 1 else 0
        out[name] = Saved(name, version, True, migrated)
        details = {"version": version, "digest": wf.digest[:12], "migrated": migrated}
        audit.record(conn, None, "workflow.define", name, details)
    return out


def _latest(conn: Connection) -> dict[str, tuple[int, str]]:
    rows = conn.execute(
        sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version, WORKFLOWS.c.digest).order_by(
            WORKFLOWS.c.name, WORKFLOWS.c.version
        )
    ).all()
    return {name: (version, digest) for name, version, digest in rows}


def _migrate(conn: Connection, wf: Workflow, version: int) -> int:
    """Active runs move to ``version`` when their step exists in it."""
    rows = conn.execute(
        sa.select(WORKFLOW_STATES.c.id, WORKFLOW_STATES.c.step).where(
            WORKFLOW_STATES.c.workflow == wf.name,
            WORKFLOW_STATES.c.status == "active",
            WORKFLOW_STATES.c.version < version,
        )
    ).all()
    moved = [rid for rid, step in rows if step is None or step in wf.nodes]
    now = utcnow()
    for chunk in range(0, len(moved), 500):
        ids = moved[chunk : chunk + 500]
        conn.execute(
            WORKFLOW_STATES.update()
            .where(WORKFLOW_STATES.c.id.in_(ids))
            .values(version=version, updated_at=now)
        )
        conn.execute(
            WORKFLOW_HISTORY.insert(),
            [
                {"run_id": rid, "at": now, "what": "migrated", "detail": f"to version {version}"}
                for rid in ids
            ],
        )
    return len(moved)


# Parsed definitions by (name, version, digest, what the registry holds): the
# real-time hooks read the workflows on every ingested batch.
_PARSED: dict[tuple, Workflow] = {}
_PARSED_MAX = 1000


class Definitions:
    """Stored workflows, parsed once per (name, version) and registry."""

    def __init__(self, conn: Connection, reg: Registry) -> None:
        self.conn, self.reg = conn, reg
        self._versions = {
            (name, version): digest
            for name, version, digest in conn.execute(
                sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version, WORKFLOWS.c.digest)
            )
        }
        self.latest: dict[str, int] = {}
        for name, version in self._versions:
            self.latest[name] = max(version, self.latest.get(name, 0))
        self._registry = (
            reg.kinds.fingerprint(),
            tuple(sorted(reg.triggers)),
            tuple(sorted(reg.actions)),
        )

    def get(self, name: str, version: int) -> Workflow:
        key = (name, version, self._versions.get((name, version)), self._registry)
        if key not in _PARSED:
            definition = self.conn.execute(
                sa.select(WORKFLOWS.c.definition).where(
                    WORKFLOWS.c.name == name, WORKFLOWS.c.version == version
                )
            ).scalar()
            if definition is None:
                raise WorkflowError(f"no version {version} stored", workflow=name)
            if len(_PARSED) > _PARSED_MAX:
                _PARSED.clear()
            _PARSED[key] = parse_workflow(
                definition, self.reg, file=f"workflows row {name} v{version}"
            )
        return _PARSED[key]

    def current(self) -> dict[str, Workflow]:
        return {name: self.get(name, version) for name, version in self.latest.items()}
