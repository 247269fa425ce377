"""The segment definition language: pydantic models for segments and rules.

A segment is ``name``, ``description`` and ``rule``; a rule is one condition or
``all`` / ``any`` / ``not`` nested to any depth. Definitions come from YAML
files, dicts or stored rows and are validated here; errors name the file, the
segment and the path inside the rule.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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

# -- event fields and filters ------------------------------------------------------

# Columns of the events table a rule may filter or aggregate on; anything else
# names a key of ``properties``.
EVENT_COLUMNS = {
    "type": "text",
    "session_id": "text",
    "product_id": "text",
    "value": "number",
    "currency": "text",
    "url": "text",
    "campaign": "text",
    "source": "text",
}
FIELD_RE = re.compile(r"^(properties\.)?[A-Za-z_][A-Za-z0-9_]*$")

FilterOp = Literal["==", "!=", "in", "not_in", "contains", "starts_with", ">", ">=", "<", "<="]
Scalar = Union[bool, int, float, str]  # noqa: UP007 - pydantic order: bool before int


def field_ref(name: str) -> tuple[str, str]:
    """``("column", name)`` for an events column, else ``("property", key)``."""
    if not FIELD_RE.match(name):
        raise ValueError(f"{name!r} is not a field name (letters, digits, _)")
    if name.startswith("properties."):
        return ("property", name.removeprefix("properties."))
    if name in EVENT_COLUMNS:
        return ("column", name)
    if name in {"ts", "profile_id", "message_id", "received_at", "id"}:
        raise ValueError(f"field {name!r} cannot be filtered here (use within / last / first)")
    return ("property", name)


class Filter(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    op: FilterOp
    value: Scalar | tuple[Scalar, ...]

    @model_validator(mode="after")
    def _check(self) -> Filter:
        field_ref(self.field)
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, tuple) or not self.value:
                raise ValueError(f"{self.field}: '{self.op}' needs a non-empty list")
        elif isinstance(self.value, tuple):
            raise ValueError(f"{self.field}: '{self.op}' needs a single value, not a list")
        if self.op in (">", ">=", "<", "<=") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(
                f"{self.field}: '{self.op}' compares numbers; {self.value!r} is not a number"
            )
        if self.op in ("contains", "starts_with") and not isinstance(self.value, str):
            raise ValueError(f"{self.field}: '{self.op}' needs a text value")
        if isinstance(self.value, tuple) and len({type(v) for v in self.value}) > 1:
            raise ValueError(f"{self.field}: the values of '{self.op}' must all be of one type")
        return self


def parse_where(value: Any) -> Any:
    """``{field: value}`` or ``{field: {op: value, ...}}`` to a tuple of filters."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict):
        raise ValueError("where must be a mapping of field to value or {op: value}")
    filters = []
    for name, spec in value.items():
        if isinstance(spec, dict):
            for op, v in spec.items():
                filters.append({"field": name, "op": op, "value": _freeze(v)})
        elif isinstance(spec, list):
            filters.append({"field": name, "op": "in", "value": _freeze(spec)})
        else:
            filters.append({"field": name, "op": "==", "value": spec})
    return tuple(filters)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


Where = Annotated[tuple[Filter, ...], BeforeValidator(parse_where)]


class Aggregate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    property: str
    op: Comparison

    @field_validator("property")
    @classmethod
    def _prop(cls, v: str) -> str:
        field_ref(v)  # a valid field name; text fields simply never sum (typed reads)
        return v


