"""Condition kinds contributed by plugins (``register_conditions``).

A plugin condition gives both forms, so it works in batch and in real time:
``python(params, profile, as_of) -> bool`` for one profile, and
``sql(params, ctx) -> boolean SQL expression`` correlated to ``ctx.profile_id``.
Both must mean the same thing; ``tests/test_plugins.py`` shows how to check it.
"""

from __future__ import annotations

import pluggy

from core.types import ConditionKind


def condition_kinds(pm: pluggy.PluginManager | None = None) -> dict[str, ConditionKind]:
    from core.plugins import collect
    from core.segments.language import KIND_KEYS

    return collect("register_conditions", "condition kind", lambda k: k.name, pm, KIND_KEYS)
