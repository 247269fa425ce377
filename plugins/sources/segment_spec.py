"""Segment-compatible tracking API: /v1/track, identify, page, screen, alias, batch.

Bodies follow Segment's HTTP Tracking API (userId, anonymousId, event,
properties, traits, context, timestamp, messageId); the write key is an API
key with the ``events:write`` scope, sent as HTTP Basic (``key:``) or as
``writeKey`` in the body. Segment's e-commerce event names map to segflow
types; other names become snake_case custom types ("Signed Up" -> signed_up).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes'
# annotations (``request: Request``) when mount runs, and FastAPI is imported
# inside mount so that loading this plugin (every command does) does not load it.

import gzip
import io
import re
from typing import Any

import orjson

from core import EventSource, hookimpl

# Segment's e-commerce and email spec names -> segflow types.
EVENT_NAMES = {
    "Product Viewed": "product_view",
    "Product Clicked": "product_click",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Cart Viewed": "cart_view",
    "Checkout Started": "checkout_started",
    "Order Completed": "purchase",
    "Order Refunded": "refund",
    "Product Added to Wishlist": "wishlist_add",
    "Products Searched": "search",
    "Email Delivered": "email_sent",
    "Email Opened": "email_open",
    "Email Link Clicked": "email_click",
    "Email Bounced": "email_bounce",
    "Unsubscribed": "unsubscribe",
}
CALLS = ("track", "identify", "page", "screen", "alias")

# Documentation of the bodies (OpenAPI); validation is the code below, which
# names the failing field in its 400 answers.
_OBJECT = {"type": "object", "additionalProperties": True}
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "event": {"type": "string"},
        "name": {"type": "string"},
        "previousId": {"type": "string"},
        "properties": _OBJECT,
        "traits": _OBJECT,
        "context": _OBJECT,
        "timestamp": {"type": "string", "format": "date-time"},
        "messageId": {"type": "string"},
        "writeKey": {"type": "string"},
    },
    "additionalProperties": True,
}
BATCH_SCHEMA = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {
            "type": "array",
            "items": {
                **CALL_SCHEMA,
                "properties": {**CALL_SCHEMA["properties"], "type": {"enum": list(CALLS)}},
            },
        },
        "writeKey": {"type": "string"},
    },
}


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# A gzip body may not inflate beyond this (a small bomb must not fill memory).
MAX_INFLATED = 4 * 1024 * 1024


def snake_case(name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name))
    text = "_".join(w.lower() for w in words)
    return text if re.match(r"^[a-z]", text or "") else f"event_{text}"


class BadCall(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def to_event(call: str, body: dict[str, Any], where: str) -> dict[str, Any]:
    """One Segment call to a canonical segflow event dict."""
    if not isinstance(body, dict):
        raise BadCall(where, "each call is a JSON object")
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    props = body.get("properties") if isinstance(body.get("properties"), dict) else {}
    event: dict[str, Any] = {
        "user_id": body.get("userId"),
        "anonymous_id": body.get("anonymousId"),
        "ts": body.get("timestamp") or body.get("sentAt"),
        "message_id": body.get("messageId"),
    }
    if call == "track":
        name = body.get("event")
        if not isinstance(name, str) or not name.strip():
            raise BadCall(f"{where}.event", "track needs an event name")
        event["type"] = EVENT_NAMES.get(name.strip(), snake_case(name))
    elif call == "identify":
        traits = body.get("traits")
        if not isinstance(traits, dict):
            # RudderStack's SDK sends identify traits in context.traits.
            traits = context.get("traits") if isinstance(context.get("traits"), dict) else {}
        event |= {"type": "identify", "traits": traits, "email": traits.get("email")}
        return {k: v for k, v in event.items() if v is not None}
    elif call in ("page", "screen"):
        event["type"] = "page_view" if call == "page" else "screen_view"
        if body.get("name"):
            props = {"name": body["name"], **props}
    elif call == "alias":
        previous = body.get("previousId")
        if not previous or not body.get("userId"):
            raise BadCall(f"{where}.previousId", "alias needs previousId and userId")
        # An alias links two ids: stored as an identify without traits, which merges them.
        event |= {"type": "identify", "anonymous_id": str(previous), "traits": {}}
        return {k: v for k, v in event.items() if v is not None}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    campaign = context.get("campaign") if isinstance(context.get("campaign"), dict) else {}
    rest = dict(props)
    event["product_id"] = rest.pop("product_id", None) or rest.pop("sku", None)
    for key in ("revenue", "total", "value", "price"):
        if isinstance(rest.get(key), int | float) and not isinstance(rest.get(key), bool):
            event["value"] = rest.pop(key)
            break
    event["currency"] = rest.pop("currency", None)
    event["url"] = rest.pop("url", None) or page.get("url")
    event["session_id"] = rest.pop("session_id", None)
    event["campaign"] = campaign.get("name")
    event["properties"] = rest
    return {k: v for k, v in event.items() if v is not None and v != {}}


def mount(router: Any, api: Any) -> None:
    from fastapi import Request

    from core.http import ApiError, checked_event, requires

    def authorize(request: Request, body: Any) -> None:
        # Before anything of the body is checked: no answer tells a stranger more than 401.
        api.authorize(
            request, "events:write", body.get("writeKey") if isinstance(body, dict) else None
        )

    async def accept(body: Any, calls: list[tuple[str, Any, str]]) -> dict:
        events = []
        for call, item, where in calls:
            try:
                raw = to_event(call, item, where)
            except BadCall as exc:
                raise ApiError(400, str(exc), exc.field) from None
            # Everything is validated before anything is stored: a bad call
            # rejects its whole request, so a client's retry cannot half-apply.
            events.append(checked_event(raw, where))
        await api.ingest_async(events, "segment")
        return {"success": True}

    async def read(request: Request) -> Any:
        raw = await request.body()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            # The official clients gzip their batches (RudderStack by default).
            try:
                raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(MAX_INFLATED + 1)
            except (OSError, EOFError):
                raise ApiError(400, "body is not valid gzip") from None
            if len(raw) > MAX_INFLATED:
                raise ApiError(413, f"inflated body over {MAX_INFLATED} bytes")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "body is not valid JSON") from None

    def single_call(call: str):
        # A closure, not a default argument: FastAPI would read one from the query string.
        async def single(request: Request) -> dict:
            body = await read(request)
            authorize(request, body)
            return await accept(body, [(call, body, "body")])

        return single

    for call in CALLS:
        router.add_api_route(
            f"/v1/{call}",
            single_call(call),
            methods=["POST"],
            name=f"segment_{call}",
            openapi_extra=requires("events:write", **_body(CALL_SCHEMA)),
        )

    @router.post(
        "/v1/batch",
        name="segment_batch",
        openapi_extra=requires("events:write", **_body(BATCH_SCHEMA)),
    )
    async def batch(request: Request) -> dict:
        body = await read(request)
        authorize(request, body)
        items = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(400, "batch must be a list of calls", "batch")
        calls = []
        for i, item in enumerate(items):
            call = item.get("type") if isinstance(item, dict) else None
            if call not in CALLS:
                raise ApiError(400, f"type must be one of {', '.join(CALLS)}", f"batch[{i}].type")
            calls.append((call, item, f"batch[{i}]"))
        return await accept(body, calls)


@hookimpl
def register_event_sources(register) -> None:
    register(EventSource("segment", "Segment-compatible HTTP tracking API (/v1/...)", mount=mount))
