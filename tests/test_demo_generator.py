"""Tests for the deterministic demo event generator (plugins.demo.generator)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.ingestion import Event as EventSchema
from plugins.demo.generator import CATEGORIES, Product, catalogue, generate

END = datetime(2026, 11, 30, tzinfo=UTC)
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
WEB_TYPES = {
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "purchase",
    "wishlist_add",
    "search",
    "time_on_page",
    "scroll_depth",
    "video_progress",
}
EMAIL_TYPES = {"email_sent", "email_open", "email_click"}
ALL_TYPES = WEB_TYPES | EMAIL_TYPES | {"refund", "identify", "campaign_assigned"}
PRODUCT_TYPES = {"product_view", "add_to_cart", "remove_from_cart", "purchase", "wishlist_add"}
# The demo writes only fields of the event schema.
KEYS = set(EventSchema.model_fields)

Event = dict[str, Any]


@pytest.fixture(scope="module")
def small() -> list[Event]:
    return list(generate(300, seed=7, days=30, end=END))


LARGE_PEOPLE = 1500


@pytest.fixture(scope="module")
def large() -> list[Event]:
    # 12 weeks ending at midnight: every weekday appears exactly twelve times.
    return list(generate(LARGE_PEOPLE, seed=11, days=84, end=END))


def ts_of(ev: Event) -> datetime:
    return datetime.fromisoformat(ev["ts"])


def person_keys(events: list[Event]) -> list[str]:
    """One key per event naming the person, folding anonymous ids into user ids."""
    linked = {
        e["anonymous_id"]: e["user_id"]
        for e in events
        if e["type"] == "identify" and "anonymous_id" in e
    }
    return [e.get("user_id") or linked.get(e["anonymous_id"], e["anonymous_id"]) for e in events]


# -- catalogue ----------------------------------------------------------------------


def test_catalogue_shape_and_prices() -> None:
    products = catalogue()
    assert 150 <= len(products) <= 250
    assert all(isinstance(p, Product) for p in products)
    ids = [p.id for p in products]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"P\d{4}", i) for i in ids)
    assert len({p.name for p in products}) == len(products)
    assert {p.category for p in products} == set(CATEGORIES)
    assert len(CATEGORIES) >= 8
    for p in products:
        assert p.price > 0 and round(p.price, 2) == p.price
    by_cat: dict[str, list[float]] = defaultdict(list)
    for p in products:
        by_cat[p.category].append(p.price)
    assert min(by_cat["tents"]) >= 120 and max(by_cat["tents"]) <= 600
    assert min(by_cat["socks"]) >= 10 and max(by_cat["socks"]) <= 25
    # Prices vary within a category, and tents cost more than socks on average.
    assert len(set(by_cat["tents"])) > 5
    assert sum(by_cat["tents"]) / 20 > 5 * sum(by_cat["socks"]) / 20


def test_catalogue_deterministic_per_seed() -> None:
    assert catalogue(3) == catalogue(3)
    assert catalogue(3) != catalogue(4)
    # Ids and categories are the stable part across seeds.
    assert [(p.id, p.category) for p in catalogue(3)] == [(p.id, p.category) for p in catalogue(4)]
    # Callers may mutate the list they get without affecting later calls.
    catalogue(3).clear()
    assert catalogue(3)


# -- determinism and format -------------------------------------------------------------


def test_same_arguments_same_events() -> None:
    a = list(generate(150, seed=5, days=21, end=END))
    b = list(generate(150, seed=5, days=21, end=END))
    assert a == b
    c = list(generate(150, seed=6, days=21, end=END))
    assert a != c
    # The seed changes the content, not just the message ids.
    strip = [{k: v for k, v in e.items() if k != "message_id"} for e in c[:50]]
    assert strip != [{k: v for k, v in e.items() if k != "message_id"} for e in a[:50]]


def test_events_are_fresh_dicts(small: list[Event]) -> None:
    # Consumers mutate events (e.g. ingestion adds fields); nothing may be shared.
    props = [id(e["properties"]) for e in small if "properties" in e]
    assert len(set(props)) == len(props)


def test_timestamps_inside_window_with_offset(small: list[Event]) -> None:
    start = END - timedelta(days=30)
    for e in small:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", e["ts"]), e["ts"]
        ts = ts_of(e)
        assert ts.utcoffset() is not None
        assert start < ts <= END, e


def test_window_bounds_for_odd_end() -> None:
    # Not midnight, not UTC, and across a DST change: bounds must still hold.
    end = datetime(2026, 3, 29, 13, 45, 30, 500000, tzinfo=ZoneInfo("Europe/Berlin"))
    events = list(generate(200, seed=1, days=3, end=end))
    assert events
    # The window is days x 24 h of elapsed time, i.e. computed in UTC (wall-clock
    # arithmetic in Europe/Berlin would be an hour off across the DST switch).
    end_utc = end.astimezone(UTC)
    for e in events:
        assert end_utc - timedelta(days=3) < ts_of(e) <= end_utc


def test_keys_types_and_fields(small: list[Event]) -> None:
    # Refunds are rare enough to be absent from a small sample.
    assert set(Counter(e["type"] for e in small)) >= ALL_TYPES - {"refund"}
    for e in small:
        assert set(e) <= KEYS, e
        assert SNAKE.match(e["type"]) and e["type"] in ALL_TYPES
        assert all(v is not None for v in e.values()), e
        assert "user_id" in e or "anonymous_id" in e
        if "user_id" in e:
            assert re.fullmatch(r"u\d{6}", e["user_id"])
        if "anonymous_id" in e:
            assert re.fullmatch(r"a-[0-9a-f]+", e["anonymous_id"])
        is_email = e["type"] in EMAIL_TYPES
        assert ("email" in e) == (is_email or e["type"] == "identify"), e
        assert ("session_id" in e) == (e["type"] in WEB_TYPES), e
        if is_email:
            assert e["campaign"] and e["properties"]["subject"]
            assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", e["email"])
        if e["type"] in PRODUCT_TYPES or e["type"] == "refund":
            assert re.fullmatch(r"P\d{4}", e["product_id"])
            props = e["properties"]
            assert props["category"] in CATEGORIES and props["name"] and props["price"] > 0
        if e["type"] in {"add_to_cart", "purchase", "refund"}:
            props = e["properties"]
            assert e["currency"] == "USD"
            assert e["value"] == round(props["price"] * props["quantity"], 2)
        if e["type"] == "purchase":
            assert e["properties"]["order_id"] and e["properties"]["items"] >= 1
        if e["type"] == "scroll_depth":
            assert e["properties"]["percent"] in (25, 50, 75, 100)
        if e["type"] == "video_progress":
            assert e["properties"]["percent"] in (25, 50, 75, 100)
            assert e["properties"]["video_id"]
        if e["type"] == "time_on_page":
            assert isinstance(e["properties"]["seconds"], int) and e["properties"]["seconds"] > 0
        if e["type"] == "search":
            assert e["properties"]["query"]
        if e["type"] == "identify":
            traits = e["traits"]
            assert traits["email"] == e["email"]
            assert set(traits) >= {
                "email",
                "first_name",
                "last_name",
                "city",
                "country",
                "timezone",
                "signup_date",
                "accepts_marketing",
            }
            ZoneInfo(traits["timezone"])
            datetime.fromisoformat(traits["signup_date"])
            assert isinstance(traits["accepts_marketing"], bool)


def test_message_ids_unique(large: list[Event]) -> None:
    ids = [e["message_id"] for e in large]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("demo-11-") for i in ids)


def test_valid_canonical_events(small: list[Event]) -> None:
    # Imported normally: a broken core.ingestion must fail here, not skip.
    for e in small[:3000]:
        EventSchema.model_validate(e)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate(10, end=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        generate(10, days=0, end=END)
    with pytest.raises(ValueError):
        generate(-1, end=END)
    assert list(generate(0, end=END)) == []


def test_default_end_is_todays_midnight_utc() -> None:
    events = list(generate(20, days=2))
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    assert events
    # Allow for the test running across midnight.
    assert all(ts_of(e) <= midnight + timedelta(days=1) for e in events)
    assert all(ts_of(e) > midnight - timedelta(days=3) for e in events)


# -- identities ---------------------------------------------------------------------


def test_per_person_time_order(large: list[Event]) -> None:
    last: dict[str, datetime] = {}
    for key, e in zip(person_keys(large), large, strict=True):
        ts = ts_of(e)
        assert ts >= last.get(key, ts), e
        last[key] = ts


def test_identify_precedes_user_events(large: list[Event]) -> None:
    identified_at: dict[str, int] = {}
    for i, e in enumerate(large):
        if e["type"] == "identify":
            assert e["user_id"] not in identified_at, "one identify per person"
            identified_at[e["user_id"]] = i
        elif "user_id" in e:
            assert e["user_id"] in identified_at, e
    # Every known person is introduced with traits.
    assert len(identified_at) >= 0.95 * LARGE_PEOPLE


def test_anonymous_then_identify(large: list[Event]) -> None:
    linked = {
        e["anonymous_id"]: e for e in large if e["type"] == "identify" and "anonymous_id" in e
    }
    users = {e["user_id"] for e in large if e["type"] == "identify"}
    # ~30% of people start anonymous.
    assert 0.2 < len(linked) / len(users) < 0.4
    before = after = 0
    for e in large:
        aid = e.get("anonymous_id")
        if aid is None or e["type"] == "identify" or aid not in linked:
            continue
        ident = linked[aid]
        if ts_of(e) < ts_of(ident):
            assert "user_id" not in e, e
            before += 1
        elif "user_id" not in e:
            pytest.fail(f"anonymous-only event after identify: {e}")
        else:
            assert e["user_id"] == ident["user_id"]
            after += 1
    assert before > 0 and after > 0
    # Some visitors never identify: ~15% on top of the known people.
    anon_only = {
        e["anonymous_id"]
        for e in large
        if "anonymous_id" in e and "user_id" not in e and e["anonymous_id"] not in linked
    }
    assert 0.10 < len(anon_only) / LARGE_PEOPLE < 0.20


# -- realism ----------------------------------------------------------------------------


def test_activity_is_heavy_tailed(large: list[Event]) -> None:
    counts = sorted(Counter(person_keys(large)).values(), reverse=True)
    top = counts[: len(counts) // 10]
    assert sum(top) / sum(counts) > 0.45
    # Most people are light users: the median is far below the mean.
    assert counts[len(counts) // 2] < 0.6 * sum(counts) / len(counts)


def test_weekly_seasonality(large: list[Event]) -> None:
    web = [e for e in large if "session_id" in e]
    by_day = Counter(ts_of(e).weekday() for e in web)
    assert len(by_day) == 7
    assert max(by_day.values()) / min(by_day.values()) > 1.2


def test_sessions_start_in_local_daytime(large: list[Event]) -> None:
    tz_of = {
        e["user_id"]: ZoneInfo(e["traits"]["timezone"]) for e in large if e["type"] == "identify"
    }
    firsts: dict[str, Event] = {}
    for e in large:
        if "session_id" in e and e.get("user_id") in tz_of:
            firsts.setdefault(e["session_id"], e)
    hours = Counter(ts_of(e).astimezone(tz_of[e["user_id"]]).hour for e in firsts.values())
    night = sum(hours[h] for h in range(1, 6)) / sum(hours.values())
    evening = sum(hours[h] for h in range(18, 22)) / sum(hours.values())
    # Uniform would put ~21% in 01-05h and ~17% in 18-21h.
    assert night < 0.06
    assert evening > 0.25


def test_sessions_are_minutes_apart(small: list[Event]) -> None:
    views: dict[str, list[datetime]] = defaultdict(list)
    for e in small:
        if e["type"] in {"page_view", "product_view"}:
            views[e["session_id"]].append(ts_of(e))
    gaps = [
        (b - a).total_seconds() for vs in views.values() for a, b in zip(vs, vs[1:], strict=False)
    ]
    gaps.sort()
    assert gaps and 5 <= gaps[len(gaps) // 2] <= 600
    multi = sum(1 for vs in views.values() if len(vs) > 1)
    assert multi / len(views) > 0.4


def test_conversion_funnel(large: list[Event]) -> None:
    n = Counter(e["type"] for e in large)
    assert n["product_view"] > n["add_to_cart"] > n["checkout_started"] > n["purchase"] > 0
    assert n["remove_from_cart"] > 0 and n["wishlist_add"] > 0 and n["video_progress"] > 0
    assert 0 < n["refund"] < 0.1 * n["purchase"]
    sessions = {e["session_id"] for e in large if "session_id" in e}
    carted = {e["session_id"] for e in large if e["type"] == "add_to_cart"}
    bought = {e["session_id"] for e in large if e["type"] == "purchase"}
    assert 0.01 < len(bought) / len(sessions) < 0.08
    # Cart abandonment is common: most carting sessions end without a purchase.
    assert len(carted - bought) > len(bought)
    # A purchase line is always something that person put in a cart earlier.
    carted_by: set[tuple[str, str]] = set()
    for key, e in zip(person_keys(large), large, strict=True):
        if e["type"] == "add_to_cart":
            carted_by.add((key, e["product_id"]))
        elif e["type"] == "purchase":
            assert (key, e["product_id"]) in carted_by, e


def test_refunds_follow_purchases(large: list[Event]) -> None:
    bought: dict[tuple[str, str, str | None], Event] = {}
    refunds = 0
    for e in large:
        key = (
            e.get("user_id", ""),
            e.get("product_id", ""),
            e.get("properties", {}).get("order_id"),
        )
        if e["type"] == "purchase":
            bought[key] = e
        elif e["type"] == "refund":
            refunds += 1
            sale = bought[key]
            assert sale["value"] == e["value"] and ts_of(sale) < ts_of(e)
    assert refunds > 0


def test_email_campaigns(large: list[Event]) -> None:
    marketing = {
        e["user_id"]: e["traits"]["accepts_marketing"] for e in large if e["type"] == "identify"
    }
    assert 0.4 < sum(marketing.values()) / len(marketing) < 0.9
    weekly = [e for e in large if e.get("campaign", "").startswith("weekly-")]
    sent = sum(e["type"] == "email_sent" for e in weekly)
    opened = sum(e["type"] == "email_open" for e in weekly)
    clicked = sum(e["type"] == "email_click" for e in weekly)
    assert sent > 1000
    assert 0.15 < opened / sent < 0.35
    assert 0.01 < clicked / sent < 0.07
    assert all(marketing[e["user_id"]] for e in large if e["type"] == "email_sent")
    assert all(re.fullmatch(r"weekly-\d{4}-\d\d-\d\d", e["campaign"]) for e in weekly)
    assert any(e["campaign"] == "cart-reminder" for e in large if e["type"] == "email_sent")
    # Each click leads to a session tagged with its campaign, soon after.
    sessions: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for e in large:
        if "session_id" in e and "campaign" in e:
            sessions[(e["user_id"], e["campaign"])].append(ts_of(e))
    assert sessions
    for e in large:
        if e["type"] == "email_click":
            after = [t for t in sessions[(e["user_id"], e["campaign"])] if t >= ts_of(e)]
            if ts_of(e) < END - timedelta(hours=1):
                assert after and min(after) - ts_of(e) < timedelta(hours=1), e


def test_each_newsletter_holds_out_one_in_ten_who_get_nothing(large: list[Event]) -> None:
    arms: dict[tuple[str, str], str] = {}
    for e in large:
        if e["type"] == "campaign_assigned":
            assert e["campaign"].startswith("weekly-") and "email" not in e
            held = e["properties"]["holdout"]
            assert e["properties"]["arm"] == ("holdout" if held else "email")
            assert (e["campaign"], e["user_id"]) not in arms  # one assignment per newsletter
            arms[(e["campaign"], e["user_id"])] = e["properties"]["arm"]
    assert 0.07 < sum(a == "holdout" for a in arms.values()) / len(arms) < 0.13
    # Every newsletter email goes to someone assigned to its email arm, and the
    # holdout gets nothing of that newsletter (no send, open or click).
    for e in large:
        if e["type"] in EMAIL_TYPES and e["campaign"].startswith("weekly-"):
            assert arms[(e["campaign"], e["user_id"])] == "email", e
    sent = {(e["campaign"], e["user_id"]) for e in large if e["type"] == "email_sent"}
    assert {k for k, a in arms.items() if a == "email"} == {k for k in sent if k in arms}


def test_size_scales_linearly() -> None:
    n1 = sum(1 for _ in generate(800, seed=3, days=28, end=END))
    n2 = sum(1 for _ in generate(1600, seed=3, days=28, end=END))
    assert 1.6 < n2 / n1 < 2.4
    # Roughly 30-95 events per person over 90 days (a tenth of them newsletter
    # assignments): 150k-475k for 5000 people.
    per_person_90 = n1 / 800 * 90 / 28
    assert 30 < per_person_90 < 95
