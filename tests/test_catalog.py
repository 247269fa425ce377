"""The product catalogue: catalogue files through column maps (bad rows named,
good ones kept), product events keeping it current (newest wins, on both
backends and for bulk loads), and an import killed between storing events
and updating the catalogue made whole again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from core.catalog import PRODUCT_EVENT_TYPES, load_products, refresh_products
from core.db import make_engine, open_db
from core.db.tables import PRODUCTS
from core.ingestion import ingest
from core.maintenance import delete_all_data
from core.plugins import events_ingested_hook, profiles_loaded_hook
from tests.helpers import segflow_child, write_jsonl

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)

CATALOGUE = """SKU,Title,Category,Price,Stock,Image,Notes
T1,Trail Tent,tents,199.00,yes,https://img.example/t1.jpg,first
T2,Dome Tent,tents,-5,yes,,negative price
B1,Day Pack,backpacks,49.5,maybe,,bad stock
,No Id,tents,10,yes,,missing id
B2,Alpine Pack,backpacks,120,no,,
T1,Trail Tent 2P,tents,189.00,,,a later line wins; the empty stock keeps yes
"""
MAPPING = """columns:
  SKU: id
  Title: name
  Category: category
  Price: price
  Stock: in_stock
  Image: image_url
constants:
  currency: eur
