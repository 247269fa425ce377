"""The analyst notebooks (dashboard, segment lab): their data functions, each
notebook run as a script on a small demo store, the empty-database message,
`segflow dashboard NAME`, static exports, and the dashboard in a real browser.

The store is built the way the daily pipeline leaves it: demo events, scores
weekly, the example segments run every day. Expectations come from what the
runs reported and from the Python (real-time) evaluator, independently of the
SQL behind the notebooks.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import core
from core import cli
from core import segment_lab as lab
from core.dashboards import (
    FLOW_COLUMNS,
    SCORE_BINS_COLUMNS,
    SIZE_HISTORY_COLUMNS,
    score_distribution,
    score_models,
    segment_flows,
    segment_size_history,
)
from core.db import open_db
from core.db.tables import CHANGES, MEMBERSHIPS, PROFILES, SCORES, SEGMENT_SIZES
from core.ingestion import ingest
from core.segments.data import load_profile_data
from core.segments.evaluate import evaluate
from core.segments.language import SegmentError
from plugins.demo.generator import generate
from tests.conftest import PROJECT_ROOT
from tests.helpers import chromium_and_playwright
from tests.test_dashboard import free_port, port_closed, wait_for_http

NOTEBOOKS = PROJECT_ROOT / "notebooks"
EXAMPLES = PROJECT_ROOT / "examples"
ARTIFACTS = Path(os.environ.get("SEGFLOW_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
END = datetime(2024, 6, 1, tzinfo=UTC)
HISTORY_DAYS = 10
KINDS = core.condition_kinds()


def build_store(url: str) -> dict[str, Any]:
    """Demo events, then what a daily pipeline does: scores weekly, the example
    segments every day (a full run, then incremental); what each run reported."""
    events = list(generate(250, seed=4, days=30, end=END))
    report = ingest(open_db(url), events, source="demo")
    assert report.accepted == len(events) and not report.rejected
    engine = open_db(url)
    scores = core.load_score_files(EXAMPLES / "scores", core.scoring_models())
    segments = core.load_segment_files(EXAMPLES / "segments", KINDS)
    runs = []
    for k in range(HISTORY_DAYS):
        as_of = END - timedelta(days=HISTORY_DAYS - 1 - k)
        if k % 7 == 0:
            core.run_scores(engine, scores, as_of)
        runs.append(
            core.run_segments(engine, as_of, kinds=KINDS, definitions=segments if k == 0 else None)
        )
    return {"url": url, "events": events, "runs": runs}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("notebooks")
    return build_store(f"sqlite:///{folder / 'demo.db'}")


@pytest.fixture(scope="module")
def empty_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('empty') / 'empty.db'}"
    open_db(url).dispose()
    return url


def reported_sizes(runs) -> dict:
    return {(r.as_of.date(), name): size for r in runs for name, size in r.sizes.items()}


def reported_flows(runs) -> dict:
    out = {}
    for r in runs:
        for name in r.sizes:
            if r.entered[name] or r.exited[name]:
                out[(r.as_of.date(), name)] = (r.entered[name], r.exited[name])
    return out


def python_members(url: str, segment, as_of: datetime) -> set[int]:
    """Members by the real-time evaluator, person by person (saved segments it
    refers to evaluated for each person first)."""
    engine = open_db(url)
    saved = core.load_segment_files(EXAMPLES / "segments", KINDS)
    rules = {n: f.segment.rule for n, f in saved.items()} if saved else {}
    with engine.connect() as conn:
        ids = conn.execute(
            sa.select(PROFILES.c.id).where(PROFILES.c.merged_into.is_(None))
        ).scalars()
        members = set()
        for pid in ids:
            data = load_profile_data(conn, pid, as_of)
            for ref in sorted(segment.dependencies()):
                data.segments[ref] = evaluate(rules[ref], data, as_of).member
            if evaluate(segment.rule, data, as_of).member:
                members.add(pid)
    return members


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_notebook", NOTEBOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def text_of(outputs) -> str:
    return " ".join(str(getattr(o, "text", "")) for o in outputs if o is not None)


def stored_counts(url: str) -> tuple[int, int, int]:
    with open_db(url).connect() as conn:
        return tuple(
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (SEGMENT_SIZES, MEMBERSHIPS, CHANGES)
        )


# -- core.dashboards ----------------------------------------------------------------------


def test_size_history_is_what_the_runs_stored(store):
    frame = segment_size_history(open_db(store["url"]), days=None)
    assert list(frame.columns) == SIZE_HISTORY_COLUMNS
    got = {(r.day.date(), r.segment): r.size for r in frame.itertuples()}
    assert got == reported_sizes(store["runs"])
    assert frame["day"].nunique() == HISTORY_DAYS and sum(got.values()) > 0
    # The window follows the latest stored size.
    last3 = segment_size_history(open_db(store["url"]), days=3)
    assert sorted(last3["day"].dt.date.unique()) == [
        (END - timedelta(days=d)).date() for d in (2, 1, 0)
    ]


def test_a_second_run_on_a_day_replaces_that_day_in_the_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    events = list(generate(40, seed=9, days=10, end=END))
    ingest(open_db(url), events)
    engine = open_db(url)
    segments = core.load_segment_files(EXAMPLES / "segments", KINDS)
    core.run_segments(engine, END - timedelta(hours=20), kinds=KINDS, definitions=segments)
    later = core.run_segments(engine, END - timedelta(hours=1), kinds=KINDS)
    frame = segment_size_history(engine)
    assert {r.segment: r.size for r in frame.itertuples()} == later.sizes
    assert frame["day"].nunique() == 1


def test_flows_are_the_runs_entered_and_exited(store):
    frame = segment_flows(open_db(store["url"]), days=None)
    assert list(frame.columns) == FLOW_COLUMNS
    got = {(r.day.date(), r.segment): (r.entered, r.exited) for r in frame.itertuples()}
    assert got == reported_flows(store["runs"])
    assert frame["exited"].sum() > 0  # people left segments too, not only the first run


def test_score_distribution_bins_the_latest_run(store):
    engine = open_db(store["url"])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SCORES.c.model, SCORES.c.as_of, SCORES.c.value)).all()
    latest = {m: max(a for mm, a, _ in rows if mm == m) for m, _, _ in rows}
    assert score_models(engine) == sorted(latest) and {"engagement", "rfm"} <= set(latest)
    for model, as_of in latest.items():
        bins = score_distribution(engine, model, bins=10)
        assert list(bins.columns) == SCORE_BINS_COLUMNS and set(bins["model"]) == {model}
        values = [v for m, a, v in rows if m == model and a == as_of]
        assert len(bins) == 10 and bins["profiles"].sum() == len(values)
        low, high = min(values), max(values)
        assert bins["low"].iloc[0] == pytest.approx(low)
        assert bins["high"].iloc[-1] == pytest.approx(high if high > low else low + 10)
        width = (high - low) / 10 or 1.0
        expected = Counter(min(int((v - low) / width), 9) for v in values)
        assert list(bins["profiles"]) == [expected.get(i, 0) for i in range(10)], model


def test_empty_database_gives_empty_frames(empty_url):
    engine = open_db(empty_url)
    assert segment_size_history(engine).empty
    assert list(segment_flows(engine).columns) == FLOW_COLUMNS
    assert score_models(engine) == [] and score_distribution(engine, "engagement").empty
    with pytest.raises(ValueError, match="days must be >= 1"):
        segment_size_history(engine, days=0)


# -- core.segment_lab ---------------------------------------------------------------------


HIGH_INTENT = (EXAMPLES / "segments" / "high_intent.yaml").read_text()
CARTS = (EXAMPLES / "segments" / "cart_abandoners.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nrule:\n  all:\n    - {event: purchase, within: 3q}\n",
            "definition: segment 'x': rule.all[0].within: '3q' is not a duration",
        ),
        ("name: x\nrule: {nope: 1}\n", "definition: segment 'x': rule: cannot tell"),
        ("name: [x\n", "definition: not valid YAML at line 2, column 1"),
        ("", "definition: empty"),
        (
            "name: Bad Name\nrule: {event: purchase}\n",
            "definition: name 'Bad Name' must be snake_case",
        ),
    ],
)
def test_a_bad_definition_names_where(text, message):
    with pytest.raises(SegmentError) as caught:
        lab.parse_definition(text, KINDS)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_lab_preview_history_explain_and_overlap_agree_with_the_python_evaluator(store):
    url = store["url"]
    before = stored_counts(url)
    segment = lab.parse_definition(HIGH_INTENT, KINDS)
    carts = lab.parse_definition(CARTS, KINDS)
    engine = open_db(url)
    with engine.connect() as conn:
        as_of = lab.latest_event_time(conn)
        preview = lab.preview(conn, segment, KINDS, as_of, sample=5)
        times = lab.history_times(as_of, 3, timedelta(days=4))
        past = lab.history(conn, segment, KINDS, times)
        both = lab.overlap(conn, segment, carts, KINDS, as_of)
        who = preview.sample[0]
        why = lab.explain_member(conn, segment, KINDS, who["id"], as_of)
    assert as_of == max(datetime.fromisoformat(e["ts"]) for e in store["events"])
    now = python_members(url, segment, as_of)
    assert preview.size == len(now) > 0
    assert [s["profile_id"] for s in preview.sample] == sorted(now)[:5]
    assert [p["as_of"] for p in past] == [
        as_of - timedelta(days=8),
        as_of - timedelta(days=4),
        as_of,
    ]
    assert [p["size"] for p in past] == [len(python_members(url, segment, t)) for t in times]
    cart_members = python_members(url, carts, as_of)
    assert (both.only_a, both.both, both.only_b) == (
        len(now - cart_members),
        len(now & cart_members),
        len(cart_members - now),
    )
    assert why["member"] is True and why["profile_id"] == who["profile_id"]
    lines = lab.explain_lines(why["rule"])
    assert lines[0].startswith("yes  all") and any("product_view" in x for x in lines)
    assert stored_counts(url) == before  # the lab writes nothing


def test_lab_definition_named_like_a_saved_segment_stands_in_for_it(store):
    url = store["url"]
    loose = lab.parse_definition("name: high_intent\nrule: {event: page_view, within: 30d}", KINDS)
    with open_db(url).connect() as conn:
        as_of = lab.latest_event_time(conn)
        looser = lab.preview(conn, loose, KINDS, as_of).size
        saved = lab.preview(conn, lab.parse_definition(HIGH_INTENT, KINDS), KINDS, as_of).size
        with pytest.raises(SegmentError, match="both definitions are named 'high_intent'"):
            lab.overlap(conn, loose, loose, KINDS, as_of)
    assert looser == len(python_members(url, loose, as_of)) > saved


# -- campaigns ------------------------------------------------------------------------------

CAMPAIGN_ARMS = {"email_a": (60, 0.5, 0.2), "email_b": (50, 0.4, 0.1), "none": (70, 0.2, 0.05)}


def purchase(uid: str, value: float, at: datetime) -> dict:
    return {
        "type": "purchase",
        "user_id": uid,
        "value": value,
        "currency": "EUR",
        "ts": at.isoformat(),
    }


def campaign_events() -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Imported assignments of a 3-arm campaign ("none" the holdout) with visits
    and purchases after them, and each arm's figures computed here."""
    import random

    rng = random.Random(8)
    events: list[dict] = []
    expected: dict[str, dict[str, float]] = {}
    start = END - timedelta(days=20)
    person = 0
    for arm, (n, visit_p, buy_p) in CAMPAIGN_ARMS.items():
        visited = bought = 0
        revenue = 0.0
        for _ in range(n):
            person += 1
            uid = f"c{person:04d}"
            at = start + timedelta(hours=person)
            events.append(
                {
                    "type": "campaign_assigned",
                    "user_id": uid,
                    "ts": at.isoformat(),
                    "campaign": "spring",
                    "properties": {"arm": arm, "holdout": arm == "none", "segment": "buyers"},
                }
            )
            if rng.random() < visit_p:
                visited += 1
                seen = at + timedelta(days=2)
                events.append({"type": "page_view", "user_id": uid, "ts": seen.isoformat()})
                if rng.random() < buy_p / visit_p:
                    bought += 1
                    value = round(rng.uniform(20, 120), 2)
                    revenue += value
                    paid = at + timedelta(days=3)
                    events.append(purchase(uid, value, paid))
            # Outside the 14-day window: counts for nothing.
            events.append(purchase(uid, 999.0, at + timedelta(days=15)))
        expected[arm] = {
            "n": n,
            "visit_rate": visited / n,
            "conversion_rate": bought / n,
            "revenue_per_person": revenue / n,
        }
    return events, expected


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('campaigns') / 'campaigns.db'}"
    events, expected = campaign_events()
    report = ingest(open_db(url), events, source="crm")
    assert report.accepted == len(events) and not report.rejected
    return {"url": url, "expected": expected}


