"""``score``: the latest value of a score compares true.

    {score: engagement, op: "> 70"}

"Latest" is the value from the score's latest run at or before as_of
(``core.scoring.latest_score_sql``); not scored by that run means no match.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import model_validator

from core.scoring import latest_score_sql
from core.segments.evaluate import ProfileData
from core.segments.language import Comparison, Strict
from core.segments.sql import FeatureColumns, Features, Render, compare_sql
from core.types import ConditionKind


class ScoreSpec(Strict):
    score: str
    op: Comparison


class ScoreCondition(Strict):
    score: ScoreSpec

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        # Accept the flat form {score: NAME, op: ...} too.
        if isinstance(data, dict) and isinstance(data.get("score"), str):
            return {"score": dict(data)}
        return data


def python(cond: ScoreCondition, profile: ProfileData, as_of: datetime) -> bool:
    return cond.score.op.test(profile.scores.get(cond.score.score))


def features(cond: ScoreCondition, request: Features) -> Render:
    def test(cols: FeatureColumns) -> sa.ColumnElement:
        latest = latest_score_sql(cond.score.score, cols.profile_id, cols.as_of)
        return sa.and_(latest.is_not(None), compare_sql(latest, cond.score.op))

    return test


def figures(cond: ScoreCondition, profile: ProfileData, as_of: datetime):
    return {"value": profile.scores.get(cond.score.score)}, []


SCORE = ConditionKind(
    "score",
    "the latest value of a score compares true",
    python,
    validate=ScoreCondition.model_validate,
    flat=True,
    features=features,
    figures=figures,
)


def register_conditions(register: Callable[[ConditionKind], None]) -> None:
    register(SCORE)
