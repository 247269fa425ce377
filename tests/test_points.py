"""The points model: SQL for everyone and Python for one profile agree."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import models, open_db
from core.ingestion import ingest
from core.maintenance import delete_all_data
from core.plugins import condition_kinds, scoring_models
from core.scoring import load_score_files, parse_definition, run_scores
from core.segments.data import load_profile_data
from core.types import ScoreError
from plugins.scoring.points import score_all, score_one, validate

AS_OF = datetime(2026, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
AGES = [0, 1, 59, 3600, 86399, 86400, 86401, 14 * 86400, 30 * 86400, 400 * 86400, -60]


@st.composite
def events(draw):
    out = []
    for i in range(draw(st.integers(0, 25))):
        age = draw(st.sampled_from(AGES)) + draw(st.sampled_from([0, 0.25, 0.75]))
        event = {
            "type": draw(st.sampled_from(["view", "cart", "buy"])),
            "user_id": draw(st.sampled_from(["u1", "u2", "u3"])),
            "ts": (AS_OF - timedelta(seconds=age)).isoformat(),
            "value": draw(st.sampled_from([None, 10.0, 80.0])),
            "message_id": f"m{i}",
        }
        out.append({k: v for k, v in event.items() if v is not None})
    return out


@st.composite
def params(draw):
    rules = []
    for _ in range(draw(st.integers(1, 3))):
        rule = {
            "event": draw(st.sampled_from(["view", "cart", ["view", "buy"]])),
            "points": draw(st.sampled_from([1, 2.5, 10, -3])),
        }
        if draw(st.booleans()):
            rule["cap"] = {
                "events": draw(st.integers(1, 3)),
                "per": draw(st.sampled_from(["1h", "1d"])),
            }
        if draw(st.integers(0, 3)) == 0:
            rule["where"] = {"value": {">=": 50}}
        rules.append(rule)
    data = {
        "rules": rules,
        "half_life": draw(st.sampled_from(["1d", "14d"])),
        "cap": draw(st.sampled_from([5, 100])),
    }
    if draw(st.booleans()):
        data["window"] = draw(st.sampled_from(["1d", "30d"]))
    return validate(data)


def check(engine, records, p):
    delete_all_data(engine)
    ingest(engine, records)
    with engine.connect() as conn:
        batch = score_all(conn, p, AS_OF, "s")["s"]
        for pid, value in batch.items():
            one = score_one(load_profile_data(conn, pid, AS_OF), p, AS_OF)
            assert math.isclose(one.value, value.value, rel_tol=1e-9, abs_tol=1e-9), (pid, p)
            assert 0 <= value.value <= 100


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(records=events(), p=params())
def test_sqlite_and_python_agree(fresh_sqlite, records, p):
    check(open_db(fresh_sqlite()), records, p)


@pytest.fixture(scope="module")
def pg_engine(pg_server):
    pg_server.create_database("points")
    return open_db(pg_server.url("points"))


@pytest.mark.postgres
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=events(), p=params())
def test_postgresql_and_python_agree(pg_engine, records, p):
    check(pg_engine, records, p)


def test_decay_caps_and_normalisation_by_hand(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    day = timedelta(days=1)
    ingest(
        engine,
        [
            {
                "type": "view",
                "user_id": "a",
                "ts": (AS_OF - 14 * day).isoformat(),
                "message_id": "1",
            },
            {"type": "buy", "user_id": "a", "ts": AS_OF.isoformat(), "message_id": "2"},
            *[
                {
                    "type": "view",
                    "user_id": "b",
                    "ts": (AS_OF - timedelta(minutes=i)).isoformat(),
                    "message_id": f"b{i}",
                }
                for i in range(5)
            ],
        ],
    )
    p = validate(
        {
            "rules": [
                {"event": "view", "points": 2, "cap": {"events": 2, "per": "1d"}},
                {"event": "buy", "points": 10},
            ],
            "half_life": "14d",
            "cap": 10,
        }
    )
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(models.Profile.user_id, models.Profile.id)).all())
        scores = score_all(conn, p, AS_OF, "s")["s"]
    a, b = scores[ids["a"]], scores[ids["b"]]
    # a: a view two weeks old is worth half (1 point) plus a purchase now (10): capped at 10.
    assert a.components["points"] == pytest.approx(11.0, abs=1e-6) and a.value == 100.0
    # b: five views in the last hour, only two count; each decayed by minutes.
    assert b.components["by_rule"][0] == pytest.approx(
        2 * (0.5 ** (0 / (14 * 86400))) + 2 * 0.5 ** (60 / (14 * 86400)), abs=1e-6
    )
    assert b.value == pytest.approx(100 * b.components["points"] / 10)


def test_bad_definitions_say_what_is_wrong(tmp_path):
    with pytest.raises(ScoreError, match="model 'pointz' is not one of"):
        parse_definition({"name": "e", "model": "pointz"}, "e.yaml", models=scoring_models())
    with pytest.raises(ScoreError, match=r"e.yaml: score 'e': params: half_life: .*not a duration"):
        parse_definition(
            {
                "name": "e",
                "model": "points",
                "params": {
                    "rules": [{"event": "x", "points": 1}],
                    "half_life": "two weeks",
                    "cap": 1,
                },
            },
            "e.yaml",
            models=scoring_models(),
        )
    with pytest.raises(ScoreError, match="params: rules"):
        parse_definition(
            {"name": "e", "model": "points", "params": {"half_life": "1d", "cap": 1}},
            models=scoring_models(),
        )


def test_runs_keep_history_and_feed_segments(fresh_sqlite, tmp_path):
    from core.segments.store import load_segment_files, run_segments
    from tests.conftest import PROJECT_ROOT

    engine = open_db(fresh_sqlite())
    ingest(
        engine,
        [
            {
                "type": "purchase",
                "user_id": "a",
                "ts": (AS_OF - timedelta(days=d)).isoformat(),
                "message_id": f"p{d}",
            }
            for d in range(1, 13)
        ],
    )
    definitions = load_score_files(PROJECT_ROOT / "examples" / "scores", scoring_models())
    run_scores(engine, definitions, AS_OF - timedelta(days=30))
    run_scores(engine, definitions, AS_OF)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.Score.as_of, models.Score.value)
            .where(models.Score.model == "engagement")
            .order_by(models.Score.as_of)
        ).all()
    assert [r.value for r in rows] == [0.0, pytest.approx(rows[1].value)] and rows[1].value > 70
    kinds = condition_kinds()
    segments = load_segment_files(PROJECT_ROOT / "examples" / "segments", kinds)
    run = run_segments(engine, AS_OF, kinds=kinds, definitions=segments)
    assert run.sizes["loyal_high_engagement"] == 1
    # As of a month earlier, the stored score then was 0: not a member.
    early = run_segments(engine, AS_OF - timedelta(days=29), kinds=kinds)
    assert early.sizes["loyal_high_engagement"] == 0


def test_cli_scores_run_and_show(tmp_path, monkeypatch, capsys):
    import json

    from core.cli import main
    from tests.conftest import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/s.db"
    ingest(open_db(db), [{"type": "email_click", "user_id": "kim", "ts": AS_OF.isoformat()}])
    scores = str(PROJECT_ROOT / "examples" / "scores")
    assert (
        main(["--db", db, "scores", "run", "--dir", scores, "--as-of", AS_OF.isoformat(), "--json"])
        == 0
    )
    run = json.loads(capsys.readouterr().out)
    assert run["scored"]["engagement"] == 1 and run["scored"]["rfm"] == 0  # kim never bought
    assert main(["--db", db, "scores", "show", "kim", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["score"] == "engagement" and row["value"] == pytest.approx(3.0)  # 3 points of 100
    assert main(["--db", db, "scores", "run", "--dir", str(tmp_path / "nope")]) == 1
    assert "no such directory" in capsys.readouterr().err
