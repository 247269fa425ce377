"""The pipeline flow, run for real on the session's Prefect server against SQLite
and PostgreSQL: its steps in order, a cart added in an imported file emailed
once after the workflow's wait, and a bad definition stopping it before it
imports anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from core.consents import set_consent
from core.db import make_engine
from core.db.tables import EVENTS, MESSAGES, PROFILES, WORKFLOW_ACTIONS, WORKFLOW_STATES
from flows.pipeline import pipeline

CART = """
name: cart
trigger: {event: {type: add_to_cart, key: properties.cart_id}}
exit_when: {event: purchase, within: 2h}
steps:
  - wait: 1h
  - send: {template: cart_abandonment, marketing: false}
"""
SEGMENT = """
name: carted
description: added to a cart in the last day
rule: {event: add_to_cart, within: 1d}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Definitions and a segflow.toml (secret key, outbox folder) as a deployment has them."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "cart.yaml").write_text(CART)
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "carted.yaml").write_text(SEGMENT)
    config = tmp_path / "segflow.toml"
    config.write_text(
        f'secret_key = "{"k" * 32}"\n[esp.outbox]\nfolder = "{tmp_path / "outbox"}"\n'
    )
    monkeypatch.setenv("SEGFLOW_CONFIG", str(config))
    monkeypatch.delenv("SEGFLOW_SECRET_KEY", raising=False)
    return tmp_path


def events_file(folder: Path, now: datetime) -> Path:
    """Two shoppers: ann adds to a cart and leaves, bob adds to his and buys."""

    def at(minutes: int) -> str:
        return (now + timedelta(minutes=minutes)).isoformat()

    rows = [
        {"type": "identify", "user_id": "ann", "ts": at(-30), "traits": {"email": "ann@x.example"}},
        {"type": "identify", "user_id": "bob", "ts": at(-30), "traits": {"email": "bob@x.example"}},
        {"type": "add_to_cart", "user_id": "ann", "ts": at(-10), "product_id": "P1",
         "value": 20.0, "currency": "EUR", "properties": {"cart_id": "c-ann"}},
        {"type": "add_to_cart", "user_id": "bob", "ts": at(-10), "product_id": "P2",
         "value": 30.0, "currency": "EUR", "properties": {"cart_id": "c-bob"}},
        {"type": "purchase", "user_id": "bob", "ts": at(-5), "product_id": "P2",
         "value": 30.0, "currency": "EUR"},
    ]  # fmt: skip
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def steps_of(flow_run_id) -> list[str]:
    """The names of a flow run's subflows, in the order they ran."""
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )
    assert all(r.state.is_completed() for r in runs)
    return [names[r.flow_id] for r in runs]


PASSWORD = "pipeline-test-password"


def with_password(url: str) -> str:
    """``url`` with a password, on PostgreSQL (the test server trusts local
    connections, so any password connects)."""
    if not url.startswith("postgresql"):
        return url
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def recorded_parameters() -> str:
    """Every flow run's parameters as the Prefect server holds them."""
    with get_client(sync_client=True) as client:
        return json.dumps([r.parameters for r in client.read_flow_runs()], default=str)


def sent_to(url: str) -> list[str]:
    with make_engine(url).connect() as conn:
        return list(
            conn.execute(
                sa.select(PROFILES.c.email)
                .join(MESSAGES, MESSAGES.c.profile_id == PROFILES.c.id)
                .where(MESSAGES.c.status == "sent")
            ).scalars()
        )


