"""Import files through the file sources plugins register."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy.engine import Engine

from core.ingestion.pipeline import ingest
from core.ingestion.report import IngestReport
from core.types import EventSource, ReadOptions, StoredEvent


class ImportUsageError(ValueError):
    """The import was asked wrongly (missing file, unknown format); nothing was read."""


def source_for(
    path: Path, sources: Mapping[str, EventSource], fmt: str | None = None
) -> EventSource:
    """The file source for ``path``: ``fmt`` by name, else by the file's suffix."""
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
    sources: Mapping[str, EventSource],
    fmt: str | None = None,
    batch_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    on_stored: Callable[[list[StoredEvent]], None] | None = None,
    on_loaded: Callable[[set[int]], None] | None = None,
    bulk: bool = False,
) -> IngestReport:
    """Read ``path`` with the file source among ``sources`` (``core.plugins.
    file_sources()``) for its name (or ``fmt``) and ingest it; ``on_stored``,
    ``on_loaded`` and ``bulk``: as for ``ingest`` (``estimate_records`` helps choose bulk)."""
    options = options or ReadOptions()
    if not path.is_file():
        raise ImportUsageError(f"{path}: no such file")
    source = source_for(path, sources, fmt)
    return ingest(
        engine,
        source.read(path, options),
        source=f"file:{source.name}",
        batch_size=batch_size,
        default_tz=options.timezone,
        ts_format=options.ts_format,
        on_progress=on_progress,
        on_stored=on_stored,
        on_loaded=on_loaded,
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
