"""Tracking tokens: signed, purpose-bound, never an open redirect."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.db import open_db
from core.ingestion import ingest
from core.tracking import (
    PIXEL_GIF,
    BadToken,
    click_url,
    open_url,
    sign,
    tracking_event,
    unsubscribe_url,
    verify,
)

SECRET = "test-secret"
BASE = "https://t.example.com"


def token_of(url: str, marker: str) -> str:
    return url.split(marker, 1)[1].removesuffix(".gif")


def test_the_pixel_is_a_43_byte_gif():
    assert len(PIXEL_GIF) == 43 and PIXEL_GIF.startswith(b"GIF89a") and PIXEL_GIF.endswith(b";")


def test_tokens_round_trip_and_carry_the_recipient():
    url = click_url(
        BASE,
        SECRET,
        "https://shop.example.com/p/P1?x=1",
        message_id="msg-1",
        link=2,
        user_id="u1",
        campaign="weekly",
    )
    data = verify("click", token_of(url, "/t/c/"), SECRET)
    assert data == {
        "m": "msg-1",
        "u": "u1",
        "c": "weekly",
        "l": 2,
        "d": "https://shop.example.com/p/P1?x=1",
    }
    opened = verify(
        "open",
        token_of(open_url(BASE, SECRET, message_id="msg-1", email="a@b.co"), "/t/o/"),
        SECRET,
    )
    assert opened == {"m": "msg-1", "e": "a@b.co"}


def test_tampering_another_secret_or_another_purpose_is_refused():
    token = token_of(
        click_url(BASE, SECRET, "https://shop.example.com/", message_id="m", link=0, user_id="u"),
        "/t/c/",
    )
    payload, signature = token.split(".")
    evil = sign("click", {"m": "m", "u": "u", "l": 0, "d": "https://evil.example"}, "other")
    for bad in [
        payload + "." + signature[:-2] + "AA",  # signature changed
        evil.split(".")[0] + "." + signature,  # destination swapped, old signature
        evil,  # signed with another secret
        token.replace(".", ""),  # malformed
        "",
    ]:
        with pytest.raises(BadToken):
            verify("click", bad, SECRET)
    with pytest.raises(BadToken, match="bad signature"):
        verify("unsubscribe", token, SECRET)  # a click token is not an unsubscribe token


def test_only_http_destinations_and_known_recipients():
    with pytest.raises(ValueError, match="must be an http"):
        click_url(BASE, SECRET, "javascript:alert(1)", message_id="m", link=0, user_id="u")
    with pytest.raises(ValueError, match="user_id or email"):
        open_url(BASE, SECRET, message_id="m")
    with pytest.raises(ValueError, match="secret key"):
        open_url(BASE, "", message_id="m", user_id="u")


def test_verified_tokens_become_events_once_per_second(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    url = unsubscribe_url(BASE, SECRET, message_id="m9", email="Kim@Example.com", campaign="w1")
    data = verify("unsubscribe", token_of(url, "/t/u/"), SECRET)
    at = datetime(2026, 5, 1, 12, 0, 0, 300000, tzinfo=UTC)
    event = tracking_event("unsubscribe", data, at)
    report = ingest(
        engine, [event, tracking_event("unsubscribe", data, at.replace(microsecond=900000))]
    )
    assert (report.accepted, report.duplicates) == (1, 1)
    assert report.by_type == {"unsubscribe": 1}
