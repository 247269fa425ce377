"""The ingestion API over real HTTP on 127.0.0.1: Segment calls, keys, tracking."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from core.api import create_app
from core.config import Settings
from core.consents import granted
from core.db import models, open_db
from core.keys import create_key, revoke_key
from core.profiles import profile_summary
from core.tracking import click_url, open_url, unsubscribe_url
from tests.helpers import serving

SECRET = "a-test-secret-of-enough-length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(fresh_sqlite, request) -> Iterator[tuple[str, object, str]]:
    url = fresh_sqlite()
    engine = open_db(url)
    limits = getattr(request, "param", {})
    settings = Settings(database_url=url, secret_key=SECRET, **limits)
    with serving(create_app(engine, settings)) as base:
        _, key = create_key(engine, "site", ["events:write"])
        yield base, engine, key


def count(engine, table=models.EventRow) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_segment_calls_land_once_with_identity_and_merge(server):
    base, engine, key = server
    auth = (key, "")
    calls = [
        (
            "page",
            {
                "anonymousId": "anon-1",
                "messageId": "m1",
                "properties": {"url": "https://s/p"},
                "timestamp": "2026-03-01T10:00:00Z",
            },
        ),
        (
            "track",
            {
                "anonymousId": "anon-1",
                "event": "Product Viewed",
                "messageId": "m2",
                "properties": {"product_id": "P1", "price": 30, "category": "tents"},
                "timestamp": "2026-03-01T10:01:00Z",
            },
        ),
        (
            "identify",
            {
                "userId": "u1",
                "anonymousId": "anon-1",
                "messageId": "m3",
                "traits": {"email": "u1@example.com", "plan": "pro"},
            },
        ),
        (
            "track",
            {
                "userId": "u1",
                "event": "Order Completed",
                "messageId": "m4",
                "properties": {"revenue": 99.5, "currency": "usd", "order_id": "o1"},
                "timestamp": "2026-03-01T10:05:00Z",
            },
        ),
        ("track", {"userId": "u1", "event": "Signed Up", "messageId": "m5"}),
    ]
    with httpx.Client(base_url=base) as client:
        for call, body in calls:
            r = client.post(f"/v1/{call}", json=body, auth=auth)
            assert r.status_code == 200 and r.json() == {"success": True}, r.text
        # A client retry with the same messageIds, via batch and writeKey in the body.
        r = client.post(
            "/v1/batch", json={"writeKey": key, "batch": [{"type": c, **b} for c, b in calls]}
        )
        assert r.status_code == 200
    assert count(engine) == 5
    summary = profile_summary(engine, "anon-1")
    assert summary["user_id"] == "u1" and summary["attributes"]["plan"] == "pro"
    assert summary["event_counts"] == {
        "identify": 1,
        "page_view": 1,
        "product_view": 1,
        "purchase": 1,
        "signed_up": 1,
    }
    purchase = next(e for e in summary["recent_events"] if e["type"] == "purchase")
    assert (purchase["value"], purchase["currency"], purchase["properties"]) == (
        99.5,
        "USD",
        {"order_id": "o1"},
    )


def test_bad_keys_and_bodies_are_refused_and_nothing_is_stored(server):
    base, engine, key = server
    good = {"userId": "u1", "event": "Product Viewed", "messageId": "x1"}
    with httpx.Client(base_url=base) as client:
        assert client.post("/v1/track", json=good).status_code == 401
        r = client.post("/v1/track", json=good, auth=("sf_nope_nope", ""))
        assert r.status_code == 401 and r.json() == {"error": "unknown API key"}
        _, reader = create_key(engine, "reader", ["profiles:read"])
        r = client.post("/v1/track", json=good, auth=(reader, ""))
        assert r.status_code == 403 and "lacks the scope 'events:write'" in r.json()["error"]
        r = client.post(
            "/v1/batch",
            auth=(key, ""),
            json={
                "batch": [
                    good,
                    {
                        "type": "track",
                        "userId": "u1",
                        "event": "Order Completed",
                        "timestamp": "yesterday",
                    },
                ]
            },
        )
        assert r.status_code == 400 and r.json()["field"] == "batch[0].type"
        r = client.post(
            "/v1/batch",
            auth=(key, ""),
            json={
                "batch": [
                    {"type": "track", **good},
                    {
                        "type": "track",
                        "userId": "u1",
                        "event": "Order Completed",
                        "timestamp": "yesterday",
                    },
                ]
            },
        )
        assert r.status_code == 400 and r.json()["field"] == "batch[1]"
        assert "field 'ts'" in r.json()["error"]
        r = client.post("/v1/track", auth=(key, ""), json={"userId": "u1"})
        assert r.status_code == 400 and r.json()["field"] == "body.event"
        r = client.post(
            "/v1/track",
            auth=(key, ""),
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json() == {"error": "body is not valid JSON"}
        r = client.post("/v1/batch", auth=(key, ""), content=b"x" * (600 * 1024))
        assert r.status_code == 413
        revoke_key(engine, "site")
        assert client.post("/v1/track", json=good, auth=(key, "")).status_code == 401
    assert count(engine) == 0


def test_pixel_click_and_one_click_unsubscribe(server):
    base, engine, key = server
    with httpx.Client(base_url=base) as client:
        client.post(
            "/v1/identify",
            auth=(key, ""),
            json={"userId": "u7", "traits": {"email": "seven@example.com"}},
        )
        pixel = client.get(
            open_url(base, SECRET, message_id="msg-1", user_id="u7", campaign="weekly")
        )
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        assert len(pixel.content) == 43 and "no-store" in pixel.headers["cache-control"]
        link = click_url(
            base,
            SECRET,
            "https://shop.example.com/p/P1",
            message_id="msg-1",
            link=0,
            user_id="u7",
            campaign="weekly",
        )
        r = client.get(link)
        assert r.status_code == 302 and r.headers["location"] == "https://shop.example.com/p/P1"
        tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        assert client.get(tampered).status_code == 404
        assert client.get(f"{base}/t/o/garbage.gif").status_code == 404
        unsub = unsubscribe_url(base, SECRET, message_id="msg-1", email="seven@example.com")
        page = client.get(unsub)
        assert page.status_code == 200 and "<form method=post>" in page.text
        pid = profile_summary(engine, "u7")["profile_id"]
        assert granted(engine, pid, "email") is None  # a GET changes nothing
        r = client.post(unsub, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200 and "unsubscribed" in r.text
    assert granted(engine, pid, "email") is False
    counts = profile_summary(engine, "u7")["event_counts"]
    assert counts == {"email_click": 1, "email_open": 1, "identify": 1, "unsubscribe": 1}


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_official_clients_land_every_event_exactly_once(server, sdk):
    if sdk == "segment":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    base, engine, key = server
    errors = []
    client = Client(
        write_key=key,
        host=base,
        sync_mode=True,
        max_retries=0,
        on_error=lambda e, batch: errors.append(e),
    )

    def send() -> None:
        client.page(
            anonymous_id="a-9", name="Home", properties={"url": "https://s/"}, message_id=f"{sdk}-1"
        )
        client.track(
            anonymous_id="a-9",
            event="Product Added",
            properties={"product_id": "P9", "price": 12.0},
            message_id=f"{sdk}-2",
        )
        client.identify(
            user_id="u9",
            anonymous_id="a-9",
            traits={"email": "nine@example.com"},
            message_id=f"{sdk}-3",
        )
        client.track(
            user_id="u9",
            event="Order Completed",
            properties={"revenue": 12.0},
            message_id=f"{sdk}-4",
        )
        client.alias(previous_id="old-device", user_id="u9", message_id=f"{sdk}-5")
        client.flush()

    send()
    send()  # a resend: same messageIds, nothing new
    assert errors == []
    summary = profile_summary(engine, "a-9")
    assert summary["user_id"] == "u9" and summary["attributes"] == {"email": "nine@example.com"}
    assert summary["event_counts"] == {
        "add_to_cart": 1,
        "identify": 2,
        "page_view": 1,
        "purchase": 1,
    }
    assert count(engine) == 5
    ids = {i["value"] for i in summary["identities"]}
    assert {"a-9", "old-device", "u9", "nine@example.com"} <= ids  # alias linked the device


@pytest.mark.parametrize("server", [{"api_rate_limit": 1.0, "api_burst": 3}], indirect=True)
def test_rate_limit_per_key_answers_429_with_retry_after(server):
    base, engine, key = server
    _, other = create_key(engine, "other", ["events:write"])
    body = {"userId": "u1", "event": "Product Viewed"}
    with httpx.Client(base_url=base) as client:
        codes = [
            client.post("/v1/track", json=body | {"messageId": f"r{i}"}, auth=(key, ""))
            for i in range(5)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert codes[3].headers["retry-after"] == "1" and "rate limit" in codes[3].json()["error"]
        # Another key has its own budget.
        assert (
            client.post("/v1/track", json=body | {"messageId": "o1"}, auth=(other, "")).status_code
            == 200
        )
    assert count(engine) == 4  # refused requests stored nothing


WEBHOOKS = {
    "webhooks": [
        {"name": "shop", "style": "shopify", "secret": "shopify-secret"},
        {"name": "pay", "style": "stripe", "secret": "whsec_test_secret"},
    ]
}


@pytest.mark.parametrize("server", [WEBHOOKS], indirect=True)
def test_signed_webhooks_shopify_and_stripe(server):
    import base64
    import hashlib
    import hmac
    import json

    base, engine, _ = server
    order = {
        "id": 4501,
        "email": "buyer@example.com",
        "created_at": "2026-04-01T10:00:00-04:00",
        "total_price": "59.90",
        "currency": "USD",
        "customer": {"id": 77},
        "line_items": [{"product_id": 9, "quantity": 1, "price": "59.90"}],
    }
    body = json.dumps(order).encode()
    good = base64.b64encode(hmac.new(b"shopify-secret", body, hashlib.sha256).digest()).decode()
    headers = {"X-Shopify-Topic": "orders/create", "content-type": "application/json"}
    session = {
        "id": "evt_1",
        "type": "checkout.session.completed",
        "created": 1775000000,
        "data": {
            "object": {
                "id": "cs_1",
                "amount_total": 1999,
                "currency": "eur",
                "customer_email": "payer@example.com",
            }
        },
    }
    sbody = json.dumps(session).encode()
    now = int(time.time())
    sig = hmac.new(b"whsec_test_secret", f"{now}.".encode() + sbody, hashlib.sha256).hexdigest()
    with httpx.Client(base_url=base) as client:
        assert client.post("/webhooks/shop", content=body, headers=headers).status_code == 401
        bad = headers | {"X-Shopify-Hmac-Sha256": good[:-4] + "AAAA"}
        assert client.post("/webhooks/shop", content=body, headers=bad).status_code == 401
        ok = headers | {"X-Shopify-Hmac-Sha256": good}
        r = client.post("/webhooks/shop", content=body, headers=ok)
        assert r.status_code == 200 and r.json()["type"] == "purchase"
        assert client.post("/webhooks/shop", content=body, headers=ok).status_code == 200  # resent
        old = (
            f"t={now - 301},v1="
            + hmac.new(
                b"whsec_test_secret", f"{now - 301}.".encode() + sbody, hashlib.sha256
            ).hexdigest()
        )
        r = client.post("/webhooks/pay", content=sbody, headers={"Stripe-Signature": old})
        assert r.status_code == 401 and "tolerance" in r.json()["error"]
        r = client.post(
            "/webhooks/pay", content=sbody, headers={"Stripe-Signature": f"t={now},v1=00"}
        )
        assert r.status_code == 401
        r = client.post(
            "/webhooks/pay", content=sbody, headers={"Stripe-Signature": f"t={now},v1={sig}"}
        )
        assert r.status_code == 200 and r.json()["type"] == "purchase"
        assert client.post("/webhooks/nope", content=b"{}").status_code == 404
    buyer = profile_summary(engine, "77")
    assert buyer["email"] == "buyer@example.com" and buyer["event_counts"] == {"purchase": 1}
    (purchase,) = buyer["recent_events"]
    assert (purchase["value"], purchase["currency"], purchase["ts"]) == (
        59.9,
        "USD",
        "2026-04-01T14:00:00+00:00",
    )
    payer = profile_summary(engine, "payer@example.com")
    assert payer["recent_events"][0]["value"] == 19.99 and count(engine) == 2


def test_ga4_measurement_protocol(server):
    base, engine, key = server
    q = {"measurement_id": "G-TEST123", "api_secret": key}
    body = {
        "client_id": "555.777",
        "user_id": "g1",
        "timestamp_micros": 1_775_000_000_000_000,
        "user_properties": {"tier": {"value": "gold"}},
        "events": [
            {
                "name": "view_item",
                "params": {
                    "currency": "EUR",
                    "value": 30.0,
                    "items": [{"item_id": "SKU1", "price": 30.0}],
                },
            },
            {
                "name": "purchase",
                "params": {
                    "transaction_id": "T1",
                    "value": 30.0,
                    "currency": "EUR",
                    "items": [{"item_id": "SKU1"}],
                },
            },
            {"name": "newsletter_signup", "params": {"source": "footer"}},
        ],
    }
    with httpx.Client(base_url=base) as client:
        bad = {
            "client_id": "x",
            "events": [{"name": "session_start"}, {"name": "9lives"}, *[{"name": "e"}] * 25],
        }
        r = client.post("/debug/mp/collect", params=q, json=bad)
        codes = {(m["fieldPath"], m["validationCode"]) for m in r.json()["validationMessages"]}
        assert (
            r.status_code == 200
            and {
                ("events", "EXCEEDED_MAX_ENTITIES"),
                ("events[0].name", "NAME_RESERVED"),
                ("events[1].name", "NAME_INVALID"),
            }
            <= codes
        )
        assert client.post("/mp/collect", params=q, json=bad).status_code == 400
        assert client.post("/debug/mp/collect", params=q, json=body).json() == {
            "validationMessages": []
        }
        assert (
            client.post("/mp/collect", params={"measurement_id": "G-1"}, json=body).status_code
            == 401
        )
        r = client.post("/mp/collect", params=q, json=body)
        assert r.status_code == 204
        assert client.post("/mp/collect", params=q, json=body).status_code == 204  # resent
    summary = profile_summary(engine, "g1")
    assert summary["attributes"] == {"tier": "gold"}
    assert summary["event_counts"] == {
        "identify": 1,
        "newsletter_signup": 1,
        "product_view": 1,
        "purchase": 1,
    }
    view = next(e for e in summary["recent_events"] if e["type"] == "product_view")
    assert (view["product_id"], view["value"], view["currency"]) == ("SKU1", 30.0, "EUR")
    assert view["ts"].startswith("2026-03-31T23:33:20")
    assert {"kind": "anonymous_id", "value": "555.777"} in summary["identities"]
    assert count(engine) == 4  # the invalid and debug requests stored nothing


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    """Property-based requests generated from the served OpenAPI document."""
    import base64
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    base, _, key = server
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/track", "/v1/batch", "/mp/collect", "/webhooks/{name}"} <= set(spec["paths"])
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is in the dev extra"
    auth = base64.b64encode(f"{key}:".encode()).decode()
    proc = subprocess.run(
        [
            st,
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "20",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--header",
            f"Authorization: Basic {auth}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_snippet_in_a_real_browser_sends_page_product_scroll_and_time(server, tmp_path):
    """Debian's chromium, driven by playwright with its executable path (no download)."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import PROJECT_ROOT
    from tests.helpers import chromium_and_playwright

    chromium, sync_playwright = chromium_and_playwright()
    base, engine, key = server
    page_html = (PROJECT_ROOT / "plugins" / "sources" / "tracking" / "snippet.html").read_text()
    page_html = page_html.replace("http://127.0.0.1:8000", base).replace("sf_REPLACE_ME", key)
    site = tmp_path / "site"
    site.mkdir()
    (site / "tent.html").write_text(page_html)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=flags)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/tent.html")
            page.wait_for_timeout(1200)
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.click("button")
            page.wait_for_timeout(300)
            page.close(run_before_unload=True)  # pagehide: time on page, sent with keepalive
            deadline = time.monotonic() + 10
            while "time_on_page" not in types_of(engine) and time.monotonic() < deadline:
                time.sleep(0.1)
            browser.close()
    finally:
        httpd.shutdown()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                models.EventRow.type,
                models.EventRow.product_id,
                models.EventRow.url,
                models.EventRow.properties,
                models.EventRow.profile_id,
            )
        ).all()
    by_type: dict[str, list] = {}
    for row in rows:
        by_type.setdefault(row.type, []).append(row)
    assert len(by_type["page_view"]) == 1 and "/tent.html" in by_type["page_view"][0].url
    assert [r.product_id for r in by_type["product_view"]] == ["P0007"]
    assert [r.product_id for r in by_type["add_to_cart"]] == ["P0007"]
    assert sorted(r.properties["percent"] for r in by_type["scroll_depth"]) == [25, 50, 75, 100]
    assert by_type["time_on_page"][0].properties["seconds"] >= 1
    assert len({r.profile_id for r in rows}) == 1  # one anonymous visitor
    assert len({r.properties.get("session_id") for r in rows}) == 1


