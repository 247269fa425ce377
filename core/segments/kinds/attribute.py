"""``attribute``: a profile attribute compares true.

    {attribute: tier, op: "==", value: gold}      (or op: exists / not_exists)

Comparisons follow the ``where`` filter rules: only values of the literal's
type match, and a missing attribute matches nothing but ``not_exists``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import field_validator, model_validator

from core.segments.evaluate import ProfileData
from core.segments.language import Strict
from core.segments.sql import FeatureColumns, Features, Render
from core.segments.sqlfuncs import json_key
from core.segments.values import literal_type, matches
from core.segments.where import Filter, Scalar, filter_sql, freeze, typed_value
from core.types import ConditionKind

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
        return freeze(v)

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


def python(cond: AttributeCondition, profile: ProfileData, as_of: datetime) -> bool:
    spec = cond.attribute
    value = profile.attributes.get(spec.attribute)
    if spec.op == "exists":
        return value is not None
    if spec.op == "not_exists":
        return value is None
    return matches(value, spec.op, spec.value)


def features(cond: AttributeCondition, request: Features) -> Render:
    # Reads the profile row itself: no event feature needed.
    spec = cond.attribute

    def test(cols: FeatureColumns) -> sa.ColumnElement:
        attributes = cols.profiles.c.attributes
        if spec.op in ("exists", "not_exists"):
            present = json_key(attributes, spec.attribute).is_not(None)
            return present if spec.op == "exists" else sa.not_(present)
        x = typed_value(attributes, spec.attribute, literal_type(spec.value), False)
        return sa.func.coalesce(filter_sql(x, spec.op, spec.value), False)

    return test


def figures(cond: AttributeCondition, profile: ProfileData, as_of: datetime):
    return {"value": profile.attributes.get(cond.attribute.attribute)}, []


ATTRIBUTE = ConditionKind(
    "attribute",
    "a profile attribute compares true",
    python,
    validate=AttributeCondition.model_validate,
    flat=True,
    features=features,
    figures=figures,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(ATTRIBUTE)
