"""File sources: JSON Lines and CSV, plain or gzip-compressed."""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from core import EventSource, RawRecord, ReadOptions, RowMapper, hookimpl

# Bytes the encoding could not read, as surrogateescape keeps them.
UNDECODED = re.compile("[\udc80-\udcff]")


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    # surrogateescape: a byte the encoding cannot read stays in its line, so
    # that line is refused by number instead of the whole import stopping.
    if path.suffix == ".gz":
        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding=encoding, errors="surrogateescape", newline=""
        )
    return open(path, encoding=encoding, errors="surrogateescape", newline="")


def undecoded(text: str, encoding: str) -> str | None:
    """Why ``text`` (read with surrogateescape) is not valid ``encoding``, or None."""
    found = UNDECODED.search(text)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    return (
        f"not valid {encoding}: byte 0x{byte:02x} at column {found.start() + 1} "
        "(the mapping's encoding: reads another)"
    )


class _Lines:
    """The lines of a text file, remembering the numbers of those holding
    bytes the encoding could not read (a CSV row may span several)."""

    def __init__(self, lines: Iterable[str], encoding: str) -> None:
        self.lines, self.encoding = lines, encoding
        self.number = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.number += 1
            if UNDECODED.search(line):
                self.bad[self.number] = undecoded(line, self.encoding) or ""
            yield line

    def problem(self, first: int, last: int) -> str | None:
        if not self.bad:
            return None
        return next((self.bad[n] for n in range(first, last + 1) if n in self.bad), None)


def read_jsonl(path: Path, options: ReadOptions) -> Iterator[RawRecord]:
    with open_text(path, options.encoding) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                why = undecoded(line, options.encoding)
                yield RawRecord(
                    where, None, why or f"invalid JSON: {exc.msg} at column {exc.colno}"
                )
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
        lines = _Lines(fh, options.encoding)
        reader = csv.DictReader(lines, delimiter=delimiter)
        header = reader.fieldnames or []
        why = lines.problem(1, reader.line_num)
        if why:
            yield RawRecord(f"{path}:1", None, f"header: {why}")
            return
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            yield RawRecord(f"{path}:1", None, f"duplicate column names in header: {dupes}")
            return
        mapper.bind_header(header, str(path))
        start = reader.line_num + 1
        for number, row in enumerate(reader, 1):
            where = f"{path}:{start}"
            why = lines.problem(start, reader.line_num)
            start = reader.line_num + 1
            if why:
                yield RawRecord(where, None, why)
                continue
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
