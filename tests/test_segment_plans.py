"""The SQL plans: what the scans read, which index the database uses, and
``segflow segments sql``."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.dialects.sqlite import pysqlite

from core.cli import main
from core.db import open_db
from core.ingestion import ingest
from core.plugins import condition_kinds
from core.segments.batch import statements
from core.segments.language import parse_segment
from core.segments.plans import compiled_sql, explain_sql, format_sql
from core.segments.sql import PLANS
from core.segments.store import load_segment_files, segments_by_name
from plugins.demo.generator import generate
from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples" / "segments"
KINDS = condition_kinds()
END = datetime(2026, 5, 1, tzinfo=UTC)


def seg(name, rule):
    return parse_segment({"name": name, "rule": rule}, kinds=KINDS)


def scan_filters(sql: str) -> list[str]:
    """The WHERE of each scan of events in the query text."""
    return re.findall(r"FROM events\s+WHERE (.*?)\s+GROUP BY", sql, re.S)


@pytest.mark.parametrize("plan", PLANS)
def test_scans_read_only_the_types_and_widest_windows_their_features_need(plan):
    segments = {
        "views": seg("views", {"event": "product_view", "within": "48h", "count": ">= 3"}),
        "more_views": seg("more_views", {"event": "product_view", "within": "7d"}),
        "ever_bought": seg("ever_bought", {"last": {"event": "purchase"}}),
    }
    st = statements(segments, END, pysqlite.dialect(), plan=plan)
    filters = " ".join(scan_filters(st.query))
    # product_view within its widest window (7d), purchase over all time,
    # and no other type: page_view is read by no segment.
    week = (END - timedelta(days=7)).isoformat(" ", "microseconds")[:26]
    assert f"events.type = 'product_view' AND events.ts > '{week}'" in filters
    assert "events.type = 'purchase'" in filters
    assert "page_view" not in st.query
    day2 = (END - timedelta(hours=48)).isoformat(" ", "microseconds")[:26]
    assert f"events.ts > '{day2}'" not in filters  # only inside the 48h feature


def test_sequence_times_read_only_the_lookback():
    segments = {
        "abandoned": seg(
            "abandoned",
            {
                "sequence": {
                    "first": "add_to_cart",
                    "then_not": "purchase",
                    "within": "1h",
                    "lookback": "24h",
                }
            },
        )
    }
    st = statements(segments, END, pysqlite.dialect())
    day = (END - timedelta(hours=24)).isoformat(" ", "microseconds")[:26]
    for where in scan_filters(st.query):
        assert f"events.ts > '{day}'" in where


def test_split_plan_scans_each_group_of_types_once():
    segments = {
        "a": seg("a", {"event": ["page_view", "product_view"], "within": "7d"}),
        "b": seg("b", {"event": "product_view", "within": "30d", "count": ">= 5"}),
        "c": seg("c", {"event": "email_click", "within": "30d"}),
    }
    one = statements(segments, END, pysqlite.dialect(), plan="one_scan")
    split = statements(segments, END, pysqlite.dialect(), plan="split_scans")
    assert len(scan_filters(one.query)) == 1
    # page_view and product_view share a feature: one scan; email_click another.
    groups = scan_filters(split.query)
    assert len(groups) == 2
    assert sum("email_click" in g for g in groups) == 1
    assert sum("product_view" in g and "page_view" in g for g in groups) == 1


@pytest.fixture(scope="module")
def demo_events():
    return list(generate(300, seed=5, days=30, end=END))


def test_incremental_scans_read_the_candidates_events_through_profile_ts(db_url, demo_events):
    engine = open_db(db_url)
    ingest(engine, demo_events)
    segments = segments_by_name(load_segment_files(EXAMPLES, KINDS))
    names = sorted(segments)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
        st = compiled_sql(segments, names, END, conn.dialect, incremental=True)
        plan = "\n".join(explain_sql(conn, st))
        full = "\n".join(explain_sql(conn, compiled_sql(segments, names, END, conn.dialect)))
    scans = [line for line in plan.splitlines() if re.search(r"\bevents\b", line)]
    assert "ix_events_profile_ts" in plan
    # Every read of events goes through (profile_id, ts), none through (type, ts).
    assert "ix_events_type_ts" not in plan, plan
    if engine.dialect.name == "sqlite":
        assert all("ix_events_profile_ts" in line for line in scans), plan
        # The full plan reads by (type, ts) instead.
        assert "ix_events_type_ts" in full and "ix_events_profile_ts" not in full, full
    else:
        assert not re.search(r"Seq Scan on events\b", plan), plan


def test_format_keeps_the_statement_and_lays_it_out():
    segments = segments_by_name(load_segment_files(EXAMPLES, KINDS))
    st = compiled_sql(segments, ["high_intent"], END, psycopg.dialect())
    text = format_sql(st.query)
    assert re.sub(r"\s+", "", text) == re.sub(r"\s+", "", st.query)
    assert len(text.splitlines()) > len(st.query.splitlines())
    assert "\n    SELECT events.profile_id" in text


def test_cli_sql_prints_each_dialect_and_explains(tmp_path, monkeypatch, capsys, demo_events):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES, tmp_path / "segments")
    db = f"sqlite:///{tmp_path}/x.db"
    ingest(open_db(db), demo_events)
    as_of = ["--as-of", END.isoformat()]
    assert (
        main(["--db", db, "segments", "sql", "high_intent", "--dialect", "postgresql", *as_of]) == 0
    )
    pg = capsys.readouterr().out
    assert pg.startswith("-- postgresql") and "'2026-04-29 00:00:00+00:00'" in pg
    assert main(["--db", db, "segments", "sql", "high_intent", *as_of]) == 0
    lite = capsys.readouterr().out
    assert lite.startswith("-- sqlite") and "'2026-04-29 00:00:00.000000'" in lite
    # Exactly the statements a run executes.
    segments = segments_by_name(load_segment_files(EXAMPLES, KINDS))
    st = compiled_sql(segments, ["high_intent"], END, pysqlite.dialect())
    flat = re.sub(r"\s+", "", lite)
    assert flat.endswith(re.sub(r"\s+", "", f"{st.query};\n\n{st.future};"))
    args = ["--db", db, "segments", "sql", "cart_abandoners", "--incremental", "--explain", *as_of]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "CREATE TEMPORARY TABLE IF NOT EXISTS segflow_eval_ids" in shown
    assert "-- plan" in shown and "ix_events_profile_ts" in shown
    assert main(["--db", db, "segments", "sql", "nope"]) == 2
    message = capsys.readouterr().err
    assert "unknown segment 'nope'; known: at_risk_customers, big_spenders" in message
