"""GA4 Measurement Protocol: POST /mp/collect?measurement_id=...&api_secret=...

Bodies follow Google's Measurement Protocol (client_id, user_id,
timestamp_micros, user_properties, events[{name, params}]); the api_secret is a
segflow API key with the ``events:write`` scope. GA4's limits are enforced (25
events a request, event and parameter name rules, reserved names) and
/debug/mp/collect answers with ``validationMessages`` like Google's, storing
nothing. Unlike Google's endpoint, which drops invalid events silently,
/mp/collect answers 400 with the same messages and stores nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes'
# annotations (``request: Request``) when mount runs, and FastAPI is imported
# inside mount so that loading this plugin (every command does) does not load it.

import re
from typing import Any

import orjson

from core import EventSource, RawRecord, hookimpl

MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_USER_PROPERTIES = 25
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_EVENTS = {
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
}
RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag.")

# Recommended e-commerce and web events -> segflow types.
EVENT_NAMES = {
    "page_view": "page_view",
    "view_item": "product_view",
    "select_item": "product_click",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "add_to_wishlist": "wishlist_add",
    "view_cart": "cart_view",
    "begin_checkout": "checkout_started",
    "purchase": "purchase",
    "refund": "refund",
    "search": "search",
}


def _message(path: str, description: str, code: str) -> dict[str, str]:
    return {"fieldPath": path, "description": description, "validationCode": code}


def validate_body(body: Any) -> list[dict[str, str]]:
    """Google-style validationMessages; empty when the body is valid."""
    if not isinstance(body, dict):
        return [_message("", "Body must be a JSON object.", "VALUE_INVALID")]
    out = []
    if not isinstance(body.get("client_id"), str) or not body["client_id"]:
        out.append(_message("client_id", "client_id is required.", "VALUE_REQUIRED"))
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return [*out, _message("events", "events must be a non-empty list.", "VALUE_REQUIRED")]
    if len(events) > MAX_EVENTS:
        out.append(
            _message(
                "events",
                f"A request may carry at most {MAX_EVENTS} events.",
                "EXCEEDED_MAX_ENTITIES",
            )
        )
    for i, event in enumerate(events):
        where = f"events[{i}]"
        name = event.get("name") if isinstance(event, dict) else None
        if not isinstance(name, str) or not name:
            out.append(_message(f"{where}.name", "Event name is required.", "VALUE_REQUIRED"))
            continue
        if len(name) > 40 or not NAME_RE.match(name):
            out.append(
                _message(
                    f"{where}.name",
                    f"Event name {name!r} is invalid: letters, "
                    "digits and _, starting with a letter, up to 40 characters.",
                    "NAME_INVALID",
                )
            )
        elif name in RESERVED_EVENTS or name.startswith(RESERVED_PREFIXES):
            out.append(
                _message(f"{where}.name", f"Event name {name!r} is reserved.", "NAME_RESERVED")
            )
        params = event.get("params", {})
        if not isinstance(params, dict):
            out.append(_message(f"{where}.params", "params must be an object.", "VALUE_INVALID"))
            continue
        if len(params) > MAX_PARAMS:
            out.append(
                _message(
                    f"{where}.params",
                    f"At most {MAX_PARAMS} params per event.",
                    "EXCEEDED_MAX_ENTITIES",
                )
            )
        for key, value in params.items():
            if len(key) > 40 or not NAME_RE.match(key):
                out.append(
                    _message(f"{where}.params.{key}", "Parameter name is invalid.", "NAME_INVALID")
                )
            elif isinstance(value, str) and len(value) > 100:
                out.append(
                    _message(
                        f"{where}.params.{key}",
                        "Value is over 100 characters.",
                        "VALUE_OUT_OF_BOUNDS",
                    )
                )
    props = body.get("user_properties", {})
    if isinstance(props, dict):
        if len(props) > MAX_USER_PROPERTIES:
            out.append(
                _message("user_properties", "At most 25 user properties.", "EXCEEDED_MAX_ENTITIES")
            )
        for key, prop in props.items():
            if len(key) > 24 or not NAME_RE.match(key):
                out.append(
                    _message(
                        f"user_properties.{key}", "User property name is invalid.", "NAME_INVALID"
                    )
                )
            elif not isinstance(prop, dict) or "value" not in prop:
                out.append(
                    _message(f"user_properties.{key}", 'Expected {"value": ...}.', "VALUE_INVALID")
                )
    return out


def _seconds(micros: Any) -> float | None:
    return (
        micros / 1_000_000
        if isinstance(micros, int | float) and not isinstance(micros, bool)
        else None
    )


def to_events(body: dict[str, Any], measurement_id: str) -> list[dict[str, Any]]:
    ids = {"anonymous_id": body["client_id"], "user_id": body.get("user_id")}
    ids = {k: v for k, v in ids.items() if v}
    request_ts = _seconds(body.get("timestamp_micros"))
    out = []
    props = body.get("user_properties") or {}
    if props:
        traits = {k: v["value"] for k, v in props.items()}
        out.append(
            {
                "type": "identify",
                **ids,
                "traits": traits,
                **({"ts": request_ts} if request_ts else {}),
            }
        )
    for event in body["events"]:
        params = dict(event.get("params") or {})
        items = params.pop("items", None)
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        ts = _seconds(params.pop("timestamp_micros", None)) or request_ts
        record = {
            "type": EVENT_NAMES.get(event["name"], event["name"].lower()),
            **ids,
            "ts": ts,
            "product_id": first.get("item_id"),
            "value": params.pop("value", None),
            "currency": params.pop("currency", None),
            "url": params.pop("page_location", None),
            "session_id": str(params.pop("session_id")) if "session_id" in params else None,
            "campaign": params.pop("campaign", None),
            "properties": {
                **params,
                **({"items": items} if items else {}),
                "measurement_id": measurement_id,
            },
        }
        out.append({k: v for k, v in record.items() if v is not None})
    return out


def mount(router: Any, api: Any) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    from core import Event, Rejection
    from core import validate_event as validate
    from core.http import ApiError, requires

    async def parse(request: Request) -> tuple[list[Event], list[dict[str, str]]]:
        """The request's events, validated, and GA4-style messages for what is wrong."""
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return [], [_message("", "Body is not valid JSON.", "VALUE_INVALID")]
        messages = validate_body(body)
        events: list[Event] = []
        if not messages:
            for i, raw in enumerate(
                to_events(body, request.query_params.get("measurement_id", ""))
            ):
                checked = validate(RawRecord(f"events[{i}]", raw))
                if isinstance(checked, Rejection):
                    messages.append(_message(checked.location, checked.reason, "VALUE_INVALID"))
                else:
                    events.append(checked)
        return events, messages

    def authorize(request: Request) -> None:
        if not request.query_params.get("measurement_id"):
            raise ApiError(400, "measurement_id is required", "measurement_id")
        secret = request.query_params.get("api_secret")
        if not secret:
            raise ApiError(401, "api_secret is required", "api_secret")
        api.authorize(request, "events:write", secret)

    @router.post("/mp/collect", name="ga4_collect", openapi_extra=requires("events:write"))
    async def collect(request: Request) -> Response:
        authorize(request)
        events, messages = await parse(request)
        if messages:
            return JSONResponse({"validationMessages": messages}, status_code=400)
        await api.ingest_async(events, "ga4")
        return Response(status_code=204)

    @router.post(
        "/debug/mp/collect", name="ga4_debug_collect", openapi_extra=requires("events:write")
    )
    async def debug(request: Request) -> JSONResponse:
        authorize(request)
        _, messages = await parse(request)
        return JSONResponse({"validationMessages": messages})


@hookimpl
def register_event_sources(register) -> None:
    register(EventSource("ga4", "GA4 Measurement Protocol (/mp/collect)", mount=mount))
