"""Access control, route by route: every route of the API declares how it is
authorised (``core.http.requires``), and the live server holds each route to
its declaration. A route added without a declaration, or whose handler skips
the check it declares, fails here."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from core.api import AUTH_FIELD, PUBLIC, SIGNED, create_app
from core.config import Settings, WebhookConfig
from core.db import open_db
from core.db.tables import EVENTS
from core.keys import SCOPES, create_key
from core.privacy.settings import CmpSettings, ConsentPolicy, PrivacySettings
from tests.helpers import BACKENDS, backend_url, serving

SECRET = "access-control-secret"
WEBHOOK = WebhookConfig(name="shop", style="shopify", secret="webhook-secret-1")
CMP = CmpSettings(secret_env="ACCESS_TEST_CMP_SECRET", purposes={"newsletter": "email_marketing"})
# Served by FastAPI itself: the schema and its viewers.
FRAMEWORK_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory) -> Iterator[dict[str, Any]]:
    url = backend_url(request, tmp_path_factory, "access")
    engine = open_db(url)
    # The CMP webhook configured, with its secret set: an unsigned call meets its check.
    privacy = PrivacySettings(consent=ConsentPolicy(cmp=CMP))
    env = pytest.MonkeyPatch()
    env.setenv(CMP.secret_env, "cmp-secret-for-access")
    settings = Settings(database_url=url, secret_key=SECRET, webhooks=[WEBHOOK], privacy=privacy)
    app = create_app(engine, settings)
    with serving(app) as base:
        keys = {scope: create_key(engine, f"only-{scope}", [scope])[1] for scope in SCOPES}
        yield {"app": app, "engine": engine, "base": base, "keys": keys}
    env.undo()


def walk(routes) -> Iterator[Any]:
    """Every route, inside included routers too (FastAPI keeps them as wrappers)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from walk(inner.routes)
        else:
            yield route


def api_routes(app) -> list[APIRoute]:
    return [r for r in walk(app.routes) if isinstance(r, APIRoute)]


def operations(app) -> list[tuple[str, str, str | None]]:
    """(method, path, declared authorisation) of every route, in the schema or not."""
    return [
        (method, route.path, (route.openapi_extra or {}).get(AUTH_FIELD))
        for route in api_routes(app)
        for method in sorted(route.methods)
    ]


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one()


def call(base: str, method: str, path: str, key: str | None) -> httpx.Response:
    """The route with a key where each source looks for one (Segment's Basic
    auth, GA4's api_secret), and whatever else it needs to reach its check."""
    concrete = path.replace("{name}", WEBHOOK.name).replace("{token}", "not-a-token")
    params = {"measurement_id": "G-ACCESS"}
    headers = {}
    if key is not None:
        params["api_secret"] = key
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    body = {"type": "track", "event": "Signed Up", "userId": "u1"}
    return httpx.request(
        method, base + concrete, params=params, headers=headers, json=body, timeout=10
    )


def test_every_route_declares_how_it_is_authorised(api):
    app = api["app"]
    undeclared = [(m, p) for m, p, auth in operations(app) if auth is None]
    assert not undeclared, f"routes without requires(...): {undeclared}"
    allowed = {*SCOPES, SIGNED, PUBLIC}
    assert {auth for _m, _p, auth in operations(app)} <= allowed
    others = {r.path for r in walk(app.routes) if not isinstance(r, APIRoute)}
    assert others == FRAMEWORK_PATHS
    # The served schema carries the declaration of every route it lists.
    spec = httpx.get(api["base"] + "/openapi.json", timeout=10).json()
    listed = [(m.upper(), p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert listed and all(AUTH_FIELD in op for _m, _p, op in listed)
    assert {(m, p) for m, p, _ in listed} <= {(m, p) for m, p, _ in operations(app)}


def test_a_scoped_route_refuses_no_key_and_a_key_without_its_scope(api):
    base, keys = api["base"], api["keys"]
    scoped = [(m, p, auth) for m, p, auth in operations(api["app"]) if auth in SCOPES]
    assert {p for _m, p, _a in scoped} >= {"/v1/track", "/v1/batch", "/mp/collect"}
    for method, path, scope in scoped:
        before = stored(api["engine"])
        assert call(base, method, path, None).status_code == 401, (method, path)
        for other, key in keys.items():
            if other not in (scope, "admin"):
                refused = call(base, method, path, key)
                assert refused.status_code == 403, (method, path, other, refused.text)
        assert stored(api["engine"]) == before, f"{method} {path} stored without a valid key"
        # With the scope it declares, the key gets past the check.
        allowed = call(base, method, path, keys[scope])
        assert allowed.status_code not in (401, 403), (method, path, allowed.text)
        assert call(base, method, path, keys["admin"]).status_code not in (401, 403)


def test_a_signed_route_refuses_what_is_not_signed(api):
    base, engine = api["base"], api["engine"]
    signed = [(m, p) for m, p, auth in operations(api["app"]) if auth == SIGNED]
    expected = {"/webhooks/{name}", "/t/c/{token}", "/t/u/{token}", "/v1/consents/cmp"}
    assert {p for _m, p in signed} >= expected
    before = stored(engine)
    for method, path in signed:
        # A key is no signature: even the admin key does not open a signed route.
        for key in (None, api["keys"]["admin"]):
            answer = call(base, method, path, key)
            assert answer.status_code in (401, 404), (method, path, answer.status_code)
    # Configured, the CMP webhook is found and refuses the unsigned call itself.
    assert call(base, "POST", "/v1/consents/cmp", None).status_code == 401
    assert stored(engine) == before


def test_only_declared_public_routes_answer_without_credentials(api):
    public = [(m, p) for m, p, auth in operations(api["app"]) if auth == PUBLIC]
    assert sorted(p for _m, p in public) == ["/health", "/t/segflow.js"]
    for method, path in public:
        assert httpx.request(method, api["base"] + path, timeout=10).status_code == 200
