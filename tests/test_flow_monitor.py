"""The monitor flow, run for real on the session's Prefect server against
SQLite: it stores what ``run_checks`` finds, and a second run updates the
open alerts instead of opening them again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.db import open_db
from core.ingestion import ingest
from core.monitoring.alerts import open_alerts
from flows.monitor import monitor
from tests.helpers import task_runs


def test_monitor_flow_opens_alerts_once_and_resolves_them(prefect_server, sqlite_url):
    engine = open_db(sqlite_url)
    now = datetime.now(UTC).replace(microsecond=0)
    stale, fresh = now - timedelta(days=3), now - timedelta(hours=1)
    ingest(engine, [{"type": "purchase", "user_id": "a", "ts": stale.isoformat()}], source="pos")
    ingest(engine, [{"type": "page_view", "user_id": "a", "ts": fresh.isoformat()}], source="api")

    state = monitor(database_url=sqlite_url, as_of=now, return_state=True)
    first = state.result()
    # The stored campaign outcomes are refreshed first, then the checks run.
    runs = sorted(task_runs(state.state_details.flow_run_id).values(), key=lambda r: r.start_time)
    assert [r.name.split("-")[0] for r in runs] == ["refresh", "run"]
    (alert,) = open_alerts(engine)
    assert (alert["check"], alert["subject"]) == ("source_freshness", "pos/purchase")
    assert first["day"] == now.date().isoformat() and first["errors"] == {}
    assert first["opened"]["source_freshness"] == [alert["id"]]
    assert {"segment_drift", "source_freshness", "data_quality"} <= set(first["checks"])

    again = monitor(database_url=sqlite_url, as_of=now)
    assert again["opened"]["source_freshness"] == []
    assert again["updated"]["source_freshness"] == [alert["id"]]

    ingest(engine, [{"type": "purchase", "user_id": "a", "ts": fresh.isoformat()}], source="pos")
    later = monitor(database_url=sqlite_url, as_of=now)
    assert later["resolved"]["source_freshness"] == [alert["id"]] and open_alerts(engine) == []
