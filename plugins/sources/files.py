"""File sources: JSON Lines and CSV, plain or gzip-compressed."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import orjson

from core import EventSource, RawRecord, ReadOptions, RowMapper, hookimpl


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def read_jsonl(path: Path, options: ReadOptions) -> Iterator[RawRecord]:
    with open_text(path, options.encoding) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield RawRecord(where, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(data, dict):
                yield RawRecord(where, None, f"expected a JSON object, got {type(data).__name__}")
                continue
            for name, value in options.constants.items():
                data.setdefault(name, value)
            yield RawRecord(where, data)


def read_csv(path: Path, options: ReadOptions) -> Iterator[RawRecord]:
    mapper = RowMapper(options)
    delimiter = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else options.delimiter
    with open_text(path, options.encoding) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            yield RawRecord(f"{path}:1", None, f"duplicate column names in header: {dupes}")
            return
        mapper.bind_header(header, str(path))
        start = reader.line_num + 1
        for number, row in enumerate(reader, 1):
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield RawRecord(where, None, f"more fields than the {len(header)} header columns")
                continue
            try:
                events = mapper.events(row, number)
            except ValueError as exc:
                yield RawRecord(where, None, str(exc))
                continue
            for event in events:
                yield RawRecord(where, event)


@hookimpl
def register_event_sources(register) -> None:
    register(
        EventSource(
            name="jsonl",
            description="JSON Lines files, one canonical event per line",
            suffixes=(".jsonl", ".ndjson", ".json"),
            read=read_jsonl,
        )
    )
    register(
        EventSource(
            name="csv",
            description="CSV/TSV files; columns mapped to fields, the rest to properties",
            suffixes=(".csv", ".tsv"),
            read=read_csv,
        )
    )
