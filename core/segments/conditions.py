"""Condition kinds contributed by plugins (``register_conditions``).

A plugin condition gives both forms, so it works in batch and in real time:
``python(params, profile, as_of) -> bool`` for one profile, and
``sql(params, ctx) -> boolean SQL expression`` correlated to ``ctx.profile_id``.
Both must mean the same thing; ``tests/test_plugins.py`` shows how to check it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pluggy
import sqlalchemy as sa


@dataclass(frozen=True)
class SqlContext:
    """What a plugin's SQL form can refer to."""

    profile_id: sa.ColumnElement  # the evaluated profile's id (outer query)
    profiles: Any  # the profiles row being evaluated (attributes, email, ...)
    events: sa.Table
    as_of: datetime


def _accept(params: Any) -> Any:
    return params


@dataclass(frozen=True)
class ConditionKind:
    name: str
    description: str
    python: Callable[[Any, Any, datetime], bool]
    sql: Callable[[Any, SqlContext], sa.ColumnElement]
    # Checks and normalises the parameters; raise ValueError with a clear message.
    validate: Callable[[Any], Any] = _accept


def condition_kinds(pm: pluggy.PluginManager | None = None) -> dict[str, ConditionKind]:
    from core.plugins import collect
    from core.segments.language import KIND_KEYS

    return collect("register_conditions", "condition kind", lambda k: k.name, pm, KIND_KEYS)
