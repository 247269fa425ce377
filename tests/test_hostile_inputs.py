"""Hypothesis over the workflow language, the file importers and the template
sandbox: any input is accepted or refused with the project's located error
type, never another exception, a hang or a blow-up of memory."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.automation.language import WorkflowError, default_registry, load_workflow_file
from core.db import open_db
from core.ingestion import import_file
from core.personalize.errors import TemplateError
from core.personalize.render import render_parts
from core.personalize.sandbox import MAX_LOOP_STEPS, MAX_OUTPUT
from core.personalize.templates import TemplateSet
from core.plugins import file_sources
from core.types import ReadOptions
from tests.test_hostile_languages import _mutate, values

# SEGFLOW_FUZZ_SCALE=50 runs fifty times as many examples (docs/security.md).
SCALE = int(os.environ.get("SEGFLOW_FUZZ_SCALE", "1"))
FAST = settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
REGISTRY = default_registry()
WORKFLOWS = sorted(Path("examples/workflows").glob("*.yaml"))
SOURCES = file_sources()


# -- the workflow language -----------------------------------------------------------


def _load_workflow(tmp: Path, text: str) -> None:
    target = tmp / "flow.yaml"
    target.write_text(text)
    try:
        load_workflow_file(target, REGISTRY)
    except WorkflowError as exc:
        assert exc.file == str(target), exc
        assert str(exc).startswith(str(target)), exc


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("abc:- \n[]{}'\"&*!|>#%@0123")), max_size=80))
def test_any_yamlish_text_is_a_workflow_or_a_workflow_error_naming_the_file(tmp_path_factory, text):
    _load_workflow(tmp_path_factory.mktemp("w"), text)


@FAST
@given(
    example=st.sampled_from(WORKFLOWS),
    choice=st.lists(st.integers(0, 20), max_size=6),
    value=values,
)
def test_mutated_example_workflows_load_or_are_a_workflow_error(
    tmp_path_factory, example, choice, value
):
    data = _mutate(yaml.safe_load(example.read_text()), choice, value)
    _load_workflow(tmp_path_factory.mktemp("m"), yaml.safe_dump(data, allow_unicode=True))


# -- the importers -------------------------------------------------------------------

GOOD_EVENT = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z"}
junk_lines = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ").encode()),
    values.map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def import_db(tmp_path_factory):
    return open_db(f"sqlite:///{tmp_path_factory.mktemp('imp') / 'i.db'}")


def _good_rows_kept(report: Any, path: Path, good_lines: set[int], total: int) -> None:
    rejected = {r.location for r in report.rejected}
    assert all(loc.startswith(f"{path}:") for loc in rejected), rejected
    # Every good line is stored; every rejection names a line that exists.
    assert not rejected & {f"{path}:{n}" for n in good_lines}, report.rejected
    assert report.accepted >= len(good_lines)
    assert all(1 <= int(loc.rsplit(":", 1)[1]) <= total for loc in rejected), rejected


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.one_of(st.none(), junk_lines), min_size=1, max_size=8))
def test_jsonl_with_random_lines_keeps_good_rows_and_names_bad_lines(
    import_db, tmp_path_factory, lines
):
    path = tmp_path_factory.mktemp("j") / "events.jsonl"
    body, good = [], set()
    for n, line in enumerate(lines, 1):
        if line is None:
            good.add(n)
            event = {**GOOD_EVENT, "properties": {"n": n, "at": time.monotonic_ns()}}
            body.append(json.dumps(event).encode())
        else:
            body.append(line)
    path.write_bytes(b"\n".join(body) + b"\n")
    report = import_file(import_db, path, sources=SOURCES)
    _good_rows_kept(report, path, good, len(lines))


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cells=st.lists(
        st.one_of(st.none(), st.lists(st.text(max_size=12), min_size=0, max_size=5)),
        min_size=1,
        max_size=8,
    ),
    junk=st.binary(max_size=12),
)
def test_csv_with_random_rows_keeps_good_rows_and_names_bad_lines(
    import_db, tmp_path_factory, cells, junk
):
    path = tmp_path_factory.mktemp("c") / "events.csv"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["type", "user_id", "ts", "note"])
    good = set()
    for n, row in enumerate(cells, 2):
        if row is None:
            good.add(n)
            writer.writerow(["page_view", f"u{time.monotonic_ns()}", "2026-03-01T10:00:00Z", "ok"])
        else:
            writer.writerow([c.replace("\n", " ").replace("\r", " ") for c in row])
    data = out.getvalue().encode() + junk.replace(b"\n", b" ").replace(b"\r", b" ")
    path.write_bytes(data)
    report = import_file(import_db, path, ReadOptions(), sources=SOURCES)
    _good_rows_kept(report, path, good, len(cells) + 2)


def test_regression_invalid_utf8_in_a_jsonl_file_is_a_rejected_line_not_a_traceback(
    import_db, tmp_path
):
    """Found by hypothesis: a line with bytes that are not UTF-8 raised
    UnicodeDecodeError from the file reader and stopped the import."""
    path = tmp_path / "events.jsonl"
    good = json.dumps(GOOD_EVENT).encode()
    path.write_bytes(good + b"\n" + b'{"type": "\xff\xfe"}\n' + good.replace(b"u1", b"u2") + b"\n")
    report = import_file(import_db, path, sources=SOURCES)
    assert report.accepted == 2
    assert [(r.location, r.reason) for r in report.rejected] == [
        (
            f"{path}:2",
            "not valid utf-8: byte 0xff at column 11 (the mapping's encoding: reads another)",
        )
    ]


def test_regression_a_mapping_file_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    """As the segment loader's read (tests/test_fuzz.py): `segflow import
    --mapping` of a file that is not UTF-8 was a UnicodeDecodeError traceback."""
    from core.cli import main

    mapping = tmp_path / "map.yaml"
    mapping.write_bytes(b"columns: {a: user_id}\n\xfe\n")
    data = tmp_path / "rows.csv"
    data.write_text("a\nu1\n")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["--db", db, "import", str(data), "--mapping", str(mapping)]) == 2
    assert f"{mapping}: not valid UTF-8: byte 0xfe at offset 22" in capsys.readouterr().err


# -- the template sandbox -------------------------------------------------------------

PIECES = [
    "{{ ",
    " }}",
    "{% for x in ",
    "{% endfor %}",
    "{% if ",
    " %}",
    "{% endif %}",
    "{% set v = ",
    "range(100000)",
    "range(10**9)",
    "'a' * 10**9",
    "[1] * 100000",
    "|join('x' * 50000)",
    "|list",
    "|center(10**9)",
    "|replace('a', 'b' * 1000)",
    "'%999999999d' % 1",
    "'{:>999999999}'.format(1)",
    "profile.first_name",
    "profile.__class__",
    "x",
    "loop.index",
    "()",
    "[",
    "]",
    " ~ ",
    " * ",
    " ** ",
    "9",
    "'s'",
    "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{% raw %}",
    "{# c #}",
]


def _render(tmp: Path, source: str) -> None:
    (tmp / "t.html.j2").write_text("{# subject: s #}\n" + source)
    (tmp / "t.txt.j2").write_text("t\n")
    templates = TemplateSet([tmp])
    started = time.monotonic()
    try:
        _subject, markup, _text = render_parts(
            templates, templates.get("t"), {"profile": {"first_name": "Ada"}}
        )
        assert len(markup) <= MAX_OUTPUT * 2
    except TemplateError as exc:
        assert "t.html.j2" in str(exc), exc
    assert time.monotonic() - started < 10, source


@settings(max_examples=120 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=st.lists(st.sampled_from(PIECES), max_size=14))
def test_random_templates_render_or_are_a_template_error_in_bounded_time(tmp_path_factory, parts):
    _render(tmp_path_factory.mktemp("t"), "".join(parts))


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            f"loops took more than {MAX_LOOP_STEPS:,} steps",
        ),
        (
            '{% for i in range(100000) %}{% include "loop.html.j2" %}{% endfor %}',
            f"loops took more than {MAX_LOOP_STEPS:,} steps",
        ),
        ("{{ ('x' * 100000)|list|join('y' * 100000) }}", "join would build"),
        ("{{ ('x' * 100000).join(range(100000)|map('string')|list) }}", "join would build"),
        ("{{ 'x'|center(10**9) }}", "center(1000000000) would build"),
        ("{{ 'x'.ljust(10**9) }}", "ljust(1000000000) would build"),
        ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", "replace would build"),
        ("{{ ('x' * 100000).replace('x', 'y' * 100000) }}", "replace would build"),
        ("{{ '%*d'|format(10**9, 1) }}", "format(1000000000) would build"),
        ("{{ '%999999999d' % 1 }}", "the format width 999999999"),
        ("{{ '{:>999999999}'.format(1) }}", "the format width 999999999"),
        ("{{ '{:>{}}'.format(1, 10**9) }}", "format(1000000000) would build"),
        ("{{ [range(100000)|list] * 100000 }}", "repeating a list 100000 times"),
    ],
)
def test_regression_templates_that_hung_or_filled_memory_are_refused_quickly(
    tmp_path, source, refusal
):
    """Found while fuzzing the sandbox: each ran for minutes or built gigabytes
    before the output cap could see it."""
    (tmp_path / "loop.html.j2").write_text("{% for j in range(100000) %}{% endfor %}")
    (tmp_path / "t.html.j2").write_text("{# subject: s #}\n" + source)
    (tmp_path / "t.txt.j2").write_text("t\n")
    templates = TemplateSet([tmp_path])
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        render_parts(templates, templates.get("t"), {})
    assert time.monotonic() - started < 5
    assert "refused by the template sandbox" in str(info.value) and refusal in str(info.value)
    assert str(info.value).startswith(f"{tmp_path}/")


def test_loops_an_email_needs_still_render(tmp_path):
    source = (
        "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}"
        "{{ range(1000)|map('string')|join(', ')|length }} {{ 'x'|center(9) }}"
        "{{ 'ab'|replace('a', 'zz') }} {{ '%5d'|format(7) }} {{ '%.2f' % 2.5 }}"
    )
    (tmp_path / "t.html.j2").write_text("{# subject: s #}\n" + source)
    (tmp_path / "t.txt.j2").write_text("t\n")
    templates = TemplateSet([tmp_path])
    _subject, markup, _text = render_parts(templates, templates.get("t"), {})
    assert "4888     x    zzb     7 2.50" in markup
