"""The overview dashboard: its data functions, the notebook run as a script, the CLI.

Expectations are computed straight from the generated demo events in Python,
independently of the SQL in core.dashboards.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core import cli
from core.dashboards import (
    EVENTS_PER_DAY_COLUMNS,
    TOP_PRODUCTS_COLUMNS,
    events_per_day,
    top_products,
)
from core.db import open_db
from core.ingestion import ingest
from plugins.demo.generator import generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "overview.py"
END = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_events() -> list[dict]:
    return list(generate(200, seed=1, days=30, end=END))


@pytest.fixture
def demo_url(db_url: str, demo_events: list[dict]) -> str:
    report = ingest(open_db(db_url), demo_events, source="demo")
    assert report.accepted == len(demo_events) and not report.rejected
    return db_url


def utc_day(event: dict) -> date:
    return datetime.fromisoformat(event["ts"]).astimezone(UTC).date()


def expected_per_day(events: list[dict], since: date | None = None) -> dict:
    return dict(
        Counter((utc_day(e), e["type"]) for e in events if since is None or utc_day(e) >= since)
    )


def expected_top(events: list[dict], limit: int) -> list[dict]:
    views: Counter[str] = Counter()
    purchases: Counter[str] = Counter()
    revenue: defaultdict[str, float] = defaultdict(float)
    named: dict[str, tuple[datetime, str, str]] = {}
    for e in events:
        pid = e.get("product_id")
        if pid is None:
            continue
        if e["type"] == "product_view":
            views[pid] += 1
        elif e["type"] == "purchase":
            purchases[pid] += 1
            revenue[pid] += e["value"]
        props = e.get("properties") or {}
        ts = datetime.fromisoformat(e["ts"])
        if "name" in props and (pid not in named or ts >= named[pid][0]):
            named[pid] = (ts, props["name"], props.get("category"))
    ranked = sorted(views, key=lambda p: (-views[p], -purchases[p], p))[:limit]
    return [
        {
            "product_id": p,
            "name": named[p][1],
            "category": named[p][2],
            "views": views[p],
            "purchases": purchases[p],
            "revenue": round(revenue[p], 2),
        }
        for p in ranked
    ]


def per_day_dict(frame) -> dict:
    return {(row.day.date(), row.type): row.events for row in frame.itertuples()}


# -- core.dashboards ------------------------------------------------------------


def test_events_per_day_matches_the_events(demo_url, demo_events):
    frame = events_per_day(open_db(demo_url))

    assert list(frame.columns) == EVENTS_PER_DAY_COLUMNS
    assert per_day_dict(frame) == expected_per_day(demo_events)
    assert frame["events"].sum() == len(demo_events)
    assert frame["day"].is_monotonic_increasing
    assert len(frame["day"].unique()) >= 29  # a month of daily activity


def test_events_per_day_window_follows_the_latest_event(demo_url, demo_events):
    last = max(utc_day(e) for e in demo_events)
    frame = events_per_day(open_db(demo_url), days=7)

    assert per_day_dict(frame) == expected_per_day(demo_events, since=last - timedelta(days=6))
    assert frame["day"].dt.date.min() == last - timedelta(days=6)
    assert frame["day"].dt.date.max() == last


def test_top_products_matches_the_events(demo_url, demo_events):
    engine = open_db(demo_url)
    top = top_products(engine, limit=10)

    assert list(top.columns) == TOP_PRODUCTS_COLUMNS
    assert top.to_dict("records") == expected_top(demo_events, 10)
    # Every viewed product, so purchases and revenue are checked on more than the top ten.
    everything = top_products(engine, limit=1000).to_dict("records")
    assert everything == expected_top(demo_events, 1000)
    assert sum(p["purchases"] for p in everything) > 0


def test_empty_database_gives_empty_frames(db_url):
    engine = open_db(db_url)
    assert events_per_day(engine).empty
    assert list(events_per_day(engine, days=7).columns) == EVENTS_PER_DAY_COLUMNS
    assert list(top_products(engine).columns) == TOP_PRODUCTS_COLUMNS
    assert top_products(engine).empty
    with pytest.raises(ValueError, match="days must be >= 1"):
        events_per_day(engine, days=0)


# -- the notebook ---------------------------------------------------------------


def load_notebook():
    spec = importlib.util.spec_from_file_location("overview_notebook", NOTEBOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def test_notebook_runs_as_a_script(demo_url, demo_events, monkeypatch):
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", demo_url)
    outputs, defs = load_notebook().run()

    assert defs["database_url"] == demo_url
    summary = defs["summary"]
    assert summary["events"] == len(demo_events)
    assert summary["identified"] == len({e["user_id"] for e in demo_events if "user_id" in e})
    purchases = [e["value"] for e in demo_events if e["type"] == "purchase"]
    assert summary["revenue"] == pytest.approx(sum(purchases))
    # Default controls: all time, top 10.
    assert per_day_dict(defs["per_day"]) == expected_per_day(demo_events)
    assert defs["top"].to_dict("records") == expected_top(demo_events, 10)
    assert outputs  # the cells rendered (an exception in a cell would have raised)


def test_cli_exports_a_static_report(demo_url, demo_events, tmp_path):
    report = tmp_path / "overview.html"
    status = cli.main(["--db", demo_url, "dashboard", "overview", "--export-html", str(report)])

    assert status == 0
    html = report.read_text()
    top = expected_top(demo_events, 10)[0]
    assert top["product_id"] in html
    assert top["name"] in html
    assert f"{len(demo_events):,}" in html  # the events figure
    assert "Cannot open the database" not in html


def test_cli_export_with_a_bad_database_fails_in_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/missing-dir/segflow.db"
    report = tmp_path / "overview.html"
    status = cli.main(["--db", url, "dashboard", "overview", "--export-html", str(report)])

    assert status == 1
    assert "directory for the SQLite file does not exist" in capsys.readouterr().err
    assert not report.exists()


@pytest.mark.postgres
def test_days_are_utc_whatever_the_session_timezone(postgres_url):
    """date_trunc on timestamptz would follow the session TimeZone; the dashboards must not."""
    # Auckland is UTC+12: 23:30 UTC on May 1st is already May 2nd there.
    local_url = f"{postgres_url}?options=-c%20TimeZone%3DPacific/Auckland"
    engine = open_db(local_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar_one() == "Pacific/Auckland"
    ingest(
        engine,
        [
            {"type": "page_view", "user_id": "u1", "ts": "2024-05-01T23:30:00Z"},
            {"type": "page_view", "user_id": "u1", "ts": "2024-05-02T00:30:00Z"},
            {"type": "page_view", "user_id": "u1", "ts": "2024-05-02T11:59:00Z"},
        ],
    )
    assert per_day_dict(events_per_day(engine)) == {
        (date(2024, 5, 1), "page_view"): 1,
        (date(2024, 5, 2), "page_view"): 2,
    }
    assert per_day_dict(events_per_day(engine, days=1)) == {(date(2024, 5, 2), "page_view"): 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def port_closed(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_cli_serves_the_app_and_stops_with_it(tmp_path, demo_events):
    """`segflow dashboard overview` serves over HTTP on loopback; SIGTERM stops marimo too."""
    url = f"sqlite:///{tmp_path}/segflow.db"
    ingest(open_db(url), demo_events[:100], source="demo")
    port = free_port()
    command = [sys.executable, "-c", "from core.cli import entry; entry()"]  # = console script
    command += ["--db", url, "dashboard", "overview", "--headless", "--port", str(port)]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        page = wait_for_http(f"http://127.0.0.1:{port}/")
        assert "segflow overview" in page
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert port_closed(port), "marimo kept serving after segflow was terminated"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
