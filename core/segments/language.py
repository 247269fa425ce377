"""The segment definition language: segments, rules and their building blocks.

A segment is ``name``, ``description`` and ``rule``; a rule is one condition or
``all`` / ``any`` / ``not`` nested to any depth. Each condition kind (its
model, SQL and Python forms) lives in ``core/segments/kinds/`` or a plugin;
parsing looks kinds up in the registry it is given and keeps the kind on the
parsed condition, so the evaluators dispatch through the kind itself.
Definitions come from YAML files, dicts or stored rows; errors name the file,
the segment and the path inside the rule.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
)

from core.db.tables import SEGMENTS
from core.errors import validation_reason
from core.types import EVENT_TYPE_MAX_LENGTH, ConditionKind, is_snake_name

if TYPE_CHECKING:
    from core.segments.kinds import ConditionKinds

# -- durations and comparisons ---------------------------------------------------

DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and (m := DURATION_RE.match(value)):
        amount = int(m.group(1))
        if amount == 0:
            raise ValueError(f"duration {value!r} must be positive")
        return timedelta(seconds=amount * UNIT_SECONDS[m.group(2)])
    raise ValueError(f"{value!r} is not a duration (like 30m, 48h, 7d, 4w)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
COMPARE_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")


class Compare(BaseModel):
    """``"OP N"``: one of >= > <= < == != and a number."""

    model_config = ConfigDict(frozen=True)

    op: Literal[">=", ">", "<=", "<", "==", "!="]
    value: float

    def test(self, x: float | None) -> bool:
        return x is not None and OPS[self.op](x, self.value)

    def __str__(self) -> str:
        n = int(self.value) if self.value.is_integer() else self.value
        return f"{self.op} {n}"


def parse_compare(value: Any) -> Any:
    if isinstance(value, Compare | dict):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"op": "==", "value": value}
    if isinstance(value, str) and (m := COMPARE_RE.match(value)):
        return {"op": m.group(1), "value": float(m.group(2))}
    raise ValueError(f'{value!r} is not a comparison (like ">= 3"; operators >= > <= < == !=)')


Comparison = Annotated[Compare, BeforeValidator(parse_compare)]

# -- event types -------------------------------------------------------------------


def _types(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


EventTypes = Annotated[tuple[str, ...], BeforeValidator(_types)]


def check_event_types(types: tuple[str, ...]) -> tuple[str, ...]:
    """Sorted, distinct event types; each a snake_case name that fits events.type."""
    if not types:
        raise ValueError("needs at least one event type")
    for t in types:
        if not is_snake_name(t, EVENT_TYPE_MAX_LENGTH):
            raise ValueError(
                f"{t!r} is not a snake_case event type (at most {EVENT_TYPE_MAX_LENGTH} characters)"
            )
    return tuple(sorted(set(types)))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- rules: conditions and how they combine -------------------------------------------


class Condition(BaseModel):
    """One condition: its kind (from the registry it was parsed with) and its
    validated parameters (the kind's own model, for built-in kinds)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: ConditionKind
    params: Any

    @property
    def name(self) -> str:
        return self.kind.name

    @model_serializer
    def _as_written(self) -> Any:
        # The kind is behaviour, not data: a definition compares by its params,
        # which for a flat kind already hold the kind's key.
        return self.params if self.kind.flat else {self.kind.name: self.params}


class AllOf(Strict):
    name: ClassVar[str] = "all"
    all: tuple[Rule, ...] = Field(min_length=1)

    @property
    def children(self) -> tuple[Rule, ...]:
        return self.all

    @staticmethod
    def combine(values: list[bool]) -> bool:
        return all(values)


class AnyOf(Strict):
    name: ClassVar[str] = "any"
    any: tuple[Rule, ...] = Field(min_length=1)

    @property
    def children(self) -> tuple[Rule, ...]:
        return self.any

    @staticmethod
    def combine(values: list[bool]) -> bool:
        return any(values)


class NotOf(Strict):
    name: ClassVar[str] = "not"
    not_: Rule = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def children(self) -> tuple[Rule, ...]:
        return (self.not_,)

    @staticmethod
    def combine(values: list[bool]) -> bool:
        return not values[0]


Rule = Union[AllOf, AnyOf, NotOf, Condition]  # noqa: UP007
COMBINATORS: tuple[str, ...] = ("all", "any", "not")

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()

# -- parsing with precise error locations --------------------------------------------

# The segments.name column holds the name.
SEGMENT_NAME_MAX_LENGTH: int = SEGMENTS.c.name.type.length


class SegmentError(ValueError):
    """A definition is wrong; the message names file, segment and rule path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        segment: str | None = None,
        path: str | None = None,
    ) -> None:
        self.file, self.segment, self.path, self.reason = file, segment, path, message
        parts = [p for p in (file, f"segment '{segment}'" if segment else None, path) if p]
        super().__init__(": ".join([*parts, message]))


def parse_rule(data: Any, kinds: ConditionKinds, path: str = "rule") -> Rule:
    """Validate one rule (recursively) against the condition ``kinds``; errors
    raise SegmentError with the path."""
    if not isinstance(data, dict) or not data:
        raise SegmentError("expected a condition (a mapping like {event: ...})", path=path)
    keys = [k for k in data if k in COMBINATORS or k in kinds]
    if len(keys) != 1:
        known = ", ".join(sorted([*COMBINATORS, *kinds]))
        found = ", ".join(map(str, data)) or "nothing"
        raise SegmentError(
            f"cannot tell the condition kind from keys {found} (one of: {known})", path=path
        )
    key = keys[0]
    if key in ("all", "any"):
        items = data[key]
        if len(data) != 1:
            raise SegmentError(f"'{key}' takes only a list of conditions", path=path)
        if not isinstance(items, list) or not items:
            raise SegmentError(
                f"'{key}' needs a non-empty list of conditions", path=f"{path}.{key}"
            )
        children = tuple(
            parse_rule(item, kinds, f"{path}.{key}[{i}]") for i, item in enumerate(items)
        )
        return AllOf(all=children) if key == "all" else AnyOf(any=children)
    if key == "not":
        if len(data) != 1:
            raise SegmentError("'not' takes exactly one condition", path=path)
        return NotOf(not_=parse_rule(data["not"], kinds, f"{path}.not"))
    kind = kinds[key]
    if not kind.flat and len(data) != 1:
        raise SegmentError(f"{key}: put the parameters under '{key}'", path=path)
    # A flat kind's error locations already start at the kind's key.
    base = path if kind.flat else f"{path}.{key}"
    try:
        params = kind.validate(data if kind.flat else data[key])
    except ValidationError as exc:
        loc, msg = validation_reason(exc)
        raise SegmentError(msg, path=f"{base}.{loc}" if loc else f"{path}.{key}") from None
    except ValueError as exc:
        raise SegmentError(str(exc), path=f"{path}.{key}") from None
    return Condition(kind=kind, params=params)


class SegmentTest(Strict):
    """A named test profile: events relative to as_of and the expected result."""

    name: str
    events: tuple[dict[str, Any], ...] = ()
    attributes: dict[str, Any] = Field(default_factory=dict)
    consents: tuple[str, ...] = ()
    scores: dict[str, float] = Field(default_factory=dict)
    expect: Literal["in", "out"]


class Segment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rule: Any
    tests: tuple[SegmentTest, ...] = ()

    def dependencies(self) -> set[str]:
        return set(segment_refs(self.rule))


def segment_refs(rule: Rule) -> list[str]:
    """Names of the other segments a rule reads, through any depth of nesting."""
    if isinstance(rule, Condition):
        refs: Iterable[str] = rule.kind.segment_refs(rule.params) if rule.kind.segment_refs else ()
        return list(refs)
    return [r for child in rule.children for r in segment_refs(child)]


def event_fields(rule: Rule) -> set[tuple[str, str]]:
    """(event type, field) pairs whose values a rule aggregates, through any
    depth of nesting (from each kind's ``event_fields``)."""
    if isinstance(rule, Condition):
        read = rule.kind.event_fields
        return set(read(rule.params)) if read else set()
    return {pair for child in rule.children for pair in event_fields(child)}


def event_reads(rule: Rule) -> set[tuple[str, str]]:
    """(event type, field) pairs a rule reads at all, aggregated or filtered
    on, through any depth of nesting (each kind's ``event_reads``, else its
    ``event_fields``)."""
    if isinstance(rule, Condition):
        read = rule.kind.event_reads or rule.kind.event_fields
        return set(read(rule.params)) if read else set()
    return {pair for child in rule.children for pair in event_reads(child)}


def parse_segment(data: Any, *, kinds: ConditionKinds, file: str | None = None) -> Segment:
    """Validate a segment whose rule may use the condition ``kinds``."""
    if not isinstance(data, dict):
        raise SegmentError("a segment is a mapping with name, description, rule", file=file)
    name = data.get("name")
    if not is_snake_name(name, SEGMENT_NAME_MAX_LENGTH):
        raise SegmentError(
            f"name {name!r} must be snake_case (a-z, 0-9, _), "
            f"at most {SEGMENT_NAME_MAX_LENGTH} characters",
            file=file,
        )
    unknown = set(data) - {"name", "description", "rule", "tests"}
    if unknown:
        raise SegmentError(f"unknown key(s) {', '.join(sorted(unknown))}", file=file, segment=name)
    if "rule" not in data:
        raise SegmentError("rule is required", file=file, segment=name)
    try:
        rule = parse_rule(data["rule"], kinds)
    except SegmentError as exc:
        raise SegmentError(exc.reason, file=file, segment=name, path=exc.path) from None
    raw_tests = data.get("tests") or []
    if not isinstance(raw_tests, list):
        raise SegmentError("tests must be a list", file=file, segment=name, path="tests")
    try:
        tests = tuple(SegmentTest.model_validate(t) for t in raw_tests)
    except ValidationError as exc:
        loc, msg = validation_reason(exc)
        raise SegmentError(msg, file=file, segment=name, path=f"tests.{loc}") from None
    return Segment(
        name=name, description=str(data.get("description") or ""), rule=rule, tests=tests
    )


def check_references(segments: dict[str, Segment], known: set[str] | None = None) -> list[str]:
    """Names in dependency order; unknown references and cycles are errors."""
    known = set(segments) | (known or set())
    for seg in segments.values():
        for ref in seg.dependencies():
            if ref not in known:
                raise SegmentError(f"refers to unknown segment '{ref}'", segment=seg.name)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in segments:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise SegmentError(f"segments refer to each other in a cycle: {cycle}", segment=name)
        state[name] = 1
        for ref in sorted(segments[name].dependencies()):
            visit(ref, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in sorted(segments):
        visit(name, [])
    return order
