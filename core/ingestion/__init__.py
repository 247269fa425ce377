"""Ingestion: from records any source reads to stored, deduplicated events
on resolved profiles.

- ``schema``: the canonical ``Event``, ``validate``, ``parse_timezone``,
  ``describe_error``; ``plain``: the fast path for records already in stored form;
- ``pipeline``: ``ingest`` and its batch writer; ``batch``: one batch's
  dedupe, identity resolution and insert; ``writers``: the INSERT per backend;
- ``bulk``: crash-safe bulk loads (index deferral, queued merge moves) and
  ``finish_interrupted_loads``; ``process``: ``bulk_import_scope`` for commands;
- ``commits``: group commit for the API; ``files`` and ``mapping``: file
  imports; ``identity``: identity resolution; ``report``: what a call reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

# Exported name -> module, imported on first access: ``from core.ingestion.mapping
# import RowMapper`` (a file source plugin at load time) must not load the writers,
# bulk loads and SQLAlchemy models with it.
_LAZY = {
    "finish_interrupted_loads": "core.ingestion.bulk",
    "worth_bulk_loading": "core.ingestion.bulk",
    "CommitterClosed": "core.ingestion.commits",
    "GroupCommitter": "core.ingestion.commits",
    "ImportUsageError": "core.ingestion.files",
    "estimate_records": "core.ingestion.files",
    "import_file": "core.ingestion.files",
    "MappingError": "core.ingestion.mapping",
    "ingest": "core.ingestion.pipeline",
    "bulk_import_scope": "core.ingestion.process",
    "IngestError": "core.ingestion.report",
    "IngestReport": "core.ingestion.report",
    "Rejection": "core.ingestion.report",
    "IDENTIFY": "core.ingestion.schema",
    "Event": "core.ingestion.schema",
    "describe_error": "core.ingestion.schema",
    "parse_timezone": "core.ingestion.schema",
    "validate": "core.ingestion.schema",
}

__all__ = [
    "IDENTIFY",
    "CommitterClosed",
    "Event",
    "GroupCommitter",
    "ImportUsageError",
    "IngestError",
    "IngestReport",
    "MappingError",
    "Rejection",
    "bulk_import_scope",
    "describe_error",
    "estimate_records",
    "finish_interrupted_loads",
    "import_file",
    "ingest",
    "parse_timezone",
    "validate",
    "worth_bulk_loading",
]


__getattr__ = lazy_exports(__name__, _LAZY)


if TYPE_CHECKING:
    from core.ingestion.bulk import finish_interrupted_loads, worth_bulk_loading
    from core.ingestion.commits import CommitterClosed, GroupCommitter
    from core.ingestion.files import ImportUsageError, estimate_records, import_file
    from core.ingestion.mapping import MappingError
    from core.ingestion.pipeline import ingest
    from core.ingestion.process import bulk_import_scope
    from core.ingestion.report import IngestError, IngestReport, Rejection
    from core.ingestion.schema import IDENTIFY, Event, describe_error, parse_timezone, validate
