"""`segflow sync run | status | verify`, the workflows' `sync` action and the
Prefect `sync` flow, with the Mailchimp connector against its fake over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from core.db import open_db
from core.db.tables import SYNC_STATES, WORKFLOW_ACTIONS
from core.plugins import condition_kinds
from core.profiles import update_attributes
from core.segments.store import load_segment_files, run_segments
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.mailchimp import API_KEY, DEFAULT_LIST_ID
from plugins.esp.fakes.server import running
from tests.helpers import people

NOW = datetime.now(UTC).replace(microsecond=0)
SEGMENT = """
name: vip
description: the vip tier
rule: {attribute: tier, op: "==", value: vip}
"""


def project(folder: Path, url: str, base_url: str) -> None:
    """A store of 5 people (4 vip, p9 of them without consent) and a segflow.toml."""
    engine = open_db(url)
    ids = people(engine, 4)
    from core.ingestion import ingest

    ingest(engine, [{"type": "identify", "user_id": "p9", "traits": {"email": "p9@example.com"}}])
    with engine.begin() as conn:
        for pid in ids[:3]:
            update_attributes(conn, pid, {"tier": "vip"})
        nine = conn.execute(sa.text("SELECT id FROM profiles WHERE user_id = 'p9'")).scalar()
        update_attributes(conn, nine, {"tier": "vip"})
    (folder / "segments").mkdir()
    (folder / "segments" / "vip.yaml").write_text(SEGMENT)
    kinds = condition_kinds()
    run_segments(
        engine, NOW, kinds=kinds, definitions=load_segment_files(folder / "segments", kinds)
    )
    (folder / "segflow.toml").write_text(
        "[[segflow.connectors]]\n"
        f'name = "mc"\nkind = "mailchimp"\nbase_url = "{base_url}"\n'
        'api_key_env = "MC_TEST_KEY"\nsegments = ["vip"]\n'
        f'options = {{audience_id = "{DEFAULT_LIST_ID}"}}\n'
    )


@pytest.fixture
def fake(tmp_path, monkeypatch, sqlite_url):
    api = make_fake("mailchimp")
    with running(api) as base_url:
        project(tmp_path, sqlite_url, base_url)
        monkeypatch.setenv("SEGFLOW_CONFIG", str(tmp_path / "segflow.toml"))
        monkeypatch.setenv("MC_TEST_KEY", API_KEY)
        monkeypatch.setenv("SEGFLOW_TEST_DB", sqlite_url)
        yield api, sqlite_url


def cli(*args: str) -> tuple[int, str, str]:
    """segflow in a child process, on the test's database and segflow.toml."""
    import os
    import subprocess
    import sys

    env = os.environ
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "--db", env["SEGFLOW_TEST_DB"], *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(env["SEGFLOW_CONFIG"]).parent,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_dry_run_sends_nothing_then_run_status_and_verify(fake):
    api, url = fake
    status, out, err = cli("sync", "run", "--dry-run", "--json")
    assert status == 0, err
    (report,) = json.loads(out)
    assert report["dry_run"] and report["upserted"] == 4 and report["added"] == 4
    assert api.members() == {}
    assert "Traceback" not in err

    status, out, err = cli("sync", "run", "--json")
    assert status == 0, err
    (report,) = json.loads(out)
    assert (report["people"], report["upserted"], report["added"]) == (4, 4, 4)
    members = api.members()
    assert set(members) == {"p0@example.com", "p1@example.com", "p2@example.com", "p9@example.com"}
    # p9 never consented: a member who gets no marketing, never "subscribed".
    assert members["p9@example.com"]["status"] == "transactional"
    assert all(members[f"p{i}@example.com"]["status"] == "subscribed" for i in range(3))
    assert all(m["tags"] == ["vip"] for m in members.values())

    status, out, _ = cli("sync", "status", "--json")
    (row,) = json.loads(out)
    assert row["connector"] == "mc" and row["ok"] == 4 and row["last_run"]["status"] == "done"

    status, out, _ = cli("sync", "verify", "--connector", "mc")
    assert status == 0 and "0 differences" in out
    # A tag taken off in Mailchimp's UI, behind segflow's back: verify says so.
    api.lists[DEFAULT_LIST_ID].members[next(iter(api.lists[DEFAULT_LIST_ID].members))].tags.clear()
    status, out, _ = cli("sync", "verify", "--connector", "mc")
    assert status == 1 and "1 differences" in out and "segments" in out
    status, out, err = cli("sync", "run", "--reconcile", "--json")
    assert status == 0, err
    assert json.loads(out)[0]["added"] == 1
    assert cli("sync", "verify", "--connector", "mc")[0] == 0


