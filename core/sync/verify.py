"""Reading a target's remote state back and comparing it with segflow's
(``segflow sync verify``), and what the runs so far did (``segflow sync status``).

The wanted state is the one a run would send: every person in a synced
segment, or synced before, with their segments and email consent. A
difference is a person missing remotely, in other segments there, subscribed
there when segflow has no consent (or the other way round), or a remote
member of a synced segment segflow does not put there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from core.db.tables import SYNC_RUNS, SYNC_STATES
from core.sync.engine import _api, plan_sync, read_remote
from core.types import EspConnector, SyncTarget


class Difference(BaseModel):
    email: str
    what: str  # missing | segments | subscribed | unexpected
    segflow: Any = None
    remote: Any = None


class VerifyReport(BaseModel):
    connector: str
    people: int = 0
    remote: int = 0
    differences: list[Difference] = []

    @property
    def ok(self) -> bool:
        return not self.differences


def verify_sync(
    engine: Engine, target: SyncTarget, connector: EspConnector, *, transport: Any = None
) -> VerifyReport:
    """Every difference between ``target``'s remote state and segflow's."""
    api = _api(target, connector)
    with engine.connect() as conn:
        plan = plan_sync(conn, target)
    remote = asyncio.run(read_remote(target, api, transport))
    report = VerifyReport(connector=target.name, people=len(plan.wanted), remote=len(remote))
    diffs = report.differences
    expected = {w.person.email: w for w in plan.wanted.values()}
    synced = frozenset(target.segments)
    for email, wanted in sorted(expected.items()):
        there = remote.get(email)
        want_segments = sorted(wanted.segments)
        subscribed = wanted.person.subscribed is True
        if there is None:
            if want_segments or subscribed:
                diffs.append(Difference(email=email, what="missing", segflow=want_segments))
            continue
        have = sorted(there.segments & synced)
        if have != want_segments:
            diffs.append(
                Difference(email=email, what="segments", segflow=want_segments, remote=have)
            )
        if subscribed != (there.subscribed is True):
            diffs.append(
                Difference(
                    email=email,
                    what="subscribed",
                    segflow=wanted.person.subscribed,
                    remote=there.subscribed,
                )
            )
    for email, there in sorted(remote.items()):
        if email not in expected and there.segments & synced:
            diffs.append(
                Difference(email=email, what="unexpected", remote=sorted(there.segments & synced))
            )
    return report


def sync_status(engine: Engine) -> list[dict[str, Any]]:
    """Per connector that ever ran: people by state (ok, failed and retry by
    reason) and the last run's counts."""
    with engine.connect() as conn:
        by_state = conn.execute(
            sa.select(
                SYNC_STATES.c.connector, SYNC_STATES.c.status, SYNC_STATES.c.reason, sa.func.count()
            ).group_by(SYNC_STATES.c.connector, SYNC_STATES.c.status, SYNC_STATES.c.reason)
        ).all()
        last_ids = (
            sa.select(sa.func.max(SYNC_RUNS.c.id)).group_by(SYNC_RUNS.c.connector).scalar_subquery()
        )
        runs = conn.execute(sa.select(SYNC_RUNS).where(SYNC_RUNS.c.id.in_(last_ids))).mappings()
        last = {r["connector"]: dict(r) for r in runs}
    out: dict[str, dict[str, Any]] = {}
    for name, status, reason, n in by_state:
        entry = out.setdefault(name, {"connector": name, "ok": 0, "failed": {}, "retry": {}})
        if status == "ok":
            entry["ok"] += n
        else:
            entry[status][reason or status] = entry[status].get(reason or status, 0) + n
    for name, run in last.items():
        entry = out.setdefault(name, {"connector": name, "ok": 0, "failed": {}, "retry": {}})
        entry["last_run"] = {
            "status": run["status"],
            "started_at": run["started_at"].isoformat(),
            "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
            "counts": run["counts"],
            "error": run["error"],
        }
    return [out[name] for name in sorted(out)]
