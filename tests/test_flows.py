"""The Prefect ingest flow, run for real against a local Prefect server.

The server (``prefect_server`` in conftest.py: `segflow server` in a
subprocess on 127.0.0.1 with its own SQLite database, analytics off) takes
seconds to start, so it is started once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.schemas.objects import StateType

import flows.ingest as ingest_flow
from core.db import make_engine
from core.db.tables import EVENTS, PROFILES
from core.ingestion import IngestError
from flows.ingest import IngestFlowError, ingest_files
from tests.helpers import task_runs, write_jsonl


def ev(type_: str, minute: int, **kw) -> dict:
    return {"type": type_, "ts": f"2026-03-01T10:{minute:02d}:00Z", **kw}


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    first = write_jsonl(
        tmp_path / "web.jsonl",
        [
            ev("page_view", 1, user_id="u1", url="/"),
            ev("product_view", 2, user_id="u1", product_id="P1"),
            '{"type": "page_view", "user_id": ',  # truncated line
            ev("purchase", 3, user_id="u1", product_id="P1", value=42.5, currency="USD"),
        ],
    )
    second = write_jsonl(
        tmp_path / "email.jsonl",
        [
            ev("email_open", 4, user_id="u2", campaign="spring"),
            ev("email_click", 5, user_id="u2", campaign="spring", url="/sale"),
        ],
    )
    return str(first), str(second)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/flow.db"


def stored_events(url: str) -> list[tuple[str, str, str | None, float | None]]:
    """(user_id, type, product_id, value) of every stored event, in time order."""
    with make_engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(PROFILES.c.user_id, EVENTS.c.type, EVENTS.c.product_id, EVENTS.c.value)
            .join(PROFILES, PROFILES.c.id == EVENTS.c.profile_id)
            .order_by(EVENTS.c.ts)
        )
        return [tuple(r) for r in rows]


EXPECTED_EVENTS = [
    ("u1", "page_view", None, None),
    ("u1", "product_view", "P1", None),
    ("u1", "purchase", "P1", 42.5),
    ("u2", "email_open", None, None),
    ("u2", "email_click", None, None),
]


def test_flow_imports_each_file_and_counts(prefect_server, files, database_url):
    web, email = files
    result = ingest_files([web, email], database_url=database_url)

    web_counts = result["files"][web]
    [rejection] = web_counts.pop("rejections")
    assert rejection.startswith(f"{web}:3: invalid JSON: ")
    assert web_counts == {"received": 4, "accepted": 3, "duplicates": 0, "rejected": 1}
    assert result["files"][email] == {
        "received": 2,
        "accepted": 2,
        "duplicates": 0,
        "rejected": 0,
        "rejections": [],
    }
    assert result["totals"] == {"received": 6, "accepted": 5, "duplicates": 0, "rejected": 1}
    assert stored_events(database_url) == EXPECTED_EVENTS


def test_rerun_adds_nothing(prefect_server, files, database_url):
    web, email = files
    ingest_files([web, email], database_url=database_url)
    again = ingest_files([web, email], database_url=database_url)

    assert again["totals"] == {"received": 6, "accepted": 0, "duplicates": 5, "rejected": 1}
    assert again["files"][email]["duplicates"] == 2
    assert stored_events(database_url) == EXPECTED_EVENTS


def test_one_task_run_per_file_named_after_it(prefect_server, files, database_url):
    web, email = files
    state = ingest_files([web, email], database_url=database_url, return_state=True)

    assert state.is_completed()
    runs = task_runs(state.state_details.flow_run_id)
    assert sorted(runs) == sorted([f"import {web}", f"import {email}"])
    assert all(r.state_type == StateType.COMPLETED and r.run_count == 1 for r in runs.values())


def test_missing_file_fails_its_task_once_and_the_flow(prefect_server, files, database_url):
    web, _ = files
    missing = str(Path(web).with_name("missing.jsonl"))

    state = ingest_files([missing, web], database_url=database_url, return_state=True)

    assert state.is_failed()
    with pytest.raises(IngestFlowError) as exc:
        state.result()
    assert f"{missing}: no such file" in str(exc.value)
    assert "1 of 2 files failed" in str(exc.value)
    runs = task_runs(state.state_details.flow_run_id)
    failed = runs[f"import {missing}"]
    assert failed.state_type == StateType.FAILED
    assert failed.run_count == 1  # retries=2, but a usage error is not retried
    assert "no such file" in failed.state.message
    # The other file was still imported.
    assert runs[f"import {web}"].state_type == StateType.COMPLETED
    assert len(stored_events(database_url)) == 3


def test_transient_failure_is_retried(prefect_server, files, database_url, monkeypatch):
    """The other half of the retry condition: a database failure is retried."""
    web, _ = files
    calls = []
    real_import = ingest_flow.import_file

    def flaky_import(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise IngestError("storing record 1 .. record 4 failed: database is locked")
        return real_import(*args, **kwargs)

    monkeypatch.setattr(ingest_flow, "import_file", flaky_import)
    monkeypatch.setattr(
        ingest_flow,
        "import_file_task",
        ingest_flow.import_file_task.with_options(retry_delay_seconds=0),
    )
    state = ingest_files([web], database_url=database_url, return_state=True)

    assert state.is_completed()
    assert state.result()["totals"]["accepted"] == 3
    assert len(calls) == 2
    assert task_runs(state.state_details.flow_run_id)[f"import {web}"].run_count == 2


def test_database_url_defaults_to_the_settings(prefect_server, files, database_url, monkeypatch):
    web, _ = files
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", database_url)
    assert ingest_files([web])["totals"]["accepted"] == 3
    assert len(stored_events(database_url)) == 3


def test_bad_mapping_fails_before_any_task(prefect_server, files, database_url):
    web, _ = files
    with pytest.raises(ValueError, match="colums"):
        ingest_files([web], database_url=database_url, mapping={"colums": {}})
