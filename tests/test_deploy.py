"""Deployments: built from [deploy] in segflow.toml, listed by `segflow deploy
--list`, and served by `segflow deploy` to a real local Prefect server, whose
scheduler creates their runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from tests.helpers import child_env

FLOWS = ["recommend", "scores", "segment", "automate", "send", "monitor", "pipeline"]


def schedules(deployment) -> list:
    return [entry.schedule for entry in deployment.schedules or []]


def write_config(folder: Path, text: str) -> None:
    (folder / "segflow.toml").write_text(text)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project folder, the working directory, no settings from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)
    return tmp_path


def test_default_deployments_and_schedules(project):
    from flows.config import EXAMPLES
    from flows.deploy import build_deployments

    built = {d.flow_name: d for d in build_deployments(load_settings())}

    # No [[sources.poll]] feed configured: no ingest deployment.
    assert list(built) == FLOWS
    assert {d.name for d in built.values()} == {"segflow"}
    crons = {name: [(s.cron, s.timezone) for s in schedules(d)] for name, d in built.items()}
    assert crons == {
        "recommend": [("0 1 * * *", "UTC")],
        "scores": [("0 2 * * *", "UTC")],
        "segment": [("*/5 * * * *", "UTC")],
        "automate": [("1-59/5 * * * *", "UTC")],
        "send": [("0 * * * *", "UTC")],
        "monitor": [("0 3 * * *", "UTC")],
        "pipeline": [],
    }
    assert built["segment"].parameters == {"directory": str(EXAMPLES / "segments")}
    assert built["automate"].parameters == {"directory": str(EXAMPLES / "workflows")}
    assert built["send"].parameters == {} and built["recommend"].parameters == {}
    assert built["monitor"].parameters == {}
    assert built["pipeline"].parameters == {
        "scores_dir": str(EXAMPLES / "scores"),
        "segments_dir": str(EXAMPLES / "segments"),
        "workflows_dir": str(EXAMPLES / "workflows"),
    }
    assert all(d.tags == ["segflow"] and not d.paused for d in built.values())


def test_schedules_names_and_folders_come_from_segflow_toml(project):
    from flows.deploy import build_deployments

    (project / "defs").mkdir()
    write_config(
        project,
        """
[segflow]
database_url = "sqlite:///shop.db"

[[segflow.sources.poll]]
name = "feed"
url = "http://127.0.0.1:9/events"

[segflow.deploy]
name = "shop"
timezone = "Europe/Paris"
segments = "defs"