def types_of(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(models.EventRow.type).distinct()).scalars())


def test_a_tracked_event_moves_the_profile_into_its_segment_in_real_time(server, tmp_path):
    from datetime import UTC, datetime

    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, members, run_segments

    base, engine, key = server
    (tmp_path / "carts.yaml").write_text(
        "name: fresh_carts\nrule: {event: add_to_cart, within: 1h}\n"
    )
    kinds = condition_kinds()
    run_segments(
        engine, datetime.now(UTC), kinds=kinds, definitions=load_segment_files(tmp_path, kinds)
    )
    with httpx.Client(base_url=base, auth=(key, "")) as client:
        r = client.post("/v1/track", json={"userId": "shopper", "event": "Product Added"})
        assert r.status_code == 200
    # The 200 means stored; the evaluation follows on the server's hook thread.
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            found = [m for m in members(conn, "fresh_carts") if m["id"] == "shopper"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert found, "no real-time segment entry within 10 s"
    with engine.connect() as conn:
        changes = (
            conn.execute(sa.select(models.MembershipChange.__table__.c.change)).scalars().all()
        )
    assert changes == ["entered"]


def test_a_chunked_body_over_the_limit_is_refused_and_nothing_stored(server):
    base, engine, key = server

    def chunks():
        yield b'{"userId": "u1", "event": "Big", "properties": {"pad": "'
        for _ in range(600):
            yield b"x" * 1024
        yield b'"}}'

    with httpx.Client(base_url=base) as client:
        r = client.post(
            "/v1/track",
            auth=(key, ""),
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 413
    assert "request body over" in r.json()["error"]
    assert count(engine) == 0


def test_dicts_handed_to_the_api_context_are_validated_first():
    from core.api import ApiError, _validated

    with pytest.raises(ApiError) as caught:
        _validated([{"type": "page_view", "user_id": "u1"}, {"type": "Bad Type", "user_id": "u"}])
    assert caught.value.status_code == 400
    assert caught.value.detail["field"] == "event 1"
    assert "snake_case" in caught.value.detail["error"]
