"""The demo's emails end to end: `segflow demo`'s store, the cart and browse
emails in the outbox, looked at in a real browser (Debian chromium), and the
same email through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import recommend
from core.db.tables import CHANGES, EVENTS, MEMBERSHIPS, PRODUCTS, SEGMENTS
from core.personalize.delivery import deliver
from core.personalize.render import render_email
from core.plugins import esp_connectors
from tests.conftest import PROJECT_ROOT
from tests.helpers import chromium_and_playwright
from tests.smtpserver import smtp_server

# Screenshots a person can look at after the run (CI keeps the folder).
ARTIFACTS = Path(os.environ.get("SEGFLOW_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
BASE_URL = "http://127.0.0.1:8000"


@pytest.fixture
def demo(demo_store):
    return demo_store


def child_runs(client, parent_id) -> list:
    """The subflow runs of a flow run, oldest first: the flow runs whose parent
    task run (the subflow call) belongs to it."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
        ),
        sort=FlowRunSort.START_TIME_ASC,
    )


def test_the_demo_runs_the_pipeline_flow_today_and_a_day_later(demo):
    from datetime import datetime, timedelta

    from prefect import get_client

    _engine, _settings, summary = demo
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        pipelines = [r for r in child_runs(client, summary["flow_run_id"])
                     if flows[r.flow_id] == "pipeline"]  # fmt: skip
        assert len(pipelines) == 2 and all(r.state.is_completed() for r in pipelines)
        steps = [[flows[c.flow_id] for c in child_runs(client, r.id)] for r in pipelines]
        for run in pipelines:
            assert all(c.state.is_completed() for c in child_runs(client, run.id))
    # Today: the generated file imported, no sends (consents come after the
    # import); a day later: nothing to import, the waits over, sends.
    assert steps == [
        ["ingest-files", "recommend", "scores", "segment", "automate", "monitor"],
        ["recommend", "scores", "segment", "automate", "send", "monitor"],
    ]
    today, later = (datetime.fromisoformat(r.parameters["as_of"]) for r in pipelines)
    assert later - today == timedelta(days=1)
    assert summary["import"]["accepted"] == summary["events"] > 0


def segment_of(engine, name: str) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(MEMBERSHIPS.c.profile_id)
                .join(SEGMENTS, SEGMENTS.c.id == MEMBERSHIPS.c.segment_id)
                .where(SEGMENTS.c.name == name)
            ).scalars()
        )


def segment_at(engine, name: str, at: datetime) -> set[int]:
    """The segment's members at ``at``, replayed from the recorded entries and
    exits (the demo runs its workflows a day later, which moves people on)."""
    held: set[int] = set()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(CHANGES.c.profile_id, CHANGES.c.change, CHANGES.c.at)
            .join(SEGMENTS, SEGMENTS.c.id == CHANGES.c.segment_id)
            .where(SEGMENTS.c.name == name)
            .order_by(CHANGES.c.at, CHANGES.c.id)
        ).all()
    for pid, change, when in rows:
        if when.replace(tzinfo=UTC) <= at:
            (held.add if change == "entered" else held.discard)(pid)
    return held


def test_the_outbox_holds_tracked_segment_aware_emails(demo):
    engine, settings, summary = demo
    outbox = summary["outbox"]
    assert outbox["report"]["sent"] == sum(len(v) for v in outbox["emails"].values()) > 0
    assert set(outbox["emails"]) == {"cart_abandonment", "browse_recommendations"}
    rendered_at = datetime.fromisoformat(summary["as_of"])
    carts = segment_at(engine, "cart_abandoners", rendered_at)
    high_intent = segment_at(engine, "high_intent", rendered_at)
    for template, items in outbox["emails"].items():
        for item in items:
            message = message_from_bytes(Path(item["eml"]).read_bytes(), policy=policy.default)
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            assert message["List-Unsubscribe"].startswith(f"<{BASE_URL}/t/u/")
            html = Path(item["html"]).read_text()
            hrefs = re.findall(r'href="([^"]+)"', html)
            assert hrefs and all(h.startswith(f"{BASE_URL}/t/") for h in hrefs), hrefs
            assert f'src="{BASE_URL}/t/o/' in html  # the open pixel
            if template == "cart_abandonment":
                assert item["profile_id"] in carts
                # The segment-aware block: high-intent people are told stock is held.
                in_stock_line = "(and still in stock)" in item["subject"]
                assert in_stock_line == (item["profile_id"] in high_intent)