def test_a_missing_key_or_connector_is_a_clear_error(fake, monkeypatch):
    monkeypatch.delenv("MC_TEST_KEY")
    status, _, err = cli("sync", "run")
    assert status == 2 and "MC_TEST_KEY is not set" in err and "Traceback" not in err
    monkeypatch.setenv("MC_TEST_KEY", API_KEY)
    status, _, err = cli("sync", "verify", "--connector", "nope")
    assert status != 0 and "no connector named 'nope'" in err and "Traceback" not in err


def test_a_refused_key_stops_the_run_at_its_first_401(fake, monkeypatch):
    api, _url = fake
    monkeypatch.setenv("MC_TEST_KEY", "0" * 32 + "-us1")
    status, out, err = cli("sync", "run")
    assert status == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "'mc'" in line and "MC_TEST_KEY" in line and "401" in line
    # Only the requests already in flight when the first 401 came back.
    from plugins.esp.mailchimp import SYNC

    answers = [what for _m, _p, what in api.log]
    assert set(answers) == {401} and len(answers) <= SYNC.limits.concurrency
    assert api.members() == {}


def test_the_sync_action_syncs_the_person_at_that_step(fake, tmp_path):
    from core.automation import perform_pending, run_tick
    from core.automation.engine import enter
    from core.automation.language import default_registry, parse_workflow
    from core.config import load_settings
    from core.types import Entry

    api, url = fake
    engine = open_db(url)
    wf = parse_workflow(
        yaml.safe_load("name: to_mc\ntrigger: {segment_entered: vip}\nsteps:\n  - sync: mc\n"),
        default_registry(),
    )
    run_tick(engine, as_of=NOW - timedelta(days=1), definitions={wf.name: wf})
    with engine.connect() as conn:
        p0, p9 = (
            conn.execute(sa.text(f"SELECT id FROM profiles WHERE user_id = '{u}'")).scalar()
            for u in ("p0", "p9")
        )
    enter(engine, {"to_mc": [Entry(p0, NOW)]}, as_of=NOW)
    report = perform_pending(engine, load_settings(), as_of=NOW)
    assert report.done == 1 and not report.failed
    # Only the person at the step was synced.
    assert list(api.members()) == ["p0@example.com"]
    with engine.connect() as conn:
        (action,) = conn.execute(sa.select(WORKFLOW_ACTIONS.c.status)).scalars()
        synced = conn.execute(sa.select(SYNC_STATES.c.profile_id)).scalars().all()
    assert action == "done" and synced == [p0]
    assert p9 not in synced


def test_the_sync_flow_runs_every_connector(fake, prefect_server):
    from flows.sync import sync

    api, url = fake
    result = sync(database_url=url)
    assert set(result) == {"mc"} and result["mc"]["upserted"] == 4
    assert len(api.members()) == 4
    again = sync(database_url=url)
    assert again["mc"]["upserted"] == 0 and again["mc"]["unchanged"] == 4
    # Each run is audited as the Prefect flow run that made it.
    from core.audit import list_records

    actors = [r.actor for r in list_records(open_db(url), action="sync.run")]
    assert len(actors) == 2 and len(set(actors)) == 2
    assert all(a.startswith("prefect:") and len(a) > len("prefect:") for a in actors), actors
