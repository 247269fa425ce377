"""Sync to ESPs and CRMs: people, consent, segment membership and segment
events, only what changed, at each API's limits, nothing lost under faults.

client.py  the rate-limited, retrying HTTP client connectors call through
engine.py  wanted state, the diff against what the remote confirmed, the run
verify.py  reading the remote state back (verify) and the runs' status
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

__all__ = [
    "SyncClient",
    "SyncFailure",
    "KeyRefused",
    "SyncReport",
    "TransportFailure",
    "VerifyReport",
    "plan_sync",
    "run_sync",
    "sync_status",
    "verify_sync",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "SyncClient": "core.sync.client",
        "SyncFailure": "core.sync.client",
        "KeyRefused": "core.sync.client",
        "TransportFailure": "core.sync.client",
        "SyncReport": "core.sync.engine",
        "plan_sync": "core.sync.engine",
        "run_sync": "core.sync.engine",
        "VerifyReport": "core.sync.verify",
        "sync_status": "core.sync.verify",
        "verify_sync": "core.sync.verify",
    },
)

if TYPE_CHECKING:
    from core.sync.client import KeyRefused, SyncClient, SyncFailure, TransportFailure
    from core.sync.engine import SyncReport, plan_sync, run_sync
    from core.sync.verify import VerifyReport, sync_status, verify_sync
