"""Event fields and ``where`` filters, with their SQL and Python forms.

Shared by the condition kinds and by plugins (engagement points filter events
the same way), so a filter means the same in every rule and score.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from sqlalchemy.sql.expression import ColumnElement

from core.db.tables import EVENTS
from core.segments.sqlfuncs import json_bool, json_number, json_text, starts_with, text_contains
from core.segments.values import literal_type, matches

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


def freeze(value: Any) -> Any:
    """Lists as tuples, so parsed definitions stay hashable (feature keys)."""
    return tuple(value) if isinstance(value, list) else value


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
                filters.append({"field": name, "op": op, "value": freeze(v)})
        elif isinstance(spec, list):
            filters.append({"field": name, "op": "in", "value": freeze(spec)})
        else:
            filters.append({"field": name, "op": "==", "value": spec})
    return tuple(filters)


Where = Annotated[tuple[Filter, ...], BeforeValidator(parse_where)]

# -- SQL form ----------------------------------------------------------------------


def typed_value(source: ColumnElement, name: str, kind: str, is_column: bool) -> ColumnElement:
    """The field read as ``kind`` (text/number/bool), NULL when it is not one."""
    if is_column:
        col_kind = EVENT_COLUMNS.get(name, "text")
        if col_kind == kind:
            return source
        # A column never holds this kind: a typed NULL (PostgreSQL wants the type).
        return sa.cast(sa.null(), {"number": sa.Float, "bool": sa.Integer}.get(kind, sa.String))
    if kind == "number":
        return json_number(source, name)
    if kind == "bool":
        return json_bool(source, name)
    return json_text(source, name)


def filter_sql(x: ColumnElement, op: str, literal: Any) -> ColumnElement:
    """``values.matches`` in SQL: x is already read as the literal's type."""
    if isinstance(literal, bool):
        literal = int(literal)
    if isinstance(literal, tuple):
        literal = tuple(int(v) if isinstance(v, bool) else v for v in literal)
    if op == "==":
        return x == literal
    if op == "!=":
        return sa.and_(x.is_not(None), x != literal)
    if op == "in":
        return x.in_(literal)
    if op == "not_in":
        return sa.and_(x.is_not(None), x.not_in(literal))
    if op == "contains":
        return text_contains(x, literal)
    if op == "starts_with":
        return starts_with(x, literal)
    return {">": x > literal, ">=": x >= literal, "<": x < literal, "<=": x <= literal}[op]


def event_field(name: str, kind: str) -> ColumnElement:
    ref_kind, key = field_ref(name)
    if ref_kind == "column":
        return typed_value(EVENTS.c[key], key, kind, True)
    return typed_value(EVENTS.c.properties, key, kind, False)


def where_sql(where: tuple[Filter, ...]) -> list[ColumnElement]:
    """One condition on the events table per filter (to AND together)."""
    return [filter_sql(event_field(f.field, literal_type(f.value)), f.op, f.value) for f in where]


# -- Python form --------------------------------------------------------------------


def where_matches(event: Any, where: tuple[Filter, ...]) -> bool:
    """Whether one event (an EventRow) passes every filter."""
    return all(matches(event.get(f.field), f.op, f.value) for f in where)


def matching_events(
    events: Iterable[Any],
    types: Iterable[str],
    where: tuple[Filter, ...],
    as_of: datetime,
    after: datetime | None = None,
) -> Iterator[Any]:
    """Events of these types passing ``where``, with after < ts <= as_of."""
    types = set(types)
    for e in events:
        if e.type not in types or e.ts > as_of or (after is not None and e.ts <= after):
            continue
        if where_matches(e, where):
            yield e