def test_campaigns_notebook_runs_as_a_script(campaign_store, monkeypatch):
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", campaign_store["url"])
    outputs, defs = load("campaigns").run()
    # Never refreshed: computed from the events, and it says so.
    assert defs["freshness"].startswith("Computed from the events")
    assert_campaign_figures(defs, campaign_store["expected"])


def test_campaigns_notebook_reads_the_refreshed_outcomes(campaign_store, monkeypatch):
    from core.monitoring.outcomes import refresh_outcomes

    refresh_outcomes(open_db(campaign_store["url"]))
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", campaign_store["url"])
    outputs, defs = load("campaigns").run()
    assert "no events stored since" in defs["freshness"]
    assert defs["freshness"] in text_of(outputs)
    assert_campaign_figures(defs, campaign_store["expected"])


def assert_campaign_figures(defs: dict[str, Any], expected: dict[str, Any]) -> None:
    arms = {r["arm"].removesuffix(" (holdout)"): r for r in defs["arms"].to_dict("records")}
    assert set(arms) == set(CAMPAIGN_ARMS)
    for arm, figures in expected.items():
        assert arms[arm]["n"] == figures["n"]
        assert arms[arm]["visit rate"] == pytest.approx(figures["visit_rate"])
        assert arms[arm]["conversion rate"] == pytest.approx(figures["conversion_rate"])
        assert arms[arm]["revenue per person"] == pytest.approx(figures["revenue_per_person"])
    assert "none (holdout)" in set(defs["arms"]["arm"])
    lift = defs["lift"]
    assert set(lift["arm"]) == {"email_a", "email_b"}  # the holdout is the reference
    hold = expected["none"]
    for row in lift.to_dict("records"):
        want = expected[row["arm"]][row["metric"]] - hold[row["metric"]]
        assert row["estimate"] == pytest.approx(want)
        assert row["low"] < row["estimate"] < row["high"]
    # email_a's visit lift is large enough that its interval leaves out zero.
    visits_a = lift[(lift["arm"] == "email_a") & (lift["metric"] == "visit_rate")].iloc[0]
    assert visits_a["low"] > 0


