"""CSV import through column mappings: casts, constants, computed fields, rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import EVENTS
from core.ingestion import MappingError, import_file
from core.plugins import file_sources
from core.types import ReadOptions

CSV = """order,customer,when,sku,qty,price,channel
A1,17850.0,2026-03-01 09:00:00,P1,2,10.50,web
A1,17850.0,2026-03-01 09:00:00,P2,1,4.00,web
C9,17850.0,2026-03-02 10:00:00,P1,-1,10.50,web
A2,,2026-03-02 11:00:00,P3,1,3.00,store
A3,12.5,2026-03-02 12:00:00,P3,1,3.00,web
A4,99,2026-03-02 13:00:00,P3,x,3.00,web
"""

OPTIONS = ReadOptions(
    columns={
        "customer": "user_id:int",
        "when": "ts",
        "sku": "product_id",
        "order": "properties.order_id",
        "qty": "properties.quantity:int",
    },
    constants={"type": "purchase", "currency": "EUR"},
    computed={"value": "abs(qty * price)"},
    rules=[{"when": {"order": {"starts_with": "C"}}, "set": {"type": "refund"}}],
    timezone="Europe/Paris",
)


@pytest.fixture
def engine(fresh_sqlite):
    return open_db(fresh_sqlite())


def test_rows_are_mapped_and_bad_rows_named(engine, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    report = import_file(engine, path, OPTIONS, sources=file_sources())
    assert report.accepted == 3
    reasons = {r.location: r.reason for r in report.rejected}
    assert reasons == {
        f"{path}:5": "needs user_id, anonymous_id or email to know whose event it is",
        f"{path}:6": "column 'customer' (user_id:int): '12.5' is not an integer",
        f"{path}:7": "column 'qty' (properties.quantity:int): 'x' is not an integer",
    }
    with engine.connect() as conn:
        rows = conn.execute(sa.select(EVENTS).order_by(EVENTS.c.ts, EVENTS.c.product_id)).all()
    first = rows[0]
    assert first.type == "purchase" and first.product_id == "P1"
    assert first.ts == datetime(2026, 3, 1, 8, tzinfo=UTC)  # Paris is UTC+1 in March
    assert (first.value, first.currency) == (21.0, "EUR")
    # Unmapped columns are kept as properties under their own names.
    assert first.properties == {"order_id": "A1", "quantity": 2, "price": "10.50", "channel": "web"}
    refund = rows[2]
    assert (refund.type, refund.value, refund.properties["quantity"]) == ("refund", 10.5, -1)


def test_tsv_and_gzip(engine, tmp_path):
    import gzip

    path = tmp_path / "views.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("user\tts\tpage\nu1\t2026-03-01T10:00:00Z\t/a\nu2\t2026-03-01T10:01:00Z\t/b\n")
    options = ReadOptions(
        columns={"user": "user_id", "page": "url"}, constants={"type": "page_view"}
    )
    assert import_file(engine, path, options, sources=file_sources()).accepted == 2


@pytest.mark.parametrize(
    "options, message",
    [
        (ReadOptions(columns={"nope": "user_id"}), "column(s) nope not in the header"),
        (ReadOptions(columns={"customer": "userid"}), "unknown field 'userid'"),
        (ReadOptions(columns={"customer": "user_id:date"}), "unknown cast ':date'"),
        (ReadOptions(computed={"value": "__import__('os')"}), "only numbers, columns"),
        (ReadOptions(computed={"value": "qty *"}), "bad expression"),
        (
            ReadOptions(rules=[{"when": {"order": {"like": "C%"}}, "set": {}}]),
            "unknown test 'like'",
        ),
    ],
)
def test_mapping_mistakes_are_usage_errors_before_any_row(engine, tmp_path, options, message):
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    with pytest.raises(MappingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_file(engine, path, options, sources=file_sources())
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one() == 0


def test_ragged_rows_are_rejected(engine, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        'user_id,type,ts\nu1,page_view,2026-01-01T00:00:00Z,extra\n"u2",page_view,2026-01-01T00:00:00Z\n'
    )
    report = import_file(engine, path, sources=file_sources())
    assert report.accepted == 1
    assert report.rejected[0].location.endswith("r.csv:2")
    assert "more fields than the 3 header columns" in report.rejected[0].reason


ROWS = """arm,visit,conversion,spend
email,1,1,25.50
email,0,0,0
control,1,0,0
"""


def test_also_events_and_row_ids(engine, tmp_path):
    path = tmp_path / "campaign.csv"
    path.write_text(ROWS)
    options = ReadOptions(
        row_id={"field": "user_id", "prefix": "c-"},
        columns={"arm": "properties.arm"},
        constants={"type": "campaign_assigned", "campaign": "c1", "ts": "2026-01-01T00:00:00Z"},
        also=[
            {"when": {"visit": "1"}, "set": {"type": "page_view", "ts": "2026-01-03T00:00:00Z"}},
            {
                "when": {"conversion": "1"},
                "set": {"type": "purchase", "properties.channel": "web"},
                "computed": {"value": "spend * 2"},
            },
        ],
    )
    report = import_file(engine, path, options, sources=file_sources())
    assert (report.received, report.accepted, report.rejected) == (6, 6, [])
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(EVENTS.c.type, EVENTS.c.ts, EVENTS.c.value, EVENTS.c.campaign,
                      EVENTS.c.properties, sa.literal_column("(select user_id from profiles "
                      "where profiles.id = events.profile_id)")).order_by(EVENTS.c.id)
        ).all()  # fmt: skip
    day1, day3 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    assert [(r[0], r[-1]) for r in got] == [
        ("campaign_assigned", "c-1"), ("page_view", "c-1"), ("purchase", "c-1"),
        ("campaign_assigned", "c-2"), ("campaign_assigned", "c-3"), ("page_view", "c-3"),
    ]  # fmt: skip
    purchase = got[2]
    # An extra event has the row's person and time, and only its own fields.
    assert (purchase.ts, purchase.value, purchase.campaign) == (day1, 51.0, None)
    assert purchase.properties == {"channel": "web"}
    assert got[1].ts == day3 and got[0].properties["arm"] == "email"


@pytest.mark.parametrize(
    "also, line, message",
    [
        ("  - {when: {visit: '1'}}\n", 3, "also[0]: an extra event is {when (optional), set,"),
        ("  - {set: {kind: x}}\n", 3, "also[0].set: needs the event's type"),
        ("  - set: {type: x}\n  - set:\n      type: x\n      colour: red\n", 6, "unknown field"),
        ("  - set: {type: x}\n    computed: {value: 'spend +'}\n", 4, "bad expression"),
        ("  - set: {type: x}\n    when: {visit: {like: 1}}\n", 4, "unknown test 'like'"),
    ],
)
def test_mistakes_in_also_name_the_mapping_files_line(engine, tmp_path, also, line, message):
    from core.ingestion.options import load_read_options

    path = tmp_path / "campaign.csv"
    path.write_text(ROWS)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("constants: {type: campaign_assigned}\nalso:\n" + also)
    options = load_read_options(mapping)
    with pytest.raises(MappingError) as info:
        import_file(engine, path, options, sources=file_sources())
    assert str(info.value).startswith(f"{mapping}:{line}: ")
    assert message in str(info.value)


def test_a_bad_row_id_is_named(engine, tmp_path):
    path = tmp_path / "campaign.csv"
    path.write_text(ROWS)
    with pytest.raises(MappingError, match=r"row_id: expected \{field: NAME"):
        import_file(engine, path, ReadOptions(row_id={"prefix": "x"}), sources=file_sources())
