"""``consent``: the person granted this purpose.

{consent: email_marketing}   (``email``, the old name, means the same)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from pydantic import Field, field_validator

from core.db.tables import CONSENTS
from core.privacy.consent import purpose_name
from core.segments.evaluate import ProfileData
from core.segments.language import Strict
from core.segments.sql import FeatureColumns, Features, Render
from core.types import ConditionKind

# consents.purpose holds the purpose.
PURPOSE_MAX_LENGTH: int = CONSENTS.c.purpose.type.length


class ConsentCondition(Strict):
    consent: Annotated[str, Field(min_length=1, max_length=PURPOSE_MAX_LENGTH)]

    @field_validator("consent")
    @classmethod
    def _canonical(cls, value: str) -> str:
        # ``{consent: email}`` (the old name) means email_marketing.
        return purpose_name(value)


def python(cond: ConsentCondition, profile: ProfileData, as_of: datetime) -> bool:
    return cond.consent in profile.consents


def features(cond: ConsentCondition, request: Features) -> Render:
    def test(cols: FeatureColumns) -> sa.ColumnElement:
        return sa.exists().where(
            CONSENTS.c.profile_id == cols.profile_id,
            CONSENTS.c.purpose == cond.consent,
            CONSENTS.c.granted.is_(True),
        )

    return test


def figures(cond: ConsentCondition, profile: ProfileData, as_of: datetime):
    return {"granted": cond.consent in profile.consents}, []


CONSENT = ConditionKind(
    "consent",
    "the person granted this purpose",
    python,
    validate=ConsentCondition.model_validate,
    flat=True,
    features=features,
    figures=figures,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(CONSENT)