def _types(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


EventTypes = Annotated[tuple[str, ...], BeforeValidator(_types)]
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_types(types: tuple[str, ...]) -> tuple[str, ...]:
    if not types:
        raise ValueError("needs at least one event type")
    for t in types:
        if not TYPE_RE.match(t):
            raise ValueError(f"{t!r} is not a snake_case event type")
    return tuple(sorted(set(types)))


# -- conditions ---------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventCondition(Strict):
    """Events of some types in a window, counted or aggregated."""

    event: EventTypes
    within: Duration | None = None
    count: Comparison | None = None
    sum: Aggregate | None = None
    min: Aggregate | None = None
    max: Aggregate | None = None
    avg: Aggregate | None = None
    distinct: Aggregate | None = None
    where: Where = ()
    per: Literal["session"] | None = None

    @field_validator("event")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_types(v)

    @model_validator(mode="after")
    def _one_measure(self) -> EventCondition:
        measures = [
            m for m in ("count", "sum", "min", "max", "avg", "distinct") if getattr(self, m)
        ]
        if len(measures) > 1:
            raise ValueError(f"use one of count/sum/min/max/avg/distinct, not {measures}")
        return self

    @property
    def measure(self) -> tuple[str, Aggregate | None, Compare]:
        """(kind, aggregate or None for count, comparison)."""
        for kind in ("sum", "min", "max", "avg", "distinct"):
            agg = getattr(self, kind)
            if agg is not None:
                return kind, agg, agg.op
        return "count", None, self.count or Compare(op=">=", value=1)


class TimeSpec(Strict):
    event: EventTypes
    where: Where = ()
    older_than: Duration | None = None
    newer_than: Duration | None = None

    @field_validator("event")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_types(v)


class LastCondition(Strict):
    """The latest matching event exists and its time fits older_than/newer_than."""

    last: TimeSpec


class FirstCondition(Strict):
    first: TimeSpec


class SequenceSpec(Strict):
    first: EventTypes
    then_not: EventTypes
    within: Duration
    lookback: Duration

    @field_validator("first", "then_not")
    @classmethod
    def _event(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_types(v)

    @model_validator(mode="after")
    def _windows(self) -> SequenceSpec:
        if self.lookback <= self.within:
            raise ValueError("lookback must be longer than within")
        return self


class SequenceCondition(Strict):
    """The latest ``first`` event is in (as_of - lookback, as_of - within] and no
    ``then_not`` event came after it: cart abandonment."""

    sequence: SequenceSpec


AttrOp = Literal[
    "==",
    "!=",
    "in",
    "not_in",
    "contains",
    "starts_with",
    ">",
    ">=",
    "<",
    "<=",
    "exists",
    "not_exists",
]


class AttributeSpec(Strict):
    attribute: str
    op: AttrOp = "=="
    value: Scalar | tuple[Scalar, ...] | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        return _freeze(v)

    @model_validator(mode="after")
    def _check(self) -> AttributeSpec:
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"'{self.op}' takes no value")
            return self
        if self.value is None:
            raise ValueError(f"'{self.op}' needs a value")
        Filter(field=self.attribute, op=self.op, value=self.value)  # same rules as where
        return self


class AttributeCondition(Strict):
    attribute: AttributeSpec

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        # Accept the flat form {attribute: NAME, op: ..., value: ...} too.
        if isinstance(data, dict) and isinstance(data.get("attribute"), str):
            return {"attribute": dict(data)}
        return data


class ConsentCondition(Strict):
    consent: Annotated[str, Field(min_length=1, max_length=64)]


class ScoreSpec(Strict):
    score: str
    op: Comparison


class ScoreCondition(Strict):
    score: ScoreSpec

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("score"), str):
            return {"score": dict(data)}
        return data


class SegmentRef(Strict):
    segment: str


class AllOf(Strict):
    all: tuple[Rule, ...] = Field(min_length=1)


class AnyOf(Strict):
    any: tuple[Rule, ...] = Field(min_length=1)


class NotOf(Strict):
    not_: Rule = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PluginCondition(Strict):
    """A condition kind contributed by a plugin (register_conditions)."""

    kind: str
    params: Any


Rule = Union[  # noqa: UP007
    AllOf,
    AnyOf,
    NotOf,
    EventCondition,
    LastCondition,
    FirstCondition,
    SequenceCondition,
    AttributeCondition,
    ConsentCondition,
    ScoreCondition,
    SegmentRef,
    PluginCondition,
]

# The key that tells a rule's kind; pydantic's smart union would otherwise
# report every alternative's errors for one mistake.
KIND_KEYS: dict[str, type[BaseModel]] = {
    "all": AllOf,
    "any": AnyOf,
    "not": NotOf,
    "event": EventCondition,
    "last": LastCondition,
    "first": FirstCondition,
    "sequence": SequenceCondition,
    "attribute": AttributeCondition,
    "consent": ConsentCondition,
    "score": ScoreCondition,
    "segment": SegmentRef,
}

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()

