"""``segflow workflows run-tick`` killed with SIGKILL at each step, then run again:
every person gets their email exactly once (counted at a real SMTP server) and
the runs, actions and messages end as after an uninterrupted run.

Kill points (core/ingestion/crashpoints.py): ``tick.advanced`` (runs moved in
memory, nothing written), ``perform.performed`` (the emails handed to the SMTP
server, the actions' results not recorded: the send and the state update the
issue names), and ``deliver.updated`` (the first message's ``sent`` committed,
the others not sent yet).
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from core.automation.engine import enter, run_tick
from core.automation.language import default_registry, parse_workflow
from core.db import open_db
from core.db.tables import MESSAGES, WORKFLOW_ACTIONS, WORKFLOW_STATES
from core.plugins import DEFAULT_PLUGINS
from core.types import Entry
from tests.helpers import people, segflow_child
from tests.smtpserver import smtp_server

FROM = "Shop <news@shop.example>"
NOW = datetime.now(UTC).replace(microsecond=0)
WORKFLOW = """
name: welcome_series
trigger: {segment_entered: new_customers}
steps:
  - wait: 1h
  - send: {template: welcome, via: smtp}
"""
PEOPLE = 3


def prepared(url: str) -> None:
    engine = open_db(url)
    wf = parse_workflow(yaml.safe_load(WORKFLOW), default_registry())
    run_tick(engine, as_of=NOW - timedelta(days=1), definitions={wf.name: wf})
    ids = people(engine, PEOPLE)
    entered = NOW - timedelta(hours=2)
    enter(engine, {wf.name: [Entry(pid, entered) for pid in ids]}, as_of=entered)
    engine.dispose()


def state(url: str) -> dict:
    engine = open_db(url)
    with engine.connect() as conn:
        runs = conn.execute(
            sa.select(
                WORKFLOW_STATES.c.profile_id, WORKFLOW_STATES.c.status, WORKFLOW_STATES.c.step
            )
        ).all()
        actions = conn.execute(
            sa.select(WORKFLOW_ACTIONS.c.idempotency_key, WORKFLOW_ACTIONS.c.status)
        ).all()
        messages = conn.execute(
            sa.select(MESSAGES.c.idempotency_key, MESSAGES.c.status, MESSAGES.c.via)
        ).all()
    engine.dispose()
    return {"runs": sorted(runs), "actions": sorted(actions), "messages": sorted(messages)}


def tick(url: str, cwd, crash_at: str | None = None):
    return segflow_child(
        url, "workflows", "run-tick", "--as-of", NOW.isoformat(), cwd=cwd,
        plugins=",".join(DEFAULT_PLUGINS), crash_at=crash_at,
    )  # fmt: skip


@pytest.mark.parametrize(
    "crash_at", ["tick.advanced:1", "perform.performed:1", "deliver.updated:1"]
)
def test_a_killed_tick_run_again_sends_each_email_exactly_once(
    db_url, fresh_sqlite, tmp_path, crash_at
):
    with smtp_server() as (server, port):
        (tmp_path / "segflow.toml").write_text(
            f'secret_key = "{"s" * 32}"\n'
            f'[esp.smtp]\nhost = "127.0.0.1"\nport = {port}\nfrom = "{FROM}"\nstarttls = "never"\n'
        )
        reference = fresh_sqlite()
        prepared(reference)
        done = tick(reference, tmp_path)
        assert done.returncode == 0, done.stderr
        expected = state(reference)
        assert len(server.messages) == PEOPLE
        assert {s for _, s in expected["actions"]} == {"done"}
        server.messages.clear()

        prepared(db_url)
        killed = tick(db_url, tmp_path, crash_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        again = tick(db_url, tmp_path)
        assert again.returncode == 0, again.stderr
        received = server.message_ids()
        assert len(received) == PEOPLE and len(set(received)) == PEOPLE
        assert state(db_url) == expected
