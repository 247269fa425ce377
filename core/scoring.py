"""Scores: definitions, the scoring-model plugin contract, runs and storage.

A *model kind* (points, rfm, bgnbd...) is contributed by a plugin through
``register_scoring_models``; a *score definition* is data (YAML) naming a
kind and its parameters, e.g. ``examples/scores/engagement.yaml``:

    name: engagement
    model: points
    params: {...}

Running a definition stores one row per profile in ``scores`` (the history is
kept: every run adds rows with its as_of); the segment condition
``{score: engagement, op: "> 70"}`` reads the latest value at or before the
segment's as_of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.tables import SCORES
from core.errors import not_utf8
from core.types import ScoreError, ScoreValue, ScoringModel, is_snake_name

# scores.model holds the score's name.
SCORE_NAME_MAX_LENGTH: int = SCORES.c.model.type.length


@dataclass(frozen=True)
class ScoreDefinition:
    name: str
    # The model kind the definition names, resolved when it was parsed.
    model: ScoringModel
    params: Any
    description: str = ""
    file: str | None = None


def parse_definition(
    data: Any, file: str | None = None, *, models: Mapping[str, ScoringModel]
) -> ScoreDefinition:
    """Validate a score definition naming one of the scoring ``models``."""
    where = f"{file}: " if file else ""
    if not isinstance(data, dict):
        raise ScoreError(f"{where}a score definition is a mapping with name, model, params")
    name = data.get("name")
    if not is_snake_name(name, SCORE_NAME_MAX_LENGTH):
        raise ScoreError(
            f"{where}name {name!r} must be snake_case (a-z, 0-9, _), "
            f"at most {SCORE_NAME_MAX_LENGTH} characters"
        )
    unknown = set(data) - {"name", "model", "params", "description"}
    if unknown:
        raise ScoreError(f"{where}score '{name}': unknown key(s) {', '.join(sorted(unknown))}")
    kind = data.get("model")
    if kind not in models:
        raise ScoreError(
            f"{where}score '{name}': model {kind!r} is not one of {', '.join(sorted(models))}"
        )
    try:
        params = models[kind].validate(data.get("params") or {})
    except ValueError as exc:
        raise ScoreError(f"{where}score '{name}': params: {exc}") from None
    return ScoreDefinition(name, models[kind], params, str(data.get("description") or ""), file)


def load_score_files(
    directory: Path, models: Mapping[str, ScoringModel]
) -> dict[str, ScoreDefinition]:
    if not directory.is_dir():
        raise ScoreError(f"{directory}: no such directory")
    found: dict[str, ScoreDefinition] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ScoreError(f"{path}: {not_utf8(exc)}") from None
        except yaml.YAMLError as exc:
            raise ScoreError(f"{path}: not valid YAML: {exc}") from None
        for item in data if isinstance(data, list) else [data]:
            definition = parse_definition(item, str(path), models=models)
            if definition.name in found:
                raise ScoreError(f"{path}: score '{definition.name}' is defined twice")
            found[definition.name] = definition
    return found


def store_scores(
    conn: Connection, values: dict[str, dict[int, ScoreValue]], as_of: datetime
) -> dict[str, int]:
    """Add one row per profile and score name; earlier rows stay as history."""
    now = utcnow()
    counts = {}
    for name, per_profile in values.items():
        rows = [
            {
                "profile_id": pid,
                "model": name,
                "value": float(v.value),
                "components": v.components,
                "as_of": as_of,
                "computed_at": now,
            }
            for pid, v in per_profile.items()
        ]
        for row in rows:
            if row["value"] != row["value"] or row["value"] in (float("inf"), float("-inf")):
                raise ScoreError(f"score '{name}': not a number for profile {row['profile_id']}")
        conn.execute(SCORES.delete().where(SCORES.c.model == name, SCORES.c.as_of == as_of))
        if rows:
            conn.execute(SCORES.insert(), rows)
        counts[name] = len(rows)
    return counts


def run_scores(
    engine: Engine, definitions: dict[str, ScoreDefinition], as_of: datetime
) -> dict[str, int]:
    """Compute every definition for everyone and store the rows; name -> profiles scored."""
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for name, definition in definitions.items():
            values = definition.model.score_all(conn, definition.params, as_of, name)
            counts |= store_scores(conn, values, as_of)
    return counts


def latest_score_sql(model: str, profile_id: Any, as_of: datetime) -> Any:
    """A profile's value of ``model`` from the model's latest run at or before
    as_of; NULL when that run did not score the profile.

    Taking the run, not the profile's latest row, means someone a later run no
    longer scores (e.g. no purchase left in the window) has no score then,
    instead of keeping an old one.
    """
    runs = SCORES.alias("runs")
    run = (
        sa.select(sa.func.max(runs.c.as_of))
        .where(runs.c.model == model, runs.c.as_of <= as_of)
        .scalar_subquery()
    )
    s = SCORES.alias("s")
    return (
        sa.select(s.c.value)
        .where(s.c.profile_id == profile_id, s.c.model == model, s.c.as_of == run)
        .order_by(s.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def latest_scores(conn: Connection, profile_id: int) -> list[dict[str, Any]]:
    """Each score name's latest row for one profile, with its history length."""
    rows = conn.execute(
        sa.select(SCORES.c.model, SCORES.c.value, SCORES.c.components, SCORES.c.as_of)
        .where(SCORES.c.profile_id == profile_id)
        .order_by(SCORES.c.model, SCORES.c.as_of, SCORES.c.id)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for model, value, components, as_of in rows:
        entry = out.setdefault(model, {"score": model, "history": 0})
        entry.update(value=value, components=components or {}, as_of=as_of.isoformat())
        entry["history"] += 1
    return list(out.values())
