"""The canonical event schema: what is accepted, normalised and rejected."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from core.ingestion import Event, describe_error


def check(data: dict, **ctx) -> Event:
    return Event.model_validate(data, context=ctx or None)


def reason(data: dict, **ctx) -> str:
    with pytest.raises(ValidationError) as info:
        check(data, **ctx)
    return describe_error(info.value)


@pytest.mark.parametrize(
    "ts, expected",
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T05:00:00.250-05:00", datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        (1772359200, datetime(2026, 3, 1, 10, tzinfo=UTC)),
        (1772359200.5, datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("1772359200", datetime(2026, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_timestamps_are_normalised_to_utc(ts, expected):
    event = check({"type": "page_view", "user_id": "u1", "ts": ts})
    assert event.ts == expected
    assert event.ts.utcoffset() == timedelta(0)


def test_naive_timestamp_is_rejected_unless_a_timezone_is_given():
    msg = reason({"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00"})
    assert "field 'ts'" in msg and "no UTC offset" in msg
    london = check(
        {"type": "page_view", "user_id": "u1", "ts": "2026-07-01T10:00:00"},
        default_tz=ZoneInfo("Europe/London"),
    )
    assert london.ts == datetime(2026, 7, 1, 9, tzinfo=UTC)  # BST is UTC+1


def test_custom_timestamp_format():
    event = check(
        {"type": "purchase", "user_id": "u1", "ts": "12/1/2010 8:26"},
        ts_format="%m/%d/%Y %H:%M",
        default_tz=UTC,
    )
    assert event.ts == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    msg = reason({"type": "purchase", "user_id": "u1", "ts": "2010-12-01"}, ts_format="%m/%d/%Y")
    assert "does not match '%m/%d/%Y'" in msg


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", True, 1772359200000])
def test_bad_timestamps_name_the_field(bad):
    msg = reason({"type": "page_view", "user_id": "u1", "ts": bad})
    assert msg.startswith("field 'ts'")


@pytest.mark.parametrize("bad", ["Page View", "page-view", "1st", "", "pageView"])
def test_event_type_must_be_snake_case(bad):
    assert reason({"type": bad, "user_id": "u1"}).startswith("field 'type'")


def test_custom_snake_case_types_are_fine():
    assert check({"type": "trail_guide_download", "user_id": "u1"}).type == "trail_guide_download"


def test_someone_must_own_the_event():
    assert "needs user_id, anonymous_id or email" in reason({"type": "page_view"})
    assert check({"type": "page_view", "email": " Ann@Example.COM "}).email == "ann@example.com"


def test_unknown_fields_are_rejected_with_a_hint():
    msg = reason({"type": "page_view", "user_id": "u1", "colour": "red"})
    assert "field 'colour': unknown field" in msg and "properties" in msg


def test_field_rules():
    assert check({"type": "purchase", "user_id": 17850, "currency": "gbp"}).user_id == "17850"
    assert check({"type": "purchase", "user_id": "u", "currency": "gbp"}).currency == "GBP"
    assert "field 'currency'" in reason({"type": "purchase", "user_id": "u", "currency": "pounds"})
    assert "field 'value'" in reason({"type": "purchase", "user_id": "u", "value": "lots"})
    assert "field 'value'" in reason({"type": "purchase", "user_id": "u", "value": float("nan")})
    assert "field 'email'" in reason({"type": "page_view", "email": "not-an-address"})
    assert "field 'properties'" in reason({"type": "x", "user_id": "u", "properties": [1]})


def test_traits_only_on_identify():
    assert check({"type": "identify", "user_id": "u", "traits": {"plan": "pro"}}).traits == {
        "plan": "pro"
    }
    assert "traits are only allowed" in reason({"type": "page_view", "user_id": "u", "traits": {}})


def test_message_id_is_a_content_hash_when_absent():
    base = {"type": "page_view", "user_id": "u1", "ts": "2026-03-01T10:00:00Z", "url": "/"}
    a = check(base)
    assert a.message_id.startswith("h-")
    # The same event written differently is the same event.
    same = check(base | {"ts": "2026-03-01T11:00:00+01:00"})
    assert same.message_id == a.message_id
    assert check(base | {"url": "/about"}).message_id != a.message_id
    assert check(base | {"properties": {"x": 1}}).message_id != a.message_id
    assert check(base | {"message_id": "abc"}).message_id == "abc"


def test_all_errors_of_a_record_are_reported_together():
    msg = reason({"type": "Bad", "ts": "nope", "user_id": "u"})
    assert "field 'type'" in msg and "field 'ts'" in msg


def test_timestamps_utc_cannot_hold_are_rejected_not_fatal():
    msg = reason({"type": "page_view", "user_id": "u1", "ts": "0001-01-01T00:00:00+01:00"})
    assert "field 'ts'" in msg and "out of range" in msg


@pytest.mark.parametrize(
    "change, field",
    [
        ({"user_id": "u\x001"}, "user_id"),
        ({"url": "/a\x00b"}, "url"),
        ({"email": "a\x00@b.co"}, "email"),
        ({"properties": {"q": ["ok", "n\x00"]}}, "properties"),
        ({"properties": {"k\x00": 1}}, "properties"),
    ],
)
def test_nul_characters_are_rejected_naming_the_field(change, field):
    # PostgreSQL cannot store them; SQLite could, but both backends answer alike.
    msg = reason({"type": "page_view", "user_id": "u1", **change})
    assert msg == f"field '{field}': contains a NUL character (\\x00), which cannot be stored" + (
        " (in a key or a value)" if field == "properties" else ""
    )


def test_validation_errors_of_any_model_are_described_in_one_line():
    from pydantic import BaseModel, ConfigDict, ValidationError

    from core.errors import describe_validation_error

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str
        size: int

    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"size": "big", "colour": "red"})
    assert describe_validation_error(info.value) == (
        "field 'name': required; "
        "field 'size': Input should be a valid integer, unable to parse string as an integer; "
        "field 'colour': unknown field"
    )
