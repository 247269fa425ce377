"""A tiny outdoor shop for the personalisation tests: known people, events,
catalogue rows, segments and scores, so every expectation is written out.

- ada: German locale, Berlin time, email consent; viewed P1 (a tent), P2, P3;
  put P1 in the cart twice (1 + 2) and P2 once, then removed P2; never bought.
  A cart abandoner and a tent viewer, engagement 82.5.
- bob: bought what he put in his cart (P3), then viewed P4 (out of stock).
- cy: anonymous, one view, no email.
- dee: like ada's cart (P1), then bought it after ``CHECKOUT``.

P1, P2 and P4 are in the catalogue (P1 at a price that differs from its
events'); P3 is only known from its events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from core.consents import set_consent
from core.db import open_db
from core.db.tables import PRODUCTS
from core.ingestion import ingest
from core.plugins import condition_kinds
from core.scoring import store_scores
from core.segments.store import load_segment_files, run_segments
from core.types import ScoreValue

END = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CHECKOUT = END - timedelta(hours=10)
SHOP = "https://shop.example.com"
SEGMENTS = """
- name: cart_abandoners
  rule:
    sequence: {first: add_to_cart, then_not: purchase, within: 24h, lookback: 7d}
- name: tent_viewers
  rule: {event: product_view, within: 30d, where: {category: tents}}
- name: buyers
  rule: {event: purchase, within: 30d}
"""
CATALOGUE = [
    # id, name, category, price, in_stock
    ("P1", "Ridge 2P Backpacking Tent", "tents", 199.0, True),
    ("P2", "Down Sleeping Bag -5C", "sleeping_bags", 249.5, True),
    ("P4", "Alpine Headlamp", "headlamps", 39.0, False),
]


def at(hours: float) -> str:
    return (END - timedelta(hours=hours)).isoformat()


def _product(kind: str, who: dict, hours: float, pid: str, name: str, cat: str, price: float,
             **extra) -> dict:  # fmt: skip
    event = {
        "type": kind,
        **who,
        "ts": at(hours),
        "product_id": pid,
        "url": f"{SHOP}/p/{pid}",
        "properties": {"name": name, "category": cat, "price": price, **extra},
    }
    if kind in ("add_to_cart", "purchase"):
        event |= {"value": round(price * extra.get("quantity", 1), 2), "currency": "USD"}
    return event


def events() -> list[dict]:
    ada = {"user_id": "u_ada"}
    bob = {"user_id": "u_bob"}
    dee = {"user_id": "u_dee"}
    tent = ("P1", "Ridge 2P Tent", "tents", 189.0)  # the catalogue says 199.0 now
    bag = ("P2", "Down Sleeping Bag -5C", "sleeping_bags", 249.5)
    stove = ("P3", "Titanium Canister Stove", "cooking", 54.95)
    lamp = ("P4", "Alpine Headlamp", "headlamps", 39.0)
    out = [
        {
            "type": "identify",
            **ada,
            "ts": at(200),
            "email": "ada@example.com",
            "traits": {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "locale": "de_DE",
                "timezone": "Europe/Berlin",
                "city": "Berlin",
            },
        },
        _product("product_view", ada, 60, *tent),
        _product("product_view", ada, 59, *bag),
        _product("product_view", ada, 58, *stove),
        _product("add_to_cart", ada, 50, *tent, quantity=1),
        _product("add_to_cart", ada, 49, *tent, quantity=2),
        _product("add_to_cart", ada, 48, *bag, quantity=1),
        _product("remove_from_cart", ada, 47, *bag, quantity=1),
        _product("product_view", ada, 46, *tent),
        {
            "type": "identify",
            **bob,
            "ts": at(300),
            "email": "bob@example.com",
            "traits": {"first_name": "Bob"},
        },
        _product("add_to_cart", bob, 40, *stove, quantity=1),
        _product("purchase", bob, 39, *stove, quantity=1),
        _product("product_view", bob, 30, *lamp),
        {**_product("product_view", {"anonymous_id": "a_cy"}, 20, *bag)},
        {
            "type": "identify",
            **dee,
            "ts": at(300),
            "email": "dee@example.com",
            "traits": {"first_name": "Dee"},
        },
        _product("add_to_cart", dee, 40, *tent, quantity=1),
        _product("purchase", dee, 9, *tent, quantity=1),
    ]
    for n, event in enumerate(out):
        event["message_id"] = f"shop-{n}"
    return out


@dataclass
class Shop:
    engine: sa.Engine
    ids: dict[str, int]  # user id (or anonymous id) -> profile id


def build_shop(url: str, folder: Path) -> Shop:
    """The shop in a fresh database at ``url``: events, catalogue, consent,
    scores, and segment runs at ``CHECKOUT - 1h`` (before dee bought) and ``END``."""
    engine = open_db(url)
    report = ingest(engine, events())
    assert not report.rejected, report.rejected
    with engine.begin() as conn:
        conn.execute(
            PRODUCTS.insert(),
            [
                {
                    "id": pid,
                    "name": name,
                    "category": cat,
                    "price": price,
                    "currency": "USD",
                    "url": f"{SHOP}/p/{pid}",
                    "image_url": f"{SHOP}/img/{pid}.jpg",
                    "in_stock": stock,
                }
                for pid, name, cat, price, stock in CATALOGUE
            ],
        )
    set_consent(engine, "u_ada", "email", True, "test")
    (folder / "segments.yaml").write_text(SEGMENTS)
    kinds = condition_kinds()
    definitions = load_segment_files(folder, kinds)
    run_segments(engine, CHECKOUT - timedelta(hours=1), kinds=kinds, definitions=definitions)
    # Full: the events after the first run were stored before it, so an
    # incremental run would not look at them.
    run_segments(engine, END, kinds=kinds, definitions=definitions, full=True)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.id, coalesce(p.user_id, i.value) FROM profiles p"
                " LEFT JOIN identities i ON i.profile_id = p.id AND i.kind = 'anonymous_id'"
            )
        ).all()
    ids = {key: pid for pid, key in rows}
    with engine.begin() as conn:
        store_scores(conn, {"engagement": {ids["u_ada"]: ScoreValue(82.5, {})}}, END)
    return Shop(engine, ids)
