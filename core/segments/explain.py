"""Why is someone in a segment or not: the rule tree with each condition's
value, the figures that decided it and the deciding events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from core.segments.evaluate import Evaluator, EventRow, ProfileData, measure
from core.segments.language import (
    AllOf,
    AnyOf,
    Compare,
    EventCondition,
    Filter,
    FirstCondition,
    LastCondition,
    NotOf,
    PluginCondition,
    SegmentRef,
    SequenceCondition,
)

MAX_EVENTS = 10


def _event_json(e: EventRow) -> dict[str, Any]:
    out = {"type": e.type, "ts": e.ts.isoformat(), "message_id": e.message_id}
    for name in ("session_id", "product_id", "value"):
        if getattr(e, name) is not None:
            out[name] = getattr(e, name)
    return out


def describe(rule: Any) -> dict[str, Any]:
    """The node's own parameters (children left out), as JSON."""
    if isinstance(rule, AllOf | AnyOf | NotOf):
        return {}
    if isinstance(rule, PluginCondition):
        return {rule.kind: _plain(rule.params)}
    return {k: _plain(v) for k, v in rule if v not in (None, (), [], {})}


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


def kind_of(rule: Any) -> str:
    if isinstance(rule, AllOf):
        return "all"
    if isinstance(rule, AnyOf):
        return "any"
    if isinstance(rule, NotOf):
        return "not"
    if isinstance(rule, PluginCondition):
        return rule.kind
    return next(iter(describe(rule)), type(rule).__name__)


class Explainer(Evaluator):
    def explain(self, rule: Any) -> dict[str, Any]:
        node: dict[str, Any] = {"kind": kind_of(rule), "params": describe(rule)}
        if isinstance(rule, AllOf | AnyOf):
            children = [
                self.explain(r) for r in (rule.all if isinstance(rule, AllOf) else rule.any)
            ]
            values = [c["value"] for c in children]
            node["value"] = all(values) if isinstance(rule, AllOf) else any(values)
            node["children"] = children
            return node
        if isinstance(rule, NotOf):
            child = self.explain(rule.not_)
            node["value"] = not child["value"]
            node["children"] = [child]
            return node
        node["value"] = self.test(rule)
        node["figures"], events = self._figures(rule)
        node["events"] = [_event_json(e) for e in events[-MAX_EVENTS:]]
        return node

    def _figures(self, rule: Any) -> tuple[dict[str, Any], list[EventRow]]:
        if isinstance(rule, EventCondition):
            lower = self.as_of - rule.within if rule.within is not None else None
            events = list(self._matching(rule.event, rule.where, lower))
            kind, agg, compare = rule.measure
            figures: dict[str, Any] = {
                "window_start": lower.isoformat() if lower else None,
                "matching_events": len(events),
            }
            if rule.per == "session":
                best = None
                sessions: dict[str, list[EventRow]] = {}
                for e in events:
                    if e.session_id is not None:
                        sessions.setdefault(e.session_id, []).append(e)
                for sid, evs in sessions.items():
                    value = measure(kind, agg, evs)
                    if compare.test(value) or best is None:
                        best = (sid, value, evs)
                        if compare.test(value):
                            break
                if best:
                    figures |= {"session_id": best[0], kind: best[1]}
                    events = best[2]
            else:
                figures[kind] = measure(kind, agg, events)
            figures["test"] = f"{kind} {compare}"
            return figures, events
        if isinstance(rule, LastCondition | FirstCondition):
            spec = rule.last if isinstance(rule, LastCondition) else rule.first
            events = list(self._matching(spec.event, spec.where))
            if not events:
                return {"found": False}, []
            pick = (
                max(events, key=lambda e: e.ts)
                if isinstance(rule, LastCondition)
                else min(events, key=lambda e: e.ts)
            )
            return {
                "found": True,
                "ts": pick.ts.isoformat(),
                "age_hours": round((self.as_of - pick.ts).total_seconds() / 3600, 2),
            }, [pick]
        if isinstance(rule, SequenceCondition):
            spec = rule.sequence
            starts = list(self._matching(spec.first, ()))
            if not starts:
                return {"first_found": False}, []
            a = max(starts, key=lambda e: e.ts)
            later = [e for e in self._matching(spec.then_not, ()) if e.ts > a.ts]
            return {
                "first_at": a.ts.isoformat(),
                "window": [
                    (self.as_of - spec.lookback).isoformat(),
                    (self.as_of - spec.within).isoformat(),
                ],
                "then_not_after": len(later),
            }, [a, *later]
        if isinstance(rule, SegmentRef):
            return {"member": bool(self.data.segments.get(rule.segment))}, []
        if hasattr(rule, "attribute"):
            return {"value": self.data.attributes.get(rule.attribute.attribute)}, []
        if hasattr(rule, "score") and not isinstance(rule, str):
            return {"value": self.data.scores.get(rule.score.score)}, []
        if hasattr(rule, "consent"):
            return {"granted": rule.consent in self.data.consents}, []
        return {}, []


def explain(rule: Any, data: ProfileData, as_of: datetime) -> dict[str, Any]:
    explainer = Explainer(data, as_of)
    tree = explainer.explain(rule)
    outcome = Evaluator(data, as_of).outcome(rule)
    return {
        "as_of": as_of.isoformat(),
        "member": outcome.member,
        "next_change_at": outcome.next_change_at.isoformat() if outcome.next_change_at else None,
        "rule": tree,
    }