def test_a_browse_email_in_a_real_browser_shows_in_stock_unbought_recommendations(demo):
    chromium, sync_playwright = chromium_and_playwright()
    engine, settings, summary = demo
    item = summary["outbox"]["emails"]["browse_recommendations"][0]
    pid = item["profile_id"]
    with engine.connect() as conn:
        picks = recommend(conn, pid, k=settings.email.recommendations)
        bought = set(
            conn.execute(
                sa.select(EVENTS.c.product_id).where(
                    EVENTS.c.profile_id == pid, EVENTS.c.type == "purchase"
                )
            ).scalars()
        )
        stock = dict(conn.execute(sa.select(PRODUCTS.c.id, PRODUCTS.c.in_stock)).all())
    assert picks, "the demo person has recommendations"
    assert all(stock[p["id"]] and p["id"] not in bought for p in picks)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "demo_browse_recommendations.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 700, "height": 1200})
            # Offline: the email's images and links point at the shop and the tracker.
            page.route(re.compile(r"^https?://"), lambda route: route.abort())
            page.goto(Path(item["html"]).as_uri())
            page.screenshot(path=str(shot), full_page=True)
            assert page.get_by_text("Recommended for you").is_visible()
            for pick in picks:
                assert page.get_by_text(pick["name"], exact=True).first.is_visible(), pick
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_the_cart_email_through_a_real_smtp_server(demo):
    engine, settings, summary = demo
    pid = summary["outbox"]["emails"]["cart_abandonment"][0]["profile_id"]
    with engine.connect() as conn:
        email = render_email(
            conn, "cart_abandonment", pid, message_key=f"smtp-test:{pid}", settings=settings
        )
    with smtp_server() as (server, port):
        smtp = settings.model_copy(
            update={
                "plugin_settings": settings.plugin_settings
                | {"esp.smtp": {"host": "127.0.0.1", "port": port, "from": "shop@shop.example"}}
            }
        )
        report = deliver(engine, [email], via=esp_connectors()["smtp"], settings=smtp)
    assert report.sent == 1
    (received,) = server.parsed()
    assert received.get_content_type() == "multipart/alternative"
    text, html = received.iter_parts()
    assert "cart" in text.get_content().lower() and html.get_content_type() == "text/html"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["Message-ID"] and received["To"] == email.to


def test_the_example_workflows_act_on_the_right_people(demo):
    from core.db.tables import EVENTS, MESSAGES, WORKFLOW_ACTIONS, WORKFLOW_STATES

    engine, _settings, summary = demo
    result = summary["workflows"]
    names = set(result["workflows"])
    assert names == {"browse_followup", "cart_recovery", "win_back"}
    with engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(sa.select(WORKFLOW_STATES)).mappings()]
        actions = [dict(r) for r in conn.execute(sa.select(WORKFLOW_ACTIONS)).mappings()]
        carts = conn.execute(
            sa.select(EVENTS.c.profile_id, EVENTS.c.session_id, EVENTS.c.ts).where(
                EVENTS.c.type == "add_to_cart"
            )
        ).all()
        sent = set(
            conn.execute(
                sa.select(MESSAGES.c.idempotency_key).where(
                    MESSAGES.c.status == "sent", MESSAGES.c.idempotency_key.startswith("wf:")
                )
            ).scalars()
        )
    by = {n: [r for r in runs if r["workflow"] == n] for n in names}
    assert all(len(v) > 0 for v in by.values()), {n: len(v) for n, v in by.items()}
    # Cart runs: one per (person, visit) that added to a cart in the store's last day.
    since = datetime.fromisoformat(summary["history_since"])
    recent = {(pid, sid) for pid, sid, ts in carts if ts.replace(tzinfo=UTC) >= since}
    assert {(r["profile_id"], r["entry_key"]) for r in by["cart_recovery"]} <= recent
    # Win-back: entered from lapsed_customers, the holdout got nothing.
    assert {r["profile_id"] for r in by["win_back"]} <= segment_of(engine, "lapsed_customers") | {
        r["profile_id"] for r in by["win_back"] if r["status"] != "active"
    }
    held = {r["id"] for r in by["win_back"] if r["status"] == "held_out"}
    assert not [a for a in actions if a["run_id"] in held]
    assert {r["arm"] for r in by["win_back"]} <= {"email", "holdout"}
    assert len(held) == result["workflows"]["win_back"]["held_out"]
    # What the summary says was sent is what the outbox delivered.
    done = {
        a["idempotency_key"] for a in actions if a["action"] == "send" and a["status"] == "done"
    }
    assert done == sent
    assert sum(w["sent"] for w in result["workflows"].values()) == len(sent) > 0
