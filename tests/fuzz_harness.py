"""Coverage-guided fuzz targets (atheris) for the JSONL importer and the segment
parser, run in a process of their own: ``python -m tests.fuzz_harness TARGET
[libFuzzer options]``, e.g. ``-runs=2000`` or ``-max_total_time=600``.

A target fails (a Python traceback, exit status other than 0) when an input
raises anything but the located error the project answers bad input with;
tests/test_fuzz.py runs each one briefly and docs/security.md says how to run
them longer."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["core", "plugins"]):
    from core.ingestion.report import Rejection
    from core.ingestion.schema import Event, validate
    from core.plugins import condition_kinds
    from core.segments.language import SegmentError
    from core.segments.store import load_segment_file
    from core.types import ReadOptions
    from plugins.sources.files import read_jsonl

WORK = Path(tempfile.mkdtemp(prefix="segflow-fuzz-"))
KINDS = condition_kinds()
OPTIONS = ReadOptions()


def jsonl(data: bytes) -> None:
    """Any bytes as a JSON Lines file: every line an event or a Rejection naming it."""
    path = WORK / "events.jsonl"
    path.write_bytes(data)
    # Text mode ends a line at LF, CR LF and a lone CR alike.
    lines = len(re.split(rb"\r\n|\r|\n", data))
    for raw in read_jsonl(path, OPTIONS):
        number = int(raw.location.rsplit(":", 1)[1])
        assert raw.location.startswith(f"{path}:") and 1 <= number <= lines, raw.location
        result = validate(raw)
        assert isinstance(result, Event | Rejection), result
        if isinstance(result, Rejection):
            assert result.reason, raw


def segment(data: bytes) -> None:
    """Any bytes as a segment file: segments, or a SegmentError naming the file."""
    path = WORK / "segment.yaml"
    path.write_bytes(data)
    try:
        load_segment_file(path, KINDS)
    except SegmentError as exc:
        assert exc.file == str(path), exc


TARGETS = {"jsonl": jsonl, "segment": segment}
# Starting inputs: one valid example of each, so mutations start from real syntax.
SEEDS = {
    "jsonl": [
        b'{"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z"}\n',
        b'{"type": "purchase", "email": "a@b.c", "value": 9.5, "currency": "EUR"}\n',
    ],
    "segment": [
        b"name: buyers\nrule: {event: purchase, within: 30d, count: '>= 2'}\n",
        b"- name: a\n  rule: {all: [{event: x}, {not: {segment: b}}]}\n- name: b\n"
        b"  rule: {rfm_group: champions}\n",
    ],
}


def main() -> None:
    name, options = sys.argv[1], sys.argv[2:]
    corpus = WORK / f"corpus-{name}"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS[name]):
        (corpus / f"seed{i}").write_bytes(seed)
    if any(not o.startswith("-") for o in options):
        # Inputs named on the command line (a crash-* file) are replayed alone.
        atheris.Setup([sys.argv[0], *options], TARGETS[name])
        atheris.Fuzz()
        return
    # Crash inputs go to the work folder, not the current one.
    setup = [sys.argv[0], f"-artifact_prefix={WORK}/", *options, str(corpus)]
    atheris.Setup(setup, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
