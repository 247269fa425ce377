"""A bounded atheris run of each fuzz target (tests/fuzz_harness.py) in a
process of its own, as libFuzzer needs: it must finish without finding an
input that crashes the JSONL importer or the segment parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.automation.language import WorkflowError, default_registry, load_workflow_file
from core.plugins import condition_kinds
from core.segments.language import SegmentError
from core.segments.store import load_segment_file

ROOT = Path(__file__).resolve().parent.parent
# A few seconds each in CI; SEGFLOW_FUZZ_SCALE=50 runs fifty times as long.
SCALE = int(os.environ.get("SEGFLOW_FUZZ_SCALE", "1"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["jsonl", "segment"])
def test_a_bounded_fuzz_run_finds_no_crash(target, tmp_path):
    runs, seconds = 2000 * SCALE, 5 * SCALE
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz_harness",
            target,
            f"-runs={runs}",
            f"-max_total_time={seconds}",
            "-max_len=2048",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60 + seconds * 2,
    )
    report = done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "Uncaught Python exception" not in done.stderr, report
    # It fuzzed: libFuzzer's last line counts the inputs run.
    tail = done.stderr.strip().splitlines()[-1]
    assert tail.startswith("Done ") and int(tail.split()[1]) >= min(runs, 200), tail


def test_regression_a_segment_file_that_is_not_utf8_is_a_segment_error(tmp_path):
    """Found by atheris: a byte that is not UTF-8 in a segment file raised
    UnicodeDecodeError from reading it."""
    path = tmp_path / "seg.yaml"
    path.write_bytes(b"name: a\nrule: {event: x}\x9f\n")
    with pytest.raises(SegmentError) as info:
        load_segment_file(path, condition_kinds())
    assert info.value.file == str(path)
    assert str(info.value) == f"{path}: not valid UTF-8: byte 0x9f at offset 24"


def test_regression_a_workflow_file_that_is_not_utf8_is_a_workflow_error(tmp_path):
    """The same read as the segment file's, in the workflow loader."""
    path = tmp_path / "flow.yaml"
    path.write_bytes(b"name: a\xff\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow_file(path, default_registry())
    assert str(info.value) == f"{path}: not valid UTF-8: byte 0xff at offset 7"


@pytest.mark.parametrize("kind", ["settings", "scores", "mapping"])
def test_regression_other_files_that_are_not_utf8_name_file_and_offset(tmp_path, kind):
    """The same read in every loader of a file a person writes: settings
    (segflow.toml), score definitions and import mappings."""
    from core.config import ConfigError, load_file
    from core.ingestion.files import ImportUsageError
    from core.ingestion.options import read_mapping
    from core.plugins import scoring_models
    from core.scoring import load_score_files
    from core.types import ScoreError

    path = tmp_path / ("segflow.toml" if kind == "settings" else "def.yaml")
    path.write_bytes(b"name = 1\n\xc3(\n" if kind == "settings" else b"name: a\n\xc3(\n")
    calls = {
        "settings": (lambda: load_file(path), ConfigError),
        "scores": (lambda: load_score_files(tmp_path, scoring_models()), ScoreError),
        "mapping": (lambda: read_mapping(path), ImportUsageError),
    }
    call, error = calls[kind]
    with pytest.raises(error) as info:
        call()
    assert (
        str(info.value)
        == f"{path}: not valid UTF-8: byte 0xc3 at offset {9 if kind == 'settings' else 8}"
    )