[segflow.deploy.schedules]
ingest = "30s"
segment = "10m"
scores = "30 4 * * mon-fri"
send = false
pipeline = "@daily"
""",
    )
    built = {d.flow_name: d for d in build_deployments(load_settings())}

    # A feed is configured: its deployment comes first, as in the pipeline.
    assert list(built) == ["ingest-polls", *FLOWS]
    assert {f"{d.flow_name}/{d.name}" for d in built.values()} == {f"{f}/shop" for f in built}
    [ingest] = schedules(built["ingest-polls"])
    assert ingest.interval == timedelta(seconds=30)
    [seg] = schedules(built["segment"])
    assert (seg.interval, seg.timezone) == (timedelta(minutes=10), "Europe/Paris")
    [score] = schedules(built["scores"])
    assert (score.cron, score.timezone) == ("30 4 * * mon-fri", "Europe/Paris")
    assert schedules(built["send"]) == []  # false: served, run on demand only
    assert [s.cron for s in schedules(built["pipeline"])] == ["@daily"]
    # Not set: the defaults, in the configured timezone.
    assert [(s.cron, s.timezone) for s in schedules(built["automate"])] == [
        ("1-59/5 * * * *", "Europe/Paris")
    ]
    # Relative folders are resolved where segflow deploy runs.
    assert built["segment"].parameters == {"directory": str(project / "defs")}
    assert built["pipeline"].parameters["segments_dir"] == str(project / "defs")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*/5 * * *", "a cron expression has 5 fields"),
        ("75 * * * *", "minute '75' is not in 0-59"),
        ("0 3 * * fun", "day of week 'fun' is not in 0-7"),
        ("*/0 * * * *", "minute step '0' is not a positive number"),
        ("0 9-5 * * *", "hour range '9-5' runs backwards"),
        ("5x", "neither a cron expression (5 fields) nor an interval"),
    ],
)
def test_a_bad_schedule_is_an_error_naming_file_and_key(project, run, value, message):
    write_config(project, f'[deploy.schedules]\nsegment = "{value}"\n')

    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value).startswith("segflow.toml: [deploy] schedules.segment: ")
    assert message in str(exc.value)
    # Any command says so, in one line: the settings are checked when they load.
    status, _, err = run("deploy", "--list")
    assert status == 1
    assert err.startswith("error: segflow.toml: [deploy] schedules.segment: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "expression",
    ["*/5 * * * *", "1-59/5 * * * *", "0 2 * * *", "0,30 8-18 1-15 jan-jun 1-5", "@hourly"],
)
def test_accepted_cron_expressions_are_prefects_too(expression):
    from prefect.schedules import Cron

    from flows.config import check_cron

    assert check_cron(expression) == expression
    assert Cron(expression).cron == expression


def test_deploy_list_prints_what_it_would_serve(project, run):
    import json

    from flows.deploy import build_deployments, describe

    status, out, _ = run("deploy", "--list", "--json")
    assert status == 0
    rows = json.loads(out)
    assert rows == [describe(d) for d in build_deployments(load_settings())]
    assert [(r["deployment"], r["schedule"]) for r in rows] == [
        ("recommend/segflow", "cron 0 1 * * * (UTC)"),
        ("scores/segflow", "cron 0 2 * * * (UTC)"),
        ("segment/segflow", "cron */5 * * * * (UTC)"),
        ("automate/segflow", "cron 1-59/5 * * * * (UTC)"),
        ("send/segflow", "cron 0 * * * * (UTC)"),
        ("monitor/segflow", "cron 0 3 * * * (UTC)"),
        ("pipeline/segflow", "on demand"),
    ]

    status, out, _ = run("deploy", "--dry-run")
    assert status == 0
    assert "would serve: 7" in out
    assert "segment/segflow" in out and "cron */5 * * * * (UTC)" in out


def test_deploy_without_a_prefect_api_says_how_to_get_one(project, run):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        status, out, err = run("deploy")
    assert status == 1
    assert out == ""
    assert "segflow server" in err and "PREFECT_API_URL=http://127.0.0.1:4200/api" in err
    assert "schedules would never fire" in err


def next_at(hour: int, after: datetime) -> datetime:
    at = after.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > after else at + timedelta(days=1)


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"segflow deploy exited ({proc.returncode}): {log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s: {log.read_text()}")
        time.sleep(0.5)


def start_deploy(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """`segflow deploy` started in ``folder``, its output in ``folder``/deploy.log."""
    log = folder / "deploy.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "deploy"],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def test_served_deployments_get_runs_from_their_schedules(prefect_server, tmp_path):
    """`segflow deploy` serves to the session's Prefect server; its scheduler
    creates runs at the configured times; stopping pauses the schedules."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    # Schedules that fire hours from now: no run starts while the test runs.
    write_config(
        tmp_path,
        f"""
[segflow]
database_url = "sqlite:///{tmp_path}/served.db"

[segflow.deploy]
name = "served"

[segflow.deploy.schedules]
scores = "0 3 * * *"
segment = "0 4 * * *"
automate = "0 5 * * *"
send = "6h"
""",
    )
    env = child_env("flows.commands") | {
        "PREFECT_API_URL": prefect_server,
        "SEGFLOW_ACTOR": "release-job",
    }
    started = datetime.now(UTC)
    proc, log = start_deploy(tmp_path, env)
    try:
        with get_client(sync_client=True) as client:

            def deployment(name: str):
                try:
                    return client.read_deployment_by_name(f"{name}/served")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

            scores = wait_for("deployment", lambda: deployment("scores"), 60, proc, log)
            send = wait_for("deployment", lambda: deployment("send"), 10, proc, log)

            def scheduled(dep):
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                        )
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                )

            score_runs = wait_for("scheduled scores run", lambda: scheduled(scores), 30, proc, log)
            send_runs = wait_for("scheduled send runs", lambda: scheduled(send), 30, proc, log)

            assert [s.schedule.cron for s in scores.schedules] == ["0 3 * * *"]
            assert not scores.paused
            assert score_runs[0].expected_start_time == next_at(3, started)
            first = score_runs[0].expected_start_time
            assert [r.expected_start_time - first for r in score_runs[:3]] == [
                timedelta(days=d) for d in range(3)
            ]
            assert score_runs[0].parameters == {"directory": scores.parameters["directory"]}
            times = [r.expected_start_time for r in send_runs]
            steps = [b - a for a, b in zip(times, times[1:], strict=False)]
            assert len(steps) >= 1 and steps == [timedelta(hours=6)] * len(steps)
            assert send_runs[0].expected_start_time > started

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
            assert "stopped serving" in log.read_text()
            assert client.read_deployment_by_name("scores/served").paused
        # The audit record names who served which deployments on which schedules.
        from core.audit import list_records
        from core.db import open_db

        (served,) = list_records(open_db(f"sqlite:///{tmp_path}/served.db"))
        assert (served.actor, served.action, served.target) == ("release-job", "deploy.serve",
                                                                "served")  # fmt: skip
        assert served.details["deployments"]["scores/served"] == "cron 0 3 * * * (UTC)"
        assert served.details["deployments"]["send/served"] == "every 6:00:00"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_sigterm_while_registering_stops_serving_with_the_schedules_paused(
    prefect_server, tmp_path
):
    """SIGTERM as soon as the first deployment is registered, before the runner
    has taken over signals: still a clean stop, and nothing left scheduled."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    write_config(
        tmp_path,
        f"""
[segflow]
database_url = "sqlite:///{tmp_path}/early.db"

[segflow.deploy]
name = "early"
""",
    )
    env = child_env("flows.commands") | {"PREFECT_API_URL": prefect_server}
    proc, log = start_deploy(tmp_path, env)
    try:
        with get_client(sync_client=True) as client:

            def registered():
                return client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["early"]))
                )

            deadline = time.monotonic() + 60
            while not registered():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
            found = registered()
            assert found and all(d.paused for d in found), [(d.name, d.paused) for d in found]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