# -- the notebooks as scripts ---------------------------------------------------------------


def test_dashboard_notebook_runs_as_a_script(store, monkeypatch):
    from core.monitoring.alerts import Alert, store_alerts

    drift = Alert(
        "segment_drift",
        "high_intent",
        "critical",
        "high_intent: 40 members, outside 10-20 (median 15 +- 3 MAD over 14 days)",
        END.date(),
    )
    store_alerts(open_db(store["url"]), "segment_drift", [drift], END)
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", store["url"])
    outputs, defs = load("dashboard").run()
    (shown,) = defs["alerts"].to_dict("records")
    assert (shown["check"], shown["subject"], shown["severity"]) == (
        "segment_drift",
        "high_intent",
        "critical",
    )
    assert shown["message"] == drift.message
    fresh = {(r.source, r.type): r for r in defs["fresh"].itertuples()}
    by_type = Counter(e["type"] for e in store["events"])
    assert set(fresh) == {("demo", t) for t in by_type}
    for event_type, n in by_type.items():
        newest = max(
            datetime.fromisoformat(e["ts"]) for e in store["events"] if e["type"] == event_type
        )
        assert fresh["demo", event_type].events == n
        assert fresh["demo", event_type].last_event == newest
    sizes = {(r.day.date(), r.segment): r.size for r in defs["sizes"].itertuples()}
    assert sizes == reported_sizes(store["runs"])  # the default window (30 days) holds them all
    flows = {(r.day.date(), r.segment): (r.entered, r.exited) for r in defs["flows"].itertuples()}
    assert flows == reported_flows(store["runs"])
    assert defs["models"] == score_models(open_db(store["url"]))
    assert set(defs["scores"]["model"]) == {"engagement"}  # the default pick
    spec = defs["size_chart"].to_dict()
    assert spec["mark"]["type"] == "line" and spec["encoding"]["color"]["field"] == "segment"
    assert "No segment history yet" not in text_of(outputs)