"""


def products(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(PRODUCTS).order_by(PRODUCTS.c.id)).mappings()
        return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}


def test_catalog_import_keeps_the_good_rows_and_names_the_bad(db_url, run, tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(CATALOGUE)
    (tmp_path / "products.yaml").write_text(MAPPING)
    status, out, err = run(
        "--db", db_url, "catalog", "import", str(path), "--map", "products.yaml", "--json"
    )
    assert status == 1
    report = json.loads(out)[str(path)]
    assert (report["received"], report["accepted"], report["rejected"]) == (6, 3, 3)
    assert (report["products"], report["created"]) == (2, 2)
    assert [(r["location"], r["reason"]) for r in report["rejections"]] == [
        (f"{path}:3", "field 'price': '-5' is negative; a price is 0 or more"),
        (f"{path}:4", "field 'in_stock': 'maybe' is not true/false (or yes/no, 1/0)"),
        (f"{path}:5", "field 'id': required"),
    ]
    engine = open_db(db_url)
    stored = products(engine)
    stamp = stored["T1"].pop("updated_at")
    assert stored["B2"].pop("updated_at") == stamp  # the time of the import
    assert stored == {
        "B2": {
            "name": "Alpine Pack",
            "category": "backpacks",
            "price": 120.0,
            "currency": "EUR",
            "url": None,
            "image_url": None,
            "in_stock": False,
        },
        "T1": {
            "name": "Trail Tent 2P",
            "category": "tents",
            "price": 189.0,
            "currency": "EUR",
            "url": None,
            "image_url": "https://img.example/t1.jpg",
            "in_stock": True,
        },
    }

    # A JSON Lines update: given fields change, the rest stays; a row stamped
    # before what is stored changes nothing; bad lines are named.
    update = write_jsonl(
        tmp_path / "update.jsonl",
        [
            {"id": "B2", "in_stock": True, "price": 99},
            "{not json",
            {"id": "T1", "price": "cheap"},
            {"id": "T1", "name": "Old name", "updated_at": "2001-01-01T00:00:00Z"},
            {"id": "N1", "name": "New", "updated_at": "2026-01-01 00:00:00"},
        ],
    )
    status, out, err = run("--db", db_url, "catalog", "import", str(update))
    assert status == 1
    assert f"rejected {update}:2: invalid JSON" in err
    assert f"rejected {update}:3: field 'price': 'cheap' is not a number" in err
    assert f"rejected {update}:5: field 'updated_at': give a UTC offset" in err
    after = products(engine)
    assert (after["B2"]["price"], after["B2"]["in_stock"], after["B2"]["name"]) == (
        99.0,
        True,
        "Alpine Pack",
    )
    assert after["T1"]["name"] == "Trail Tent 2P"
    assert after["T1"]["updated_at"] == stamp
    assert set(after) == {"B2", "T1"}


def test_catalog_import_usage_errors(run, tmp_path):
    db = f"sqlite:///{tmp_path}/db.sqlite"
    path = tmp_path / "products.csv"
    path.write_text(CATALOGUE)
    status, _, err = run("--db", db, "catalog", "import", str(path), "--map", "Title=title")
    assert status == 2
    assert "column 'Title': unknown field 'title' (use one of category, currency, id" in err
    assert "properties.NAME" not in err
    status, _, err = run("--db", db, "catalog", "import", str(tmp_path / "missing.csv"))
    assert status == 2 and "missing.csv: no such file" in err


def view(user: str, product: str, ts: datetime, **fields) -> dict:
    event = {"type": "product_view", "user_id": user, "product_id": product}
    return {**event, "ts": ts.isoformat(), **fields}


def test_product_events_keep_the_catalogue_current_and_newest_wins(db_url):
    engine = open_db(db_url)
    hook = events_ingested_hook(engine)
    url = "https://shop.example/p/P1"
    first = [
        view(
            "u1",
            "P1",
            T0 + timedelta(hours=1),
            url=url,
            properties={"name": "Tent", "category": "tents", "price": 100},
        ),
        {
            "type": "add_to_cart",
            "user_id": "u1",
            "product_id": "P1",
            "ts": (T0 + timedelta(hours=2)).isoformat(),
            "url": url,
            "value": 180.0,
            "currency": "EUR",
            "properties": {"price": 90, "quantity": 2},
        },
        {
            "type": "purchase",
            "user_id": "u1",
            "product_id": "P1",
            "ts": (T0 + timedelta(hours=3)).isoformat(),
            "url": "https://shop.example/checkout",
            "properties": {"price": "abc", "name": "Tent v2", "in_stock": False},
        },
        # Not a product event, and a product event saying nothing of its product.
        {"type": "page_view", "user_id": "u1", "product_id": "P9", "properties": {"name": "x"}},
        view("u2", "P2", T0 + timedelta(hours=1)),
    ]
    assert ingest(engine, first, on_stored=hook).ok
    assert products(engine) == {
        "P1": {
            "name": "Tent v2",
            "category": "tents",
            "price": 90.0,  # the purchase's "abc" is no price
            "currency": "EUR",  # the cart's: its price came with it
            "url": url,  # a product_view's page; the checkout is not the product's
            "image_url": None,
            "in_stock": False,
            "updated_at": T0 + timedelta(hours=3),
        }
    }
    # Late, older than the row: nothing changes.
    late = view("u2", "P1", T0 + timedelta(minutes=30), properties={"price": 120, "image_url": "i"})
    assert ingest(engine, [late], on_stored=hook).ok
    assert products(engine)["P1"]["price"] == 90.0
    assert products(engine)["P1"]["image_url"] is None
    # The catalogue says back in stock (as of T0 + 5h); an event from before does
    # not undo it, a newer one changes the price.
    load_products(engine, [{"id": "P1", "in_stock": True}], now=T0 + timedelta(hours=5))
    before = view("u3", "P1", T0 + timedelta(hours=4), properties={"price": 80, "in_stock": False})
    newer = view("u3", "P1", T0 + timedelta(hours=6), properties={"price": 70})
    assert ingest(engine, [before, newer], on_stored=hook).ok
    row = products(engine)["P1"]
    assert (row["price"], row["in_stock"], row["updated_at"]) == (
        70.0,
        True,
        T0 + timedelta(hours=6),
    )
    assert refresh_products(engine) == 0  # nothing new since


def test_a_bulk_load_updates_the_catalogue_once_at_its_end(fresh_sqlite, register_plugin):
    engine = open_db(fresh_sqlite())
    calls = []

    class Count:
        @staticmethod
        def on_profiles_loaded(profile_ids, engine):
            calls.append(len(profile_ids))

    register_plugin(Count)
    events = [
        view(f"u{i}", f"P{i % 7}", T0 + timedelta(minutes=i), properties={"price": float(i)})
        for i in range(300)
    ]
    report = ingest(
        engine,
        events,
        batch_size=50,
        bulk=True,
        on_stored=events_ingested_hook(engine, bulk=True),
        on_loaded=profiles_loaded_hook(engine),
    )
    assert report.accepted == 300 and calls == [300]
    # Each product's price is its newest view's.
    assert {p: row["price"] for p, row in products(engine).items()} == {
        f"P{k}": float(max(i for i in range(300) if i % 7 == k)) for k in range(7)
    }


def test_the_plugin_knows_the_product_event_types():
    from plugins.catalog import events

    assert set(PRODUCT_EVENT_TYPES) == events.PRODUCT_EVENT_TYPES


# -- killed between storing events and updating the catalogue ---------------------------


def catalogue_events(path, n: int = 60):
    """Views of 8 products whose prices change over time, in time order."""
    records = []
    for i in range(n):
        ts = T0 + timedelta(minutes=i)
        props = {"name": f"Product {i % 8}", "price": float(100 + i), "in_stock": i % 5 != 0}
        record = view(f"u{i % 13}", f"P{i % 8}", ts, properties=props)
        records.append({**record, "message_id": f"m{i}"})
    return write_jsonl(path, records)


def segflow(url: str, *args: str, cwd, crash_at: str | None = None):
    # Only what the import needs: the file reader and the catalogue hook.
    plugins = "plugins.sources.files,plugins.catalog.events"
    return segflow_child(url, *args, cwd=cwd, plugins=plugins, crash_at=crash_at)


def snapshot(url: str) -> dict[str, dict]:
    engine = make_engine(url)
    try:
        return products(engine)
    finally:
        engine.dispose()


def uninterrupted(engine, path) -> dict[str, dict]:
    """The catalogue an import of ``path`` leaves (batches of 20, the hook after each)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert ingest(engine, records, batch_size=20, on_stored=events_ingested_hook(engine)).ok
    expected = products(engine)
    assert len(expected) == 8
    delete_all_data(engine)
    return expected


