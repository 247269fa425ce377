"""Condition kinds: the built-in ones, one module each, and the registry that
built-in and plugin kinds both go through.

A kind module holds the kind's pydantic model, its Python form, its SQL
feature form, its explain figures and its ``next_change_at``, and registers
them with ``register_conditions(register)`` - the same call a plugin's
``register_conditions`` hook makes. Nothing else in core/segments knows the
built-in kinds: parsing looks names up here, and the evaluators, the SQL
compiler and explain dispatch through the kind kept on each parsed condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from core.segments.kinds import attribute, consent, event, last, score, segment, sequence
from core.segments.language import COMBINATORS
from core.types import ConditionKind

BUILTIN_KIND_MODULES: tuple[ModuleType, ...] = (
    event,
    last,
    sequence,
    attribute,
    consent,
    score,
    segment,
)


class ConditionKinds:
    """The condition kinds rules may use, by name.

    Built from kind modules (the built-ins, by default); plugins add theirs
    with ``register``, which refuses a name already taken.
    """

    def __init__(self, modules: Iterable[ModuleType] = BUILTIN_KIND_MODULES) -> None:
        self._kinds: dict[str, ConditionKind] = {}
        self.builtin: frozenset[str] = frozenset()
        for module in modules:
            module.register_conditions(self.register)
        self.builtin = frozenset(self._kinds)

    @classmethod
    def from_plugins(
        cls, pm: Any, modules: Iterable[ModuleType] = BUILTIN_KIND_MODULES
    ) -> ConditionKinds:
        """The built-in kinds plus those of every plugin's ``register_conditions``."""
        kinds = cls(modules)
        pm.hook.register_conditions(register=kinds.register)
        return kinds

    def register(self, kind: ConditionKind) -> None:
        name = kind.name
        if name in COMBINATORS or name in self.builtin:
            raise ValueError(f"condition kind {name!r} is built in; choose another name")
        if name in self._kinds:
            raise ValueError(f"condition kind {name!r} is registered twice")
        self._kinds[name] = kind

    def __getitem__(self, name: str) -> ConditionKind:
        return self._kinds[name]

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def fingerprint(self) -> tuple[ConditionKind, ...]:
        """Equal for registries holding equal kinds: definitions parsed with
        one are valid with the other (a cache key)."""
        return tuple(self._kinds.values())
