"""Monitoring: size history, drift, freshness, data quality, overlap, the
alerts' lifecycle, their actions and ``segflow monitor``.

Histories are constructed (rows written as runs, back-fills and ingestion
write them), so each case says exactly what must fire and what must not.
The database functions run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.config import Settings
from core.db import open_db
from core.db.tables import ALERTS, CHANGES, INGEST_COUNTS, MEMBERSHIPS, PROFILES, SEGMENT_SIZES
from core.db.tables import SEGMENTS as SEGMENTS_TABLE
from core.ingestion import ingest
from core.monitoring.alerts import (
    Alert,
    open_alerts,
    perform_alert_actions,
    run_checks,
    store_alerts,
)
from core.monitoring.drift import check_drift, drift_alerts, robust_band
from core.monitoring.freshness import freshness, freshness_alerts
from core.monitoring.history import daily_changes, daily_sizes
from core.monitoring.overlap import overlap
from core.monitoring.quality import (
    future_alerts,
    missing_alerts,
    missing_fields,
    spike_alerts,
)
from core.monitoring.settings import MonitorSettings

DAY = date(2026, 11, 30)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC)


def steady(days: int = 14, base: int = 1000, noise: tuple[int, ...] = (-5, 0, 5)) -> list:
    """(day, size) for the ``days`` days before DAY: base plus a repeating wiggle."""
    return [(DAY - timedelta(days=days - i), base + noise[i % len(noise)]) for i in range(days)]


# -- drift: the pure function -------------------------------------------------------------


def test_a_size_far_outside_the_band_alerts_with_the_reason_and_numbers():
    alert = check_drift("vip_buyers", [*steady(), (DAY, 412)], DAY)
    assert alert is not None
    assert (alert.check, alert.subject, alert.severity) == (
        "segment_drift",
        "vip_buyers",
        "critical",
    )
    assert alert.message == (
        "vip_buyers: 412 on 2026-11-30, outside 980-1,020 (median 1,000 +- 4 x MAD 5 over 14 days)"
    )
    assert alert.details["direction"] == "below" and alert.details["deviation"] > 100


def test_a_near_miss_inside_the_band_does_not_alert_and_just_outside_does():
    history = steady()
    assert check_drift("vip_buyers", [*history, (DAY, 1020)], DAY) is None
    assert check_drift("vip_buyers", [*history, (DAY, 980)], DAY) is None
    just_out = check_drift("vip_buyers", [*history, (DAY, 1021)], DAY)
    assert just_out is not None and just_out.severity == "warning"
    assert just_out.details["direction"] == "above"


def test_a_flat_history_has_a_floor_under_its_mad():
    """MAD 0 would make every change an alert: the floor is 0.5% of the median."""
    flat = [(d, 1000) for d, _ in steady()]
    band = robust_band([s for _, s in flat])
    assert band is not None and (band.mad, band.low, band.high) == (5.0, 980.0, 1020.0)
    assert check_drift("s", [*flat, (DAY, 1015)], DAY) is None
    assert check_drift("s", [*flat, (DAY, 1100)], DAY) is not None
    tiny = [(d, 0) for d, _ in steady()]  # an empty segment: at least one person of MAD
    assert check_drift("s", [*tiny, (DAY, 4)], DAY) is None
    assert check_drift("s", [*tiny, (DAY, 5)], DAY) is not None


def test_short_histories_and_missing_days_do_not_alert():
    recent = steady()[-6:]  # six days: under drift_min_days
    assert check_drift("s", [*recent, (DAY, 10)], DAY) is None
    assert check_drift("s", [*recent, (DAY, 10)], DAY, min_days=5) is not None
    assert check_drift("s", steady(), DAY) is None  # nothing stored on the day checked
    # Only the `days` days before count: an old different level is ignored.
    old = [(DAY - timedelta(days=30 + i), 50) for i in range(10)]
    assert check_drift("s", [*old, *steady(), (DAY, 1000)], DAY) is None


# -- the database: history, drift, freshness, quality, overlap -----------------------------


def at(type_: str, now: datetime, *offsets: timedelta, user_id: str = "a", **fields) -> list:
    """One event of ``type_`` at each ``now + offset``."""
    return [
        {"type": type_, "user_id": user_id, "ts": (now + d).isoformat(), **fields} for d in offsets
    ]


def _segments(engine, *names: str) -> dict[str, int]:
    with engine.begin() as conn:
        for name in names:
            conn.execute(SEGMENTS_TABLE.insert().values(name=name, definition={"rule": {}}))
        rows = conn.execute(sa.select(SEGMENTS_TABLE.c.name, SEGMENTS_TABLE.c.id))
        return {n: i for n, i in rows if n in names}


def _profiles(engine, n: int) -> list[int]:
    with engine.begin() as conn:
        conn.execute(PROFILES.insert(), [{"user_id": f"p{i}"} for i in range(n)])
        return list(conn.execute(sa.select(PROFILES.c.id).order_by(PROFILES.c.id)).scalars())


def test_daily_sizes_take_the_last_size_of_each_day_and_drift_reads_them(db_url):
    engine = open_db(db_url)
    ids = _segments(engine, "vip_buyers", "browsers")
    rows = []
    for d, size in [*steady(), (DAY, 412)]:
        start = datetime.combine(d, datetime.min.time(), UTC)
        # A run early in the day, then the one that counts, late in it.
        rows.append(
            {"segment_id": ids["vip_buyers"], "as_of": start + timedelta(hours=1), "size": 7}
        )
        rows.append(
            {"segment_id": ids["vip_buyers"], "as_of": start + timedelta(hours=23), "size": size}
        )
        rows.append(
            {
                "segment_id": ids["browsers"],
                "as_of": start + timedelta(hours=5),
                "size": 500 + (d.day % 3),
            }
        )
    with engine.begin() as conn:
        conn.execute(SEGMENT_SIZES.insert(), rows)
    sizes = daily_sizes(engine, segments=["vip_buyers"])
    assert list(sizes.columns) == ["day", "segment", "size", "as_of", "version"]
    assert len(sizes) == 15 and sizes["size"].tolist() == [s for _, s in steady()] + [412]
    assert sizes["day"].iloc[-1] == datetime(2026, 11, 30) and sizes["as_of"].iloc[-1].hour == 23
    assert len(daily_sizes(engine, since=DAY, until=DAY)) == 2
    (alert,) = drift_alerts(engine, DAY)
    assert alert.subject == "vip_buyers" and "412 on 2026-11-30" in alert.message
    assert drift_alerts(engine, DAY - timedelta(days=1)) == []


def test_daily_changes_count_entries_and_exits_per_day(db_url):
    engine = open_db(db_url)
    ids = _segments(engine, "cart")
    people = _profiles(engine, 5)
    at = datetime(2026, 11, 29, 10, tzinfo=UTC)
    changes = [(p, "entered", at) for p in people] + [
        (people[0], "exited", at + timedelta(days=1)),
        (people[1], "exited", at + timedelta(days=1, hours=13)),  # 23:00 the same UTC day
        (people[0], "entered", at + timedelta(days=1, hours=1)),
    ]
    with engine.begin() as conn:
        conn.execute(
            CHANGES.insert(),
            [
                {"segment_id": ids["cart"], "profile_id": p, "change": c, "at": t}
                for p, c, t in changes
            ],
        )
    frame = daily_changes(engine)
    assert frame[["segment", "entered", "exited"]].values.tolist() == [
        ["cart", 5, 0],
        ["cart", 1, 2],
    ]
    assert frame["day"].dt.date.tolist() == [date(2026, 11, 29), DAY]


def test_a_stale_source_alerts_and_a_fresh_one_does_not(db_url):
    engine = open_db(db_url)
    now = datetime.now(UTC)
    hour, day = timedelta(hours=1), timedelta(days=1)
    ingest(engine, at("page_view", now, -hour, -2 * hour, -3 * hour), source="api")
    ingest(engine, at("purchase", now, -3 * day, -4 * day, value=1.0), source="files")
    ingest(engine, at("page_view", now, -5 * day, user_id="b"), source="api")
    table = freshness(engine, now)
    assert table[["source", "type", "events"]].values.tolist() == [
        ["files", "purchase", 2],
        ["api", "page_view", 4],
    ]
    # The newest event counts, not the last one delivered (the 5-day-old one came last).
    assert table["lag_seconds"].tolist() == pytest.approx([3 * 86400, 3600], abs=1)
    config = MonitorSettings()
    (stale,) = freshness_alerts(engine, now, config.lag_for)
    assert (stale.subject, stale.severity) == ("files/purchase", "critical")
    assert "3d ago (allowed 1d)" in stale.message
    # Per-source and per-type overrides: the most specific wins.
    config = MonitorSettings(freshness={"files": "4d", "api/page_view": "30m"})
    assert [a.subject for a in freshness_alerts(engine, now, config.lag_for)] == ["api/page_view"]


def test_events_dated_after_their_receipt_alert_and_punctual_ones_do_not(db_url):
    engine = open_db(db_url)
    now = datetime.now(UTC)
    minute = timedelta(minutes=1)
    ingest(engine, at("page_view", now, -minute, -2 * minute), source="api")
    # Two minutes ahead: a clock a little off, within the tolerance.
    ingest(engine, at("page_view", now, 2 * minute), source="api")
    assert future_alerts(engine, now, timedelta(minutes=5)) == []
    ingest(engine, at("purchase", now, timedelta(hours=2), timedelta(hours=3)), source="pos")
    (alert,) = future_alerts(engine, now, timedelta(minutes=5))
    assert alert.subject == "pos/purchase future timestamps" and alert.details["events"] == 2
    assert alert.details["ahead_seconds"] == pytest.approx(3 * 3600, abs=2)


def test_ingestion_counts_duplicates_and_rejects_per_day_and_source(db_url):
    engine = open_db(db_url)
    records = [{"type": "page_view", "user_id": "a", "message_id": f"m{i}"} for i in range(6)]
    ingest(engine, records, source="api", batch_size=4)
    # Two duplicates, in the batch and of stored ones; three rejected, two after the last batch.
    again = [
        records[0],
        {"type": "", "user_id": "a"},
        {**records[0], "message_id": "m9"},
        records[1],
    ]
    ingest(engine, [*again, {"type": ""}, {"user_id": "x"}], source="api", batch_size=2)
    ingest(engine, [{"nothing": 1}], source="files")  # all rejected: no batch at all
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                INGEST_COUNTS.c.source,
                INGEST_COUNTS.c.accepted,
                INGEST_COUNTS.c.duplicates,
                INGEST_COUNTS.c.rejected,
            ).order_by(INGEST_COUNTS.c.source)  # fmt: skip
        ).all()
    assert [tuple(r) for r in rows] == [("api", 7, 2, 3), ("files", 0, 0, 1)]


def _counts(engine, source: str, days: dict[date, tuple[int, int, int]]) -> None:
    with engine.begin() as conn:
        conn.execute(
            INGEST_COUNTS.insert(),
            [
                {"day": d, "source": source, "accepted": a, "duplicates": x, "rejected": r}
                for d, (a, x, r) in days.items()
            ],  # fmt: skip
        )


def test_a_spike_of_duplicates_alerts_and_an_ordinary_day_does_not(db_url):
    engine = open_db(db_url)
    history = {DAY - timedelta(days=i): (1000, 10 + i % 3, 2) for i in range(1, 15)}
    _counts(engine, "api", {**history, DAY: (1000, 300, 2)})
    _counts(engine, "files", {**history, DAY: (1000, 13, 3)})
    (alert,) = spike_alerts(engine, DAY)
    assert (alert.subject, alert.details["count"]) == ("api duplicates", 300)
    assert "300 duplicates of 1,302 records on 2026-11-30 (23.0%)" in alert.message
    # Few records: under spike_min nothing alerts, whatever the share.
    assert spike_alerts(engine, DAY, min_count=301) == []


def test_a_spike_of_rejects_alerts(db_url):
    engine = open_db(db_url)
    history = {DAY - timedelta(days=i): (500, 0, 1) for i in range(1, 10)}
    _counts(engine, "webhooks", {**history, DAY: (500, 0, 120)})
    (alert,) = spike_alerts(engine, DAY)
    assert alert.subject == "webhooks rejects" and alert.details["kind"] == "rejects"


def _segment_summing_value(engine, tmp_path: Path) -> None:
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, run_segments

    folder = tmp_path / "segments"
    folder.mkdir(exist_ok=True)
    (folder / "big.yaml").write_text(
        "name: big_spenders\n"
        "rule: {event: purchase, within: 30d, sum: {property: value, op: '>= 100'}}\n"
    )
    (folder / "viewers.yaml").write_text("name: viewers\nrule: {event: page_view, within: 7d}\n")
    kinds = condition_kinds()
    run_segments(
        engine, datetime.now(UTC), kinds=kinds, definitions=load_segment_files(folder, kinds)
    )


def test_events_lacking_a_field_a_segment_sums_alert_and_complete_ones_do_not(db_url, tmp_path):
    engine = open_db(db_url)
    _segment_summing_value(engine, tmp_path)
    now = datetime.now(UTC)
    ts = (now - timedelta(hours=1)).isoformat()
    ingest(
        engine,
        [{"type": "purchase", "user_id": f"u{i}", "ts": ts, "value": 2.0} for i in range(40)],
    )
    ingest(engine, [{"type": "page_view", "user_id": "u1", "ts": ts}])  # no field needed
    assert missing_alerts(engine, now) == []
    table = missing_fields(engine, now)
    assert table[["type", "field", "events", "missing", "segments"]].values.tolist() == [
        ["purchase", "value", 40, 0, "big_spenders"]
    ]
    ingest(engine, [{"type": "purchase", "user_id": f"v{i}", "ts": ts} for i in range(10)])
    (alert,) = missing_alerts(engine, now)
    assert alert.subject == "purchase.value missing" and alert.details["share"] == 0.2
    assert "10 of 50 events" in alert.message and "big_spenders" in alert.message
    # Old events fall outside the window.
    assert missing_alerts(engine, now + timedelta(days=2)) == []


def test_overlap_matches_a_count_in_python(db_url):
    engine = open_db(db_url)
    ids = _segments(engine, "a", "b", "c", "empty")
    people = _profiles(engine, 60)
    rng = random.Random(7)
    members = {name: set(rng.sample(people, k)) for name, k in (("a", 30), ("b", 25), ("c", 5))}
    members["empty"] = set()
    since = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            MEMBERSHIPS.insert(),
            [
                {"segment_id": ids[n], "profile_id": p, "since": since}
                for n, ps in members.items()
                for p in ps
            ],  # fmt: skip
        )
    frame = overlap(engine)
    assert len(frame) == 6
    for r in frame.itertuples(index=False):
        x, y = members[r.a], members[r.b]
        assert (r.size_a, r.size_b, r.both) == (len(x), len(y), len(x & y))
        assert r.jaccard == pytest.approx(len(x & y) / len(x | y) if x | y else 0.0)
    assert overlap(engine, ["a", "c"])[["a", "b"]].values.tolist() == [["a", "c"]]


# -- alerts: lifecycle, actions, the command ------------------------------------------------


def _alert(subject: str, severity: str = "warning", message: str = "m") -> Alert:
    return Alert("segment_drift", subject, severity, message, DAY, {"n": 1})


def test_alerts_open_once_update_while_firing_and_resolve_when_they_stop(db_url):
    engine = open_db(db_url)
    t0 = NOON
    opened, updated, resolved = store_alerts(
        engine, "segment_drift", [_alert("a"), _alert("b")], t0
    )
    assert len(opened) == 2 and updated == resolved == []
    opened2, updated2, resolved2 = store_alerts(
        engine, "segment_drift", [_alert("a", "critical", "worse")], t0 + timedelta(days=1)
    )
    assert opened2 == [] and updated2 == [opened[0]] and resolved2 == [opened[1]]
    (a,) = open_alerts(engine)
    assert (a["subject"], a["severity"], a["message"]) == ("a", "critical", "worse")
    assert a["first_seen"] == t0 and a["last_seen"] == t0 + timedelta(days=1)
    # Firing again after it was resolved opens a new alert; the old one keeps its history.
    reopened, _, _ = store_alerts(
        engine, "segment_drift", [_alert("a"), _alert("b")], t0 + timedelta(days=2)
    )
    assert len(reopened) == 1 and reopened[0] not in opened
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ALERTS.c.subject, ALERTS.c.resolved_at).order_by(ALERTS.c.id)
        ).all()
    assert [(s, r is not None) for s, r in rows] == [("a", False), ("b", True), ("b", False)]
    # Other checks' alerts are not resolved by this one's run.
    store_alerts(engine, "source_freshness", [], t0 + timedelta(days=3))
    assert len(open_alerts(engine)) == 2


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers["Idempotency-Key"], body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.answers[:], _Receiver.seen[:] = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


def _stale_source(engine, days: int = 3) -> None:
    ts = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    ingest(engine, [{"type": "purchase", "user_id": "a", "ts": ts, "value": 1.0}], source="files")


def test_a_new_alert_calls_the_webhook_once_and_a_failed_call_is_retried_next_run(
    sqlite_url, receiver
):
    engine = open_db(sqlite_url)
    _stale_source(engine)
    hook = {"action": "webhook", "url": receiver, "retries": 0, "body": {"team": "data"}}
    settings = Settings(plugin_settings={"monitor": {"on_alert": [hook]}})
    _Receiver.answers[:] = [503]
    first = run_checks(engine, settings)
    (alert_id,) = first.opened["source_freshness"]
    key = f"alert:{alert_id}:0:webhook"
    assert first.actions == {key: "retry"}
    second = run_checks(engine, settings)  # the alert is still open: no second alert
    assert second.opened["source_freshness"] == [] and second.actions == {key: "done"}
    assert run_checks(engine, settings).actions == {}  # done: never again
    assert [k for k, _ in _Receiver.seen] == [key, key]
    body = _Receiver.seen[-1][1]
    assert body["data"]["team"] == "data" and body["run_id"] == alert_id
    assert body["data"]["alert"]["subject"] == "files/purchase"
    assert "allowed 1d" in body["data"]["alert"]["message"]
    (row,) = open_alerts(engine)
    with engine.connect() as conn:
        states = conn.execute(sa.select(ALERTS.c.actions).where(ALERTS.c.id == row["id"])).scalar()
    assert states["0:webhook"]["status"] == "done" and states["0:webhook"]["attempts"] == 2
    assert perform_alert_actions(engine, settings, [], NOON) == {}


def test_an_unknown_on_alert_action_is_an_error_naming_the_entry(sqlite_url):
    from core.config import ConfigError

    engine = open_db(sqlite_url)
    settings = Settings(plugin_settings={"monitor": {"on_alert": [{"action": "pager"}]}})
    with pytest.raises(ConfigError, match=r"\[monitor\] on_alert\[0\]: no action named 'pager'"):
        run_checks(engine, settings)
    bad_url = Settings(
        plugin_settings={"monitor": {"on_alert": [{"action": "webhook", "url": "nope"}]}}
    )
    with pytest.raises(ConfigError, match=r"on_alert\[0\]: url"):
        run_checks(engine, bad_url)


def test_segflow_monitor_exits_1_while_an_alert_is_open(run, tmp_path):
    assert run("--db", f"sqlite:///{tmp_path}/m.db", "monitor")[:2] == (0, "no open alerts\n")
    engine = open_db(f"sqlite:///{tmp_path}/m.db")
    _stale_source(engine)
    status, out, _ = run("--db", f"sqlite:///{tmp_path}/m.db", "monitor", "check")
    assert status == 1 and "1 opened, 0 resolved" in out and "open alerts" in out
    status, out, _ = run("--db", f"sqlite:///{tmp_path}/m.db", "monitor", "--json")
    (alert,) = json.loads(out)
    assert status == 1 and alert["check"] == "source_freshness" and alert["severity"] == "critical"
    (tmp_path / "segflow.toml").write_text('[monitor]\nfreshness = {files = "7d"}\n')
    status, out, _ = run("--db", f"sqlite:///{tmp_path}/m.db", "monitor", "check", "--json")
    assert status == 0 and json.loads(out)["open"] == []
    assert json.loads(out)["run"]["resolved"]["source_freshness"] == [alert["id"]]


def test_a_bad_monitor_setting_is_one_line_naming_file_section_and_key(run, tmp_path):
    (tmp_path / "segflow.toml").write_text('[monitor]\nfreshness_lag = "soon"\n')
    status, out, err = run("--db", f"sqlite:///{tmp_path}/m.db", "monitor", "check")
    assert status == 1 and out == ""
    assert err.startswith("error: segflow.toml: [monitor] freshness_lag: ")
    assert "'soon' is not a duration" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "segflow.toml").unlink()
    status, _, err = run("--db", f"sqlite:///{tmp_path}/m.db", "monitor", "check", "--day", "30/11")
    assert status == 2 and "--day '30/11': not a date" in err