def test_an_import_killed_before_its_catalogue_update_is_caught_up_by_the_rerun(db_url, tmp_path):
    """SIGKILL after the second of three batches is committed, before its
    catalogue hook: running the import again stores the third batch, whose
    refresh reads every product event since the last refresh, the second
    batch's too, and the catalogue ends as after an uninterrupted import."""
    path = catalogue_events(tmp_path / "views.jsonl")
    engine = open_db(db_url)
    expected = uninterrupted(engine, path)
    engine.dispose()
    args = ("import", str(path), "--batch-size", "20", "--no-bulk")
    killed = segflow(db_url, *args, cwd=tmp_path, crash_at="ingest.batch:2")
    assert killed.returncode == -9, killed.stderr
    assert snapshot(db_url) != expected
    again = segflow(db_url, *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert snapshot(db_url) == expected


def test_a_missed_last_update_is_made_up_by_segflow_catalog_refresh(db_url, tmp_path, run):
    """Killed after the last batch, a rerun stores nothing and calls no hook:
    the refresh command catches up (here the kill is a batch stored with no
    hook, as a kill between the commit and the hook leaves it)."""
    path = catalogue_events(tmp_path / "views.jsonl")
    engine = open_db(db_url)
    expected = uninterrupted(engine, path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert ingest(engine, records[:40], batch_size=20, on_stored=events_ingested_hook(engine)).ok
    assert ingest(engine, records[40:], batch_size=20).ok
    assert ingest(engine, records, batch_size=20, on_stored=events_ingested_hook(engine)).ok
    assert products(engine) != expected  # all duplicates: no hook was called
    status, out, _ = run("--db", db_url, "catalog", "refresh")
    assert status == 0 and "products updated from events" in out
    assert products(engine) == expected
