"""Schemathesis over the server's own OpenAPI document, against the real server
on 127.0.0.1: every operation, called with each scope's key, a key holding
every scope, and no key, never answers 5xx and answers as the document says.

Bounded for CI: a few examples per operation and caller; SEGFLOW_FUZZ_SCALE=50
runs fifty times as many (docs/security.md)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from core.api import create_app
from core.config import Settings, WebhookConfig
from core.db import open_db
from core.keys import SCOPES, create_key
from tests.helpers import BACKENDS, backend_url, serving

SECRET = "hostile-openapi-secret"
WEBHOOK = WebhookConfig(name="shop", style="shopify", secret="webhook-secret-1")
EXAMPLES = 6 * int(os.environ.get("SEGFLOW_FUZZ_SCALE", "1"))
# Each scope's own key, one with every scope, and none.
CALLERS = [*SCOPES, "all scopes", "no key"]
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory) -> Iterator[dict[str, Any]]:
    url = backend_url(request, tmp_path_factory, "openapi")
    engine = open_db(url)
    app = create_app(engine, Settings(database_url=url, secret_key=SECRET, webhooks=[WEBHOOK]))
    with serving(app) as base:
        keys: dict[str, str | None] = {s: create_key(engine, f"only-{s}", [s])[1] for s in SCOPES}
        keys["all scopes"] = create_key(engine, "every-scope", list(SCOPES))[1]
        keys["no key"] = None
        schema = schemathesis.openapi.from_dict(httpx.get(f"{base}/openapi.json").json())
        yield {"base": base, "keys": keys, "schema": schema}


def _operations(schema) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _with_key(case: Any, key: str | None) -> dict[str, str]:
    """Headers carrying ``key`` where each source looks for one: Segment's Basic
    auth, and GA4's api_secret in the query."""
    if key is None:
        return {}
    if case.operation.path.endswith("mp/collect"):
        case.query = {**(case.query or {}), "api_secret": key}
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _fuzz(operation: Any, base: str, key: str | None, seen: dict[str, set[int]]) -> None:
    """EXAMPLES generated calls of ``operation``, each checked against the document."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(case=operation.as_strategy())
    def call(case: Any) -> None:
        headers = _with_key(case, key)
        response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=10)
        seen.setdefault(operation.label, set()).add(response.status_code)

    call()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("caller", CALLERS)
def test_no_operation_answers_5xx_or_off_its_document_for_any_caller(api, caller):
    operations = _operations(api["schema"])
    assert len(operations) >= 10, [op.label for op in operations]
    seen: dict[str, set[int]] = {}
    for operation in operations:
        _fuzz(operation, api["base"], api["keys"][caller], seen)
    assert set(seen) == {op.label for op in operations}


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE_BODIES = {
    "deep array": DEEP,
    "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "invalid utf-8": b'{"user_id": "\xff\xfe\xc3", "purpose": "email_marketing"}',
    "truncated": b'{"user_id": "u1", ',
}


@pytest.mark.parametrize("path", ["/v1/consents", "/webhooks/shop"])
def test_hostile_bodies_to_the_consent_and_webhook_routes_get_a_clean_4xx(api, path):
    """The JSON routes tests/test_hostile.py does not reach: the consent API
    (with a key holding its scope) and a signed webhook (signed correctly, so
    the body itself is what is judged)."""
    import hashlib
    import hmac

    for label, body in HOSTILE_BODIES.items():
        headers = {"content-type": "application/json"}
        if path.startswith("/webhooks/"):
            digest = hmac.new(WEBHOOK.secret.encode(), body, hashlib.sha256).digest()
            headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(digest).decode()
        else:
            key = api["keys"]["events:write"]
            headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        r = httpx.post(api["base"] + path, content=body, headers=headers, timeout=30)
        assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:200])
        assert "error" in r.json(), (label, r.text[:200])
