"""Why is someone in a segment or not: the rule tree with each condition's
value, the figures that decided it and the deciding events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from core.segments.evaluate import Evaluator, EventRow, ProfileData
from core.segments.language import Compare, Condition, Rule
from core.segments.where import Filter

MAX_EVENTS = 10


def _event_json(e: EventRow) -> dict[str, Any]:
    out = {"type": e.type, "ts": e.ts.isoformat(), "message_id": e.message_id}
    for name in ("session_id", "product_id", "value"):
        if getattr(e, name) is not None:
            out[name] = getattr(e, name)
    return out


def describe(rule: Rule) -> dict[str, Any]:
    """The node's own parameters (children left out), as JSON."""
    if not isinstance(rule, Condition):
        return {}
    if rule.kind.flat:
        return {k: _plain(v) for k, v in rule.params if v not in (None, (), [], {})}
    return {rule.name: _plain(rule.params)}


def _plain(value: Any) -> Any:
    """Values as a person wrote them: 48h, ">= 3", product_view."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"
    if isinstance(value, Compare):
        return str(value)
    if isinstance(value, tuple):
        items = [_plain(v) for v in value]
        return items[0] if len(items) == 1 and isinstance(items[0], str) else items
    if isinstance(value, BaseModel):
        if isinstance(value, Filter):
            return f"{value.field} {value.op} {value.value!r}"
        return {k: _plain(v) for k, v in value if v not in (None, (), [], {})}
    return value


class Explainer(Evaluator):
    def explain(self, rule: Rule) -> dict[str, Any]:
        node: dict[str, Any] = {"kind": rule.name, "params": describe(rule)}
        if isinstance(rule, Condition):
            node["value"] = self.test(rule)
            kind = rule.kind
            figures, events = (
                kind.figures(rule.params, self.data, self.as_of) if kind.figures else ({}, [])
            )
            node["figures"] = figures
            node["events"] = [_event_json(e) for e in events[-MAX_EVENTS:]]
            return node
        children = [self.explain(child) for child in rule.children]
        node["value"] = rule.combine([c["value"] for c in children])
        node["children"] = children
        return node


def explain(rule: Rule, data: ProfileData, as_of: datetime) -> dict[str, Any]:
    tree = Explainer(data, as_of).explain(rule)
    outcome = Evaluator(data, as_of).outcome(rule)
    return {
        "as_of": as_of.isoformat(),
        "member": outcome.member,
        "next_change_at": outcome.next_change_at.isoformat() if outcome.next_change_at else None,
        "rule": tree,
    }