# -- parsing with precise error locations --------------------------------------------

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


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


def _pydantic_reason(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or True)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required"
    return loc, msg


def parse_rule(data: Any, path: str = "rule", plugins: dict[str, Any] | None = None) -> Rule:
    """Validate one rule (recursively); errors raise SegmentError with the path.

    ``plugins``: condition kinds from ``register_conditions`` (name -> kind).
    """
    plugins = plugins or {}
    plugin_kinds = frozenset(plugins)
    if not isinstance(data, dict) or not data:
        raise SegmentError("expected a condition (a mapping like {event: ...})", path=path)
    kinds = [k for k in data if k in KIND_KEYS or k in plugin_kinds]
    if len(kinds) != 1:
        known = ", ".join(sorted([*KIND_KEYS, *plugin_kinds]))
        found = ", ".join(map(str, data)) or "nothing"
        raise SegmentError(
            f"cannot tell the condition kind from keys {found} (one of: {known})", path=path
        )
    kind = kinds[0]
    if kind in plugin_kinds and kind not in KIND_KEYS:
        if len(data) != 1:
            raise SegmentError(f"{kind}: put the parameters under '{kind}'", path=path)
        try:
            params = plugins[kind].validate(data[kind])
        except ValueError as exc:
            raise SegmentError(str(exc), path=f"{path}.{kind}") from None
        return PluginCondition(kind=kind, params=params)
    if kind in ("all", "any"):
        items = data[kind]
        if len(data) != 1:
            raise SegmentError(f"'{kind}' takes only a list of conditions", path=path)
        if not isinstance(items, list) or not items:
            raise SegmentError(
                f"'{kind}' needs a non-empty list of conditions", path=f"{path}.{kind}"
            )
        children = tuple(
            parse_rule(item, f"{path}.{kind}[{i}]", plugins) for i, item in enumerate(items)
        )
        return AllOf(all=children) if kind == "all" else AnyOf(any=children)
    if kind == "not":
        if len(data) != 1:
            raise SegmentError("'not' takes exactly one condition", path=path)
        return NotOf(not_=parse_rule(data["not"], f"{path}.not", plugins))
    model = KIND_KEYS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc, msg = _pydantic_reason(exc)
        where = f"{path}.{loc}" if loc and not loc.startswith(kind) else f"{path}.{loc or kind}"
        raise SegmentError(msg, path=where) from None


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


def segment_refs(rule: Any) -> list[str]:
    if isinstance(rule, SegmentRef):
        return [rule.segment]
    if isinstance(rule, AllOf):
        return [r for c in rule.all for r in segment_refs(c)]
    if isinstance(rule, AnyOf):
        return [r for c in rule.any for r in segment_refs(c)]
    if isinstance(rule, NotOf):
        return segment_refs(rule.not_)
    return []


def parse_segment(
    data: Any, *, file: str | None = None, plugins: dict[str, Any] | None = None
) -> Segment:
    """Validate a segment; plugin condition kinds come from the plugin manager
    unless ``plugins`` is given."""
    if plugins is None:
        from core.segments.conditions import condition_kinds

        plugins = condition_kinds()
    if not isinstance(data, dict):
        raise SegmentError("a segment is a mapping with name, description, rule", file=file)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SegmentError(f"name {name!r} must be snake_case (a-z, 0-9, _)", file=file)
    unknown = set(data) - {"name", "description", "rule", "tests"}
    if unknown:
        raise SegmentError(f"unknown key(s) {', '.join(sorted(unknown))}", file=file, segment=name)
    if "rule" not in data:
        raise SegmentError("rule is required", file=file, segment=name)
    try:
        rule = parse_rule(data["rule"], "rule", plugins)
    except SegmentError as exc:
        raise SegmentError(exc.reason, file=file, segment=name, path=exc.path) from None
    try:
        tests = tuple(SegmentTest.model_validate(t) for t in data.get("tests") or ())
    except ValidationError as exc:
        loc, msg = _pydantic_reason(exc)
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
