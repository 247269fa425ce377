"""Hostile bodies sent to every JSON route of a real server on 127.0.0.1: each is a clean 4xx."""

from __future__ import annotations

import httpx
import pytest

from core.api import MAX_BODY_BYTES, create_app
from core.config import Settings
from core.db import models, open_db
from core.keys import create_key
from tests.helpers import BACKENDS, serving
from tests.test_api import SECRET, count

JSON_ROUTES = [
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/batch",
    "/mp/collect",
    "/debug/mp/collect",
]
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


def _post(client: httpx.Client, path: str, key: str, body: bytes, ctype: str) -> httpx.Response:
    # GA4 routes take the key as api_secret in the query, as Google's Measurement Protocol does.
    params = {"measurement_id": "G-TEST123", "api_secret": key} if "mp/" in path else {}
    return client.post(
        path, content=body, params=params, auth=(key, ""), headers={"content-type": ctype}
    )


@pytest.fixture(params=BACKENDS)
def server(request):
    """A real server on 127.0.0.1 over a fresh database of each backend."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("fresh_sqlite")()
    engine = open_db(url)
    with serving(create_app(engine, Settings(database_url=url, secret_key=SECRET))) as base:
        yield base, engine, create_key(engine, "site", ["events:write"])[1]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_hostile_bodies_get_a_clean_4xx_and_store_nothing(server, path):
    base, engine, key = server
    bodies = {
        "deep array": DEEP,
        "deep object": DEEP_OBJECT,
        "invalid utf-8": b'{"userId": "\xff\xfe\xc3", "event": "x"}',
        "truncated": b'{"userId": "u1", "event": ',
        "over the limit": b'{"userId": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}',
    }
    with httpx.Client(base_url=base, timeout=30) as client:
        for label, body in bodies.items():
            r = _post(client, path, key, body, "application/json")
            if path.startswith("/debug/") and label != "over the limit":
                # Google's debug endpoint answers 200 with the validation messages.
                assert r.status_code == 200 and r.json()["validationMessages"], label
                continue
            assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:200])
            # GA4 routes answer in the Measurement Protocol's own validationMessages shape.
            assert {"error", "validationMessages"} & r.json().keys(), label
            if label == "over the limit":
                assert r.status_code == 413, label
        r = _post(client, path, key, b"userId=u1&event=x", "application/x-www-form-urlencoded")
        if path.startswith("/debug/"):
            assert r.status_code == 200 and r.json()["validationMessages"]
        else:
            assert 400 <= r.status_code < 500, ("form body", r.status_code)
    assert count(engine, models.EventRow) == 0