def test_the_pipeline_imports_starts_the_cart_run_and_sends_after_the_wait(
    prefect_server, db_url, project
):
    now = datetime.now(UTC).replace(microsecond=0)
    folders = {"segments_dir": str(project / "segments"), "scores_dir": None}
    db_url = with_password(db_url)
    state = pipeline(
        database_url=SecretStr(db_url),
        files=[str(events_file(project, now))],
        polls=[],
        workflows_dir=str(project / "workflows"),
        as_of=now,
        return_state=True,
        **folders,
    )
    folders["workflows_dir"] = None  # from now on, the stored definitions
    first = state.result()
    assert steps_of(state.state_details.flow_run_id) == [
        "ingest-files", "recommend", "segment", "automate", "send", "monitor",
    ]  # fmt: skip
    # Saved before the import, so the imported carts started their runs.
    assert first["workflows"] == {"cart": 1}
    assert first["ingest"]["files"]["totals"]["accepted"] == 5
    assert first["segment"]["segments"]["carted"]["size"] == 2
    assert first["send"]["performed"] == {}
    engine = make_engine(db_url)
    with engine.connect() as conn:
        started = conn.execute(
            sa.select(WORKFLOW_STATES.c.entry_key, WORKFLOW_STATES.c.status)
        ).all()
    # bob bought within the exit window: his run ended at once.
    assert sorted(started) == [("c-ann", "active"), ("c-bob", "exited")]
    # The pipeline and each of its steps recorded the URL, but not its password.
    assert "**********" in recorded_parameters()
    assert PASSWORD not in recorded_parameters()

    set_consent(engine, "ann", "email", True, "test")
    later = now + timedelta(hours=2)
    second = pipeline(database_url=db_url, polls=[], as_of=later, **folders)
    assert second["workflows"] is None and second["ingest"]["files"] is None
    assert second["automate"]["workflows"]["cart"]["actions"] == 1
    assert second["send"]["performed"] == {"send": 1} and second["send"]["done"] == 1
    assert sent_to(db_url) == ["ann@x.example"]
    assert len(list((project / "outbox").glob("*.eml"))) == 1

    third = pipeline(database_url=db_url, polls=[], as_of=later + timedelta(hours=1), **folders)
    assert third["send"]["performed"] == {}
    assert sent_to(db_url) == ["ann@x.example"]
    with engine.connect() as conn:
        (status,) = conn.execute(sa.select(WORKFLOW_ACTIONS.c.status)).scalars()
    assert status == "done"


def test_a_bad_workflow_stops_the_pipeline_before_it_imports(prefect_server, db_url, project):
    (project / "workflows" / "broken.yaml").write_text(
        "name: broken\ntrigger: {event: add_to_cart}\nsteps:\n  - wait: soon\n"
    )
    now = datetime.now(UTC)
    state = pipeline(
        database_url=db_url,
        files=[str(events_file(project, now))],
        polls=[],
        workflows_dir=str(project / "workflows"),
        segments_dir=str(project / "segments"),
        scores_dir=None,
        as_of=now,
        return_state=True,
    )
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "broken.yaml:4" in message and "'soon' is not a duration" in message
    with make_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one() == 0
    assert steps_of(state.state_details.flow_run_id) == []


def test_the_automate_flow_fails_once_on_a_bad_definition_and_send_performs_once(
    prefect_server, sqlite_url, project
):
    from flows.automate import automate
    from flows.send import send
    from tests.test_flows import task_runs

    (project / "bad").mkdir()
    (project / "bad" / "x.yaml").write_text("name: x\ntrigger: {event: a}\nsteps:\n  - hop: 1\n")
    state = automate(str(project / "bad"), database_url=sqlite_url, return_state=True)
    assert state.is_failed()
    assert "x.yaml:4" in str(state.result(raise_on_failure=False))
    (tick,) = task_runs(state.state_details.flow_run_id).values()
    assert tick.run_count == 1  # a definition error is not retried

    now = datetime.now(UTC).replace(microsecond=0)
    pipeline(database_url=sqlite_url, files=[str(events_file(project, now))], polls=[],
             workflows_dir=str(project / "workflows"), segments_dir=str(project / "segments"),
             scores_dir=None,
             as_of=now, perform=False)  # fmt: skip
    set_consent(make_engine(sqlite_url), "ann", "email", True, "test")
    later = now + timedelta(hours=2)
    ticked = automate(None, database_url=sqlite_url, as_of=later)
    assert ticked["workflows"]["cart"]["actions"] == 1
    first = send(database_url=sqlite_url, as_of=later)
    second = send(database_url=sqlite_url, as_of=later)
    assert first["performed"] == {"send": 1} and first["done"] == 1
    assert second["performed"] == {}
    assert sent_to(sqlite_url) == ["ann@x.example"]