def test_segment_lab_notebook_runs_as_a_script(store, monkeypatch):
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", store["url"])
    before = stored_counts(store["url"])
    outputs, defs = load("segment_lab").run()
    segment = lab.parse_definition(HIGH_INTENT, KINDS)
    as_of = defs["as_of"]
    members = python_members(store["url"], segment, as_of)
    assert defs["lab_error"] is None
    assert defs["lab_preview"].size == len(members)
    history = defs["lab_history"]
    assert len(history) == 14 and history["size"].iloc[-1] == len(members)
    carts = python_members(store["url"], lab.parse_definition(CARTS, KINDS), as_of)
    assert defs["lab_overlap"].both == len(members & carts)
    assert defs["lab_explanation"]["member"] is True
    assert stored_counts(store["url"]) == before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dashboard", "No segment history yet"),
        ("segment_lab", "No events yet"),
        ("campaigns", "No campaigns yet"),
    ],
)
def test_notebook_on_an_empty_database_says_so(empty_url, monkeypatch, name, message):
    monkeypatch.setenv("SEGFLOW_DATABASE_URL", empty_url)
    outputs, defs = load(name).run()
    assert message in text_of(outputs)
    assert "engine" in defs  # it got as far as the database, then stopped with the message


# -- the command --------------------------------------------------------------------------


