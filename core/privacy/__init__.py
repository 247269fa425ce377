"""Privacy: access (export) and erasure of one person across every table and
connector, and the suppression list that keeps an erased person out.

person.py      which tables hold person data and how a person's rows are found
export.py      everything held about a person, as JSON (``segflow privacy export``)
erase.py       erasure: rows, suppression, audit, connector deletions until confirmed
purge.py       retention: events past their type's period deleted (``segflow privacy purge``)
suppress.py    keyed hashes of erased identifiers; ingestion drops their events
connectors.py  the configured connectors an erasure is sent to

The consent gate is in ``core.consents``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

__all__ = [
    "ErasureReport",
    "deleting_connectors",
    "erase_everywhere",
    "erase_and_send",
    "erase_person",
    "export_audited",
    "export_person",
    "pending_deletions",
    "purge_events",
    "PurgeReport",
    "send_deletions",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "ErasureReport": "core.privacy.erase",
        "erase_everywhere": "core.privacy.erase",
        "erase_and_send": "core.privacy.erase",
        "erase_person": "core.privacy.erase",
        "pending_deletions": "core.privacy.erase",
        "send_deletions": "core.privacy.erase",
        "export_person": "core.privacy.export",
        "export_audited": "core.privacy.export",
        "purge_events": "core.privacy.purge",
        "PurgeReport": "core.privacy.purge",
        "deleting_connectors": "core.privacy.connectors",
    },
)

if TYPE_CHECKING:
    from core.privacy.connectors import deleting_connectors
    from core.privacy.erase import (
        ErasureReport,
        erase_and_send,
        erase_everywhere,
        erase_person,
        pending_deletions,
        send_deletions,
    )
    from core.privacy.export import export_audited, export_person
    from core.privacy.purge import PurgeReport, purge_events
