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
