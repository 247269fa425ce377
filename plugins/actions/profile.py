"""``update_profile`` and ``tag``: change the person's attributes.

    - update_profile: {set: {vip: true}, unset: [trial]}
    - tag: {add: [winback_2026], remove: [active]}

Both write in the transaction that records the action done, so they happen
exactly once. Tags live in the ``tags`` attribute, a sorted list that
segments read with the attribute condition.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core import Action, ActionCall, ActionResult, update_attributes


class UpdateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[str, Any] = Field(default_factory=dict)
    unset: tuple[str, ...] = ()


class TagParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def _update(call: ActionCall) -> ActionResult:
    p = call.params
    update_attributes(call.conn, call.profile_id, dict(p.set), p.unset)
    return ActionResult(detail={"set": sorted(p.set), "unset": list(p.unset)})


def _tag(call: ActionCall) -> ActionResult:
    p = call.params

    def change(attrs: dict[str, Any]) -> dict[str, Any]:
        tags = attrs.get("tags")
        tags = set(tags) if isinstance(tags, list) else set()
        attrs["tags"] = sorted((tags | set(p.add)) - set(p.remove))
        return attrs

    update_attributes(call.conn, call.profile_id, change=change)
    return ActionResult()


def _tags(value: Any) -> TagParams:
    if isinstance(value, str):
        value = {"add": [value]}
    return TagParams.model_validate(value)


UPDATE_PROFILE = Action(
    "update_profile", "set or remove profile attributes", UpdateParams.model_validate, _update,
    transactional=True,
)  # fmt: skip
TAG = Action("tag", "add or remove tags (the tags attribute)", _tags, _tag, transactional=True)
