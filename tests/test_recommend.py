"""Recommendations: the related recommender on a store built to have known
answers, its refresh, the CLI, and on real data (Online Retail) against
popularity, never recommending what was bought or is out of stock."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import core
from bench import recommend as evaluation
from core.cli import main
from core.db import open_db
from core.db.tables import PRODUCT_RELATED, PROFILES, RECOMMENDER_RUNS
from core.ingestion import ingest
from tests.conftest import require_shared

NOW = datetime(2026, 6, 1, tzinfo=UTC)

CATALOGUE = [
    {"id": "T1", "name": "Trail Tent", "category": "tents", "price": 199.0},
    {"id": "T2", "name": "Dome Tent", "category": "tents", "price": 149.0},
    {"id": "T3", "name": "Storm Tent", "category": "tents", "price": 299.0, "in_stock": False},
    {"id": "T4", "name": "Cabin Tent", "category": "tents", "price": 399.0},
    {"id": "T5", "name": "Bivy Tent", "category": "tents", "price": 99.0},
    {"id": "B1", "name": "Day Pack", "category": "backpacks", "price": 49.0},
    {"id": "B2", "name": "Alpine Pack", "category": "backpacks", "price": 129.0},
    {"id": "S1", "name": "Wool Sock", "category": "socks", "price": 19.0},
]


def event(kind: str, user: str, product: str, days_ago: float) -> dict:
    ts = NOW - timedelta(days=days_ago)
    return {"type": kind, "user_id": user, "product_id": product, "ts": ts.isoformat()}


def store_events() -> list[dict]:
    """Tent browsers view T1 with T2 (many), with T3 (sold out) and with T5
    (fewer); T1 buyers also buy B1; S1 is the best-seller, bought alone; T4 is
    the tents' best-seller; nobody looks at B2."""
    out = []
    for i in range(8):
        out += [event("product_view", f"v{i}", "T1", 3), event("product_view", f"v{i}", "T2", 3)]
    for i in range(6):
        out += [event("product_view", f"w{i}", "T1", 2), event("product_view", f"w{i}", "T3", 2)]
    for i in range(3):
        out += [event("product_view", f"x{i}", "T1", 2), event("product_view", f"x{i}", "T5", 2)]
    for i in range(4):
        out += [event("purchase", f"b{i}", "T1", 5), event("purchase", f"b{i}", "B1", 5)]
    out += [event("purchase", f"s{i}", "S1", 1) for i in range(20)]
    out += [event("purchase", f"t{i}", "T4", 1) for i in range(5)]
    # The person: viewed T1 a day ago, bought B1 long ago.
    out += [event("purchase", "me", "B1", 30), event("product_view", "me", "T1", 1)]
    # Someone who bought T2 tomorrow, for as_of.
    out += [event("product_view", "me2", "T1", 1), event("purchase", "me2", "T2", -1)]
    return out


@pytest.fixture
def store(db_url):
    engine = open_db(db_url)
    assert ingest(engine, store_events()).ok
    core.load_products(engine, CATALOGUE, now=NOW)
    (done,) = core.refresh_recommendations(engine, NOW)
    assert done["recommender"] == "related" and done["popular"] == 7
    return engine


def profile(conn, user: str) -> int:
    return conn.execute(sa.select(PROFILES.c.id).where(PROFILES.c.user_id == user)).scalar_one()


def test_related_products_then_category_then_overall_best_sellers(store):
    with store.connect() as conn:
        me = profile(conn, "me")
        picks = core.recommend(conn, me, k=5, as_of=NOW)
    # T2 and T5 are related to T1 (T2 more often), T3 is sold out, T1 was seen
    # and B1 bought; then the best-seller of tents and backpacks, then the
    # best-seller overall; B2, which nobody looked at, is nobody's pick.
    assert [p["id"] for p in picks] == ["T2", "T5", "T4", "S1"]
    scores = [p["score"] for p in picks]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert picks[0] == {
        "id": "T2",
        "name": "Dome Tent",
        "category": "tents",
        "price": 149.0,
        "currency": None,
        "url": None,
        "image_url": None,
        "in_stock": True,
        "score": scores[0],
    }
    with store.connect() as conn:
        assert [p["id"] for p in core.recommend(conn, me, k=2, as_of=NOW)] == ["T2", "T5"]
        # Bought only what nothing is related to: the best-sellers, in stock.
        stranger = profile(conn, "s0")
        assert [p["id"] for p in core.recommend(conn, stranger, k=3, as_of=NOW)] == [
            "T1",
            "T4",
            "B1",
        ]


