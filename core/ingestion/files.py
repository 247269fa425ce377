"""Import files through the file sources plugins register."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from core.ingestion.pipeline import ingest
from core.ingestion.report import IngestReport
from core.plugins import event_sources
from core.types import EventSource, ReadOptions


class ImportUsageError(ValueError):
    """The import was asked wrongly (missing file, unknown format); nothing was read."""


def file_sources() -> dict[str, EventSource]:
    return {name: s for name, s in event_sources().items() if s.read is not None}


def source_for(path: Path, fmt: str | None = None) -> EventSource:
    sources = file_sources()
    if fmt:
        if fmt not in sources:
            raise ImportUsageError(
                f"unknown format {fmt!r} (available: {', '.join(sorted(sources)) or 'none'})"
            )
        return sources[fmt]
    name = path.name.removesuffix(".gz")
    for source in sources.values():
        if any(name.endswith(suffix) for suffix in source.suffixes):
            return source
    known = sorted(s for src in sources.values() for s in src.suffixes)
    raise ImportUsageError(
        f"{path}: cannot tell the format from the name (known: {', '.join(known)}); pass --format"
    )


def import_file(
    engine: Engine,
    path: Path,
    options: ReadOptions | None = None,
    *,
    fmt: str | None = None,
    batch_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    notify: bool = True,
    bulk: bool = False,
) -> IngestReport:
    """Read ``path`` with the file source for its name (or ``fmt``) and ingest
    it; ``bulk``: as for ``ingest`` (``estimate_records`` helps choose)."""
    options = options or ReadOptions()
    if not path.is_file():
        raise ImportUsageError(f"{path}: no such file")
    source = source_for(path, fmt)
    return ingest(
        engine,
        source.read(path, options),
        source=f"file:{source.name}",
        batch_size=batch_size,
        default_tz=options.timezone,
        ts_format=options.ts_format,
        on_progress=on_progress,
        notify=notify,
        bulk=bulk,
    )


def estimate_records(path: Path, sample_bytes: int = 1 << 20) -> int:
    """Roughly how many lines a file holds, from the line length of its start."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(sample_bytes)
    lines = head.count(b"\n")
    if not lines:
        return 1
    if len(head) < sample_bytes:
        return lines
    # gzip keeps no reliable uncompressed size; text compresses about 5:1.
    size = path.stat().st_size * (5 if path.suffix == ".gz" else 1)
    return int(size / (len(head) / lines))
