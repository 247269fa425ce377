"""The plain-form fast path: records it accepts are stored exactly as ``Event``
would store them; everything else is left to ``Event``."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.db import open_db
from core.db.sql import sqlite_time
from core.db.tables import EVENTS
from core.ingestion import Event, ingest
from core.ingestion.plain import TS_TEXT, as_event, plain_fields
from core.ingestion.writers import EVENT_COLUMNS, _sqlite_ts_of
from plugins.demo.generator import generate

ISO = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
).map(lambda d: d.isoformat())


@st.composite
def utc_texts(draw):
    """ISO text of a UTC time as trackers write it: Z or +00:00, 0-6 fraction digits."""
    d = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    digits = draw(st.integers(0, 6))
    fraction = f"{d.microsecond:06d}"[:digits]
    return (
        d.strftime("%Y-%m-%dT%H:%M:%S").zfill(19)
        + (f".{fraction}" if digits else "")
        + draw(st.sampled_from(["Z", "+00:00"]))
    )


TEXT = st.one_of(
    st.none(), st.sampled_from(["s", "", " padded ", "0", "x" * 256, 5, 2.5]), st.text(max_size=8)
)
FIELDS = {
    "type": st.sampled_from(["page_view", "identify", "purchase", "Bad-Type", "t" * 65, 3]),
    "user_id": TEXT,
    "anonymous_id": TEXT,
    "email": st.one_of(
        st.none(),
        st.sampled_from(
            ["a@b.co", "a.b+c@x-y.example.org", "A@b.co", " a@b.co", "bad", "", "é@b.co"]
        ),
        st.emails(),
    ),
    "ts": st.one_of(
        st.none(),
        ISO,
        st.sampled_from(
            [
                "2026-03-01T10:00:00Z",
                "2026-03-01T10:00:00.5+02:00",
                "2026-03-01T10:00:00.123456-05:30",
                "2026-02-30T10:00:00Z",
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00",
                "2026-03-01T10:00:00",
                "2026-03-01 10:00:00Z",
                "1772359200",
                "",
            ]
        ),
        st.sampled_from([1772359200, 1772359200.5, True]),
    ),
    "session_id": TEXT,
    "product_id": TEXT,
    "value": st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.sampled_from([True, "3.5", 0, 0.0, -0.0]),
    ),
    "currency": st.sampled_from([None, "EUR", "eur", " USD", "EURO", "", 5]),
    "url": st.one_of(TEXT, st.just("u" * 5000)),
    "campaign": TEXT,
    "properties": st.one_of(
        st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
        st.sampled_from([{1: "x"}, "nope", None, {"n": 2**70}, {"nested": {"a": [1, 2.5]}}]),
    ),
    "traits": st.one_of(
        st.none(), st.sampled_from([{"email": "A@x.io"}, {"plan": "pro"}, {}, "nope"])
    ),
    "message_id": st.one_of(st.sampled_from(["m", "", "x" * 256, 7]), st.text(max_size=5)),
    "surprise": st.just(1),  # not an Event field
}


# Values of the plain form, to start from: most examples then differ from it in
# a field or two, so both outcomes are common.
PLAIN = {
    "type": st.sampled_from(["page_view", "identify", "purchase", "x_1"]),
    "user_id": st.sampled_from(["u1", " u2 ", "0"]),
    "anonymous_id": st.sampled_from(["a1", "a-2"]),
    "email": st.sampled_from(["a@b.co", "x.y+z@sub.example.org"]),
    "ts": st.one_of(ISO, utc_texts()),
    "session_id": st.sampled_from(["s1", "", "0"]),
    "product_id": st.sampled_from(["p1", "0"]),
    "value": st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**6)
    ),
    "currency": st.just("EUR"),
    "url": st.sampled_from(["https://shop.example.com/", ""]),
    "campaign": st.sampled_from(["spring", ""]),
    "properties": FIELDS["properties"].filter(lambda v: isinstance(v, dict) and 1 not in v),
    "traits": st.sampled_from([{"email": "A@x.io"}, {"plan": "pro"}, {}]),
    "message_id": st.text(min_size=1, max_size=5),
}


@st.composite
def records(draw):
    record = {k: draw(PLAIN[k]) for k in ("type", "message_id", "user_id")}
    for k in draw(st.sets(st.sampled_from(sorted(PLAIN)))):
        record[k] = draw(PLAIN[k])
    for k in draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=2)):
        if k in record and draw(st.booleans()):
            del record[k]
        else:
            record[k] = draw(FIELDS[k])
    return record


@settings(max_examples=1500, deadline=None)
@given(data=records())
def test_what_the_plain_form_accepts_event_accepts_alike(data):
    fields = plain_fields(data)
    try:
        event = Event.model_validate(data)
    except ValidationError:
        event = None
    if fields is None:
        return  # Event decides, as before
    assert event is not None, f"plain form accepted what Event rejects: {data!r}"
    assert as_event(fields) == event
    assert fields.get("ts") is None or fields["ts"].tzinfo is UTC
    # A message_id made from the content counts as set on the plain path.
    assert as_event(fields).model_fields_set - {"message_id"} == event.model_fields_set - {
        "message_id"
    }


@pytest.fixture
def two_dbs(fresh_sqlite, request):
    """Where plain-form dicts go, and where the same records go as Events."""
    return open_db(fresh_sqlite()), open_db(fresh_sqlite())


def stored(engine) -> dict[str, tuple]:
    cols = [EVENTS.c[c] for c in EVENT_COLUMNS if c not in ("profile_id", "received_at")]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols)).all()
    return {row.message_id: tuple(row) for row in rows}


_ids = itertools.count()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=records())
def test_plain_and_event_paths_store_the_same_row(two_dbs, data):
    plain_db, event_db = two_dbs
    data = {**data, "message_id": f"id-{next(_ids)}"}  # every example stores a new row
    if plain_fields(data) is None:
        return
    ingest(plain_db, [data])
    ingest(event_db, [Event.model_validate(data)])
    plain_row = stored(plain_db)[data["message_id"]]
    event_row = stored(event_db)[data["message_id"]]
    if "ts" not in data:  # both store their own receive time then
        plain_row, event_row = plain_row[:1] + plain_row[2:], event_row[:1] + event_row[2:]
    assert plain_row == event_row


def test_demo_data_takes_the_plain_path():
    # The bulk benchmark's speed rests on this.
    sample = list(itertools.islice(generate(100, seed=3), 3000))
    assert all(plain_fields(e) is not None for e in sample)


@pytest.mark.parametrize(
    "change",
    [
        {"ts": 1772359200},  # epoch seconds
        {"ts": "2026-03-01T10:00:00"},  # no offset: a default timezone may apply
        {"ts": "2026-03-01T24:00:00Z"},  # midnight as 24:00, which Python 3.14 reads
        {"email": "Ann@Example.com"},  # normalised by Event
        {"currency": "eur"},
        {"value": "9.5"},
        {"user_id": 42},
        {"traits": {"plan": "pro"}},  # not allowed on a page_view: Event names it
        {"user_id": None},  # nobody's event
        {"colour": "red"},
    ],
)
def test_other_forms_are_left_to_event(change):
    base = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z", "message_id": "m"}
    assert plain_fields(base) is not None
    record = {k: v for k, v in {**base, **change}.items() if v is not None}
    assert plain_fields(record) is None


def test_a_missing_message_id_is_made_from_the_content_alike():
    record = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T12:00:00+02:00"}
    record["properties"] = {"b": [1, 2.5], "a": "x"}
    fields = plain_fields(record)
    assert fields is not None
    assert fields["message_id"] == Event.model_validate(record).message_id
    assert (
        fields["message_id"]
        == plain_fields({**record, "properties": {"a": "x", "b": [1, 2.5]}})["message_id"]
    )


def test_ts_format_turns_the_plain_path_off(engine_sqlite):
    # With a format, Event reads "2026-03-01T10:00:00Z" with strptime and rejects it.
    record = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z", "message_id": "m"}
    report = ingest(engine_sqlite, [record], ts_format="%d/%m/%Y %H:%M")
    assert (report.accepted, len(report.rejected)) == (0, 1)
    assert "does not match" in report.rejected[0].reason


@pytest.fixture
def engine_sqlite(fresh_sqlite):
    return open_db(fresh_sqlite())


def test_text_that_only_looks_like_an_escaped_nul_is_kept(engine_sqlite):
    record = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z"}
    record["properties"] = {"pattern": "\\u0000", "k\\u0000": 1}  # a backslash, then u0000
    assert plain_fields(record) is not None
    report = ingest(engine_sqlite, [record])
    assert report.accepted == 1


def test_properties_json_cannot_hold_are_rejected_not_fatal(engine_sqlite):
    # Encoding falls back to json for the huge integer, which refuses NaN.
    bad = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z"}
    bad["properties"] = {"n": 2**70, "x": float("nan")}
    good = {"type": "page_view", "user_id": "u2", "ts": "2026-03-01T10:00:00Z"}
    assert plain_fields(bad) is None
    report = ingest(engine_sqlite, [bad, good, {**good, "properties": {"s": {1, 2}}}])
    assert report.accepted == 1
    assert [r.reason.split(":")[0] for r in report.rejected] == ["field 'properties'"] * 2


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(utc_texts(), ISO))
def test_sqlite_time_text_cut_from_the_iso_text_equals_the_formatted_one(text):
    fields = plain_fields({"type": "page_view", "user_id": "u1", "ts": text})
    if fields is None:  # offsets in seconds ("-00:00:52") are left to Event
        assert not text.endswith(("Z", "+00:00"))
        return
    assert fields[TS_TEXT] == text
    assert _sqlite_ts_of(text, fields["ts"]) == sqlite_time(fields["ts"])
