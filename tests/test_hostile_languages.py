"""Hypothesis over the segment language: any text or mutation loads or is a SegmentError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.plugins import condition_kinds
from core.segments.language import SegmentError
from core.segments.store import load_segment_file

EXAMPLES = sorted(Path("examples/segments").glob("*.yaml"))
KINDS = condition_kinds()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _load(tmp: Path, text: str) -> None:
    target = tmp / "seg.yaml"
    target.write_text(text)
    try:
        load_segment_file(target, KINDS)
    except SegmentError as exc:
        assert exc.file == str(target), exc


def _mutate(data: Any, choice: list[int], value: Any) -> Any:
    """Replace one leaf or key's value, picked by choice, anywhere inside data."""
    if not choice:
        return value
    head, rest = choice[0], choice[1:]
    if isinstance(data, dict) and data:
        key = sorted(data, key=str)[head % len(data)]
        return {**data, key: _mutate(data[key], rest, value)}
    if isinstance(data, list) and data:
        i = head % len(data)
        return [*data[:i], _mutate(data[i], rest, value), *data[i + 1 :]]
    return value


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("abc:- \n[]{}'\"&*!|>#%@0123")), max_size=80))
def test_any_yamlish_text_loads_or_is_a_segment_error_naming_the_file(tmp_path_factory, text):
    _load(tmp_path_factory.mktemp("y"), text)


@FAST
@given(
    example=st.sampled_from(EXAMPLES),
    choice=st.lists(st.integers(0, 20), max_size=6),
    value=values,
)
def test_mutated_example_definitions_load_or_are_a_segment_error(
    tmp_path_factory, example, choice, value
):
    data = _mutate(yaml.safe_load(example.read_text()), choice, value)
    _load(tmp_path_factory.mktemp("m"), yaml.safe_dump(data, allow_unicode=True))


def test_regression_tests_key_that_is_not_a_list_is_a_segment_error(tmp_path):
    """Found by hypothesis: ``tests: 5`` raised TypeError ('int' object is not iterable)."""
    target = tmp_path / "seg.yaml"
    target.write_text("name: buyers\nrule: {event: purchase}\ntests: 5\n")
    try:
        load_segment_file(target, KINDS)
    except SegmentError as exc:
        assert exc.path == "tests" and "must be a list" in str(exc) and exc.file == str(target)
    else:
        raise AssertionError("tests: 5 was accepted")


def test_regression_rfm_group_holding_a_list_is_a_segment_error(tmp_path):
    """Found by hypothesis: ``rfm_group: [[]]`` raised TypeError (unhashable type: 'list')."""
    target = tmp_path / "seg.yaml"
    target.write_text("name: champions\nrule: {rfm_group: [[]]}\n")
    try:
        load_segment_file(target, KINDS)
    except SegmentError as exc:
        assert exc.path == "rule.rfm_group" and "unknown rfm group" in str(exc), exc
    else:
        raise AssertionError("rfm_group: [[]] was accepted")
