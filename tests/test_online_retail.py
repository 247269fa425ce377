"""The real UCI Online Retail file through the CSV path and the shipped mapping."""

from __future__ import annotations

import csv
import gzip

import sqlalchemy as sa

from core.db import open_db
from core.db.tables import EVENTS, PROFILES
from tests.conftest import require_shared


def test_every_customer_line_is_accounted_for(online_retail):
    path = require_shared("online_retail/online_retail.csv.gz")
    report, make = online_retail  # imported through examples/mappings/online_retail.yaml
    engine = open_db(make())

    # Independent expectations, straight from the file.
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    customer_rows = [r for r in rows if r[6]]
    guest_lines = {i + 2 for i, r in enumerate(rows) if not r[6]}
    distinct = {tuple(r) for r in customer_rows}
    distinct_refunds = {r for r in distinct if r[0].startswith("C")}
    customers = {r[6] for r in customer_rows}

    assert report.received == len(rows)
    assert report.accepted + report.duplicates == len(customer_rows)
    assert report.accepted == len(distinct)  # exact repeated lines are the duplicates
    rejected_lines = {int(r.location.rsplit(":", 1)[1]) for r in report.rejected}
    assert rejected_lines == guest_lines  # every guest line is reported, nothing else is
    assert all("needs user_id" in r.reason for r in report.rejected)
    with engine.connect() as conn:
        by_type = dict(
            conn.execute(sa.select(EVENTS.c.type, sa.func.count()).group_by(EVENTS.c.type)).all()
        )
        profiles = conn.execute(sa.select(sa.func.count()).select_from(PROFILES)).scalar_one()
        negative = conn.execute(sa.select(sa.func.count()).where(EVENTS.c.value < 0)).scalar_one()
    assert by_type == {
        "refund": len(distinct_refunds),
        "purchase": len(distinct) - len(distinct_refunds),
    }
    assert profiles == len(customers)
    assert negative == 0  # refunds carry the amount; the type says it went back
