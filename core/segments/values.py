"""Typed comparisons shared by both evaluators' semantics.

A filter only ever matches values of its literal's type: a text literal
matches text, a number matches numbers (never booleans), a boolean matches
booleans. A missing value never matches, whatever the operator (``!=`` and
``not_in`` included). The SQL compiler implements exactly this, so the
real-time and batch answers agree.
"""

from __future__ import annotations

from typing import Any

import orjson


def value_type(value: Any) -> str | None:
    """The type a filter compares by: bool, number, text, other; None when missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def literal_type(value: Any) -> str:
    """The type of a filter's literal (of its first item, for ``in`` lists)."""
    if isinstance(value, tuple):
        return value_type(value[0]) or "text"
    return value_type(value) or "text"


def matches(x: Any, op: str, literal: Any) -> bool:
    if value_type(x) != literal_type(literal):
        return False
    if op == "==":
        return x == literal
    if op == "!=":
        return x != literal
    if op == "in":
        return x in literal
    if op == "not_in":
        return x not in literal
    if op == "contains":
        return literal in x
    if op == "starts_with":
        return x.startswith(literal)
    if op == ">":
        return x > literal
    if op == ">=":
        return x >= literal
    if op == "<":
        return x < literal
    if op == "<=":
        return x <= literal
    raise ValueError(f"unknown operator {op!r}")


def number(x: Any) -> float | None:
    """A value that aggregates (sum/min/max/avg) take: numbers, not booleans."""
    return x if value_type(x) == "number" else None


def distinct_key(x: Any) -> str | None:
    """Values count as the same for ``distinct`` when their JSON text is equal."""
    if x is None:
        return None
    return orjson.dumps(x).decode()