def test_as_of_decides_what_was_bought(store):
    with store.connect() as conn:
        me2 = profile(conn, "me2")
        before = [p["id"] for p in core.recommend(conn, me2, k=3, as_of=NOW)]
        after = [p["id"] for p in core.recommend(conn, me2, k=3, as_of=NOW + timedelta(days=2))]
    # Bought with T1 by everyone who bought T1, B1 comes first; T2 until bought.
    assert before == ["B1", "T2", "T5"]
    assert "T2" not in after and after[:2] == ["B1", "T5"]


def test_a_refresh_replaces_the_previous_one(store):
    with store.connect() as conn:
        first = conn.execute(sa.select(sa.func.count()).select_from(PRODUCT_RELATED)).scalar()
    # Long after, every event is outside the window: nothing is related any more.
    (done,) = core.refresh_recommendations(store, NOW + timedelta(days=800))
    with store.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(PRODUCT_RELATED)).scalar()
        run = conn.execute(sa.select(RECOMMENDER_RUNS)).one()
    assert first > 0 and rows == done["related"] == 0 and done["popular"] == 0
    assert run.as_of == NOW + timedelta(days=800) and (run.related, run.popular) == (0, 0)


def test_segflow_recommend_user_and_refresh(store, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = store.url.render_as_string(hide_password=False)
    at = NOW.isoformat()
    assert main(["--db", url, "recommend", "refresh", "--as-of", at, "--json"]) == 0
    (done,) = json.loads(capsys.readouterr().out)
    assert done["recommender"] == "related" and done["related"] > 0
    assert main(["--db", url, "recommend", "me", "-k", "2", "--as-of", at, "--json"]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == ["T2", "T5"]
    assert main(["--db", url, "recommend", "me", "-k", "2", "--as-of", at]) == 0
    assert "Dome Tent" in capsys.readouterr().out
    assert main(["--db", url, "recommend", "me", "--recommender", "nope"]) == 2
    assert "unknown recommender 'nope' (registered: related" in capsys.readouterr().err
    assert main(["--db", url, "recommend", "nobody"]) == 1
    assert "no profile with user id" in capsys.readouterr().err


# -- Online Retail ----------------------------------------------------------------------

# Every 6th customer: about 45,000 stored lines and 430 customers evaluated.
EVERY = 6


@pytest.fixture(scope="module")
def online_retail():
    path = require_shared("online_retail/online_retail.csv.gz")
    lines = evaluation.read_lines(path, EVERY)
    split = evaluation.split_last_invoice(lines)
    buyers = Counter(p for p, _ in {(line.product, line.customer) for line in split.train})
    # The ten best-sellers sold out: both methods would otherwise pick them often.
    sold_out = {p for p, _ in buyers.most_common(10)}
    latest = {line.product: line for line in sorted(lines, key=lambda line: line.ts)}
    catalogue = [
        {"id": p, "price": line.price, "currency": "GBP", "in_stock": p not in sold_out}
        for p, line in latest.items()
    ]
    return split, catalogue, sold_out


def test_related_beats_popularity_on_online_retail(db_url, online_retail):
    split, catalogue, sold_out = online_retail
    engine = open_db(db_url)
    as_of = evaluation.load(engine, split, lambda e: core.load_products(e, catalogue, now=NOW))
    result = evaluation.evaluate(engine, split, as_of)
    assert result.related.customers == len(split.hidden) > 300
    assert result.related.hit_rate > result.popular.hit_rate
    assert result.related.ndcg > result.popular.ndcg
    for customer, picks in result.related_picks.items():
        assert len(picks) == evaluation.K, customer
        assert not set(picks) & split.bought[customer], customer
        assert not set(picks) & sold_out, customer
    for customer, picks in result.popular_picks.items():
        assert not set(picks) & (split.bought[customer] | sold_out), customer