def test_unknown_dashboard_is_one_line_listing_the_names(empty_url, capsys):
    status = cli.main(["--db", empty_url, "dashboard", "nope", "--export-html", "x.html"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.count("\n") == 0 and "no dashboard named 'nope'" in err
    for name in ("campaigns", "dashboard", "overview", "segment_lab"):
        assert name in err


# What each exported report must show: a heading or a name only real data puts there.
EXPORTS = {"dashboard": "Segment sizes", "segment_lab": "high_intent", "campaigns": "email_a"}


@pytest.mark.slow
def test_cli_exports_each_notebook(store, campaign_store, tmp_path):
    """`segflow dashboard NAME --export-html` of each notebook, run side by side
    (each export is a marimo kernel start: seconds apiece)."""
    children = {}
    for name in EXPORTS:
        url = campaign_store["url"] if name == "campaigns" else store["url"]
        argv = [sys.executable, "-m", "core.cli", "--db", url, "dashboard", name]
        children[name] = subprocess.Popen(
            [*argv, "--export-html", str(tmp_path / f"{name}.html")],
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, child in children.items():
        output, _ = child.communicate(timeout=300)
        assert child.returncode == 0, output[-2000:]
        html = (tmp_path / f"{name}.html").read_text()
        assert "Cannot open the database" not in html and "Traceback" not in html
        assert EXPORTS[name] in html, name


# -- in a browser ---------------------------------------------------------------------------


COLOURS_JS = """canvas => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length; i += 16) {
        if (data[i + 3] > 0) seen.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
    }
    return {width: canvas.width, height: canvas.height, colours: seen.size};
}"""


@pytest.mark.slow
def test_the_dashboard_in_a_real_browser_draws_its_charts(store, tmp_path):
    """`segflow dashboard` served by marimo, opened in Debian's chromium."""
    chromium, sync_playwright = chromium_and_playwright()
    port = free_port()
    command = [sys.executable, "-c", "from core.cli import entry; entry()"]
    command += ["--db", store["url"], "dashboard", "--headless", "--port", str(port)]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/")
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1800})
                page.goto(f"http://127.0.0.1:{port}/")
                # The four charts, in the notebook's order: freshness, sizes, flows,
                # scores (vega-embed draws on canvas).
                try:
                    # marimo's outputs live in shadow roots, which locators pierce.
                    page.locator(".vega-embed canvas").nth(3).wait_for(timeout=90_000)
                finally:  # what the page showed, also when the charts never came
                    page.screenshot(path=str(shot), full_page=True)
                page.get_by_role("heading", name="Score distribution").wait_for(timeout=30_000)
                page.wait_for_timeout(500)  # the last chart's paint
                page.screenshot(path=str(shot), full_page=True)
                canvases = page.locator(".vega-embed canvas")
                drawn = [canvases.nth(i).evaluate(COLOURS_JS) for i in range(canvases.count())]
                headings = [
                    page.get_by_role("heading", name=t).count()
                    for t in (
                        "Open alerts",
                        "Source freshness",
                        "Segment sizes",
                        "Flows in and out",
                    )
                ]
            finally:
                browser.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert port_closed(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert len(drawn) == 4 and all(d["width"] > 300 and d["height"] > 150 for d in drawn), drawn
    # Lines of 14 segments in their own colours, not a blank or one-colour canvas.
    assert drawn[1]["colours"] >= 14, drawn
    assert all(d["colours"] >= 3 for d in drawn), drawn
    assert all(headings), headings
    assert shot.stat().st_size > 20_000
