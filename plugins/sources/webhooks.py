"""Signed webhooks: POST /webhooks/{name}, Stripe and Shopify style.

Endpoints are configured in segflow.toml::

    [[segflow.webhooks]]
    name = "shop"
    style = "shopify"     # or "stripe"
    secret = "..."

Shopify signs the raw body (base64 HMAC-SHA256 in X-Shopify-Hmac-Sha256) and
names the topic in X-Shopify-Topic; Stripe sends ``Stripe-Signature:
t=..,v1=..`` with a hex HMAC-SHA256 over ``"{t}.{body}"``, accepted within 300
seconds. A missing or bad signature gets 401 and nothing is stored.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes'
# annotations (``request: Request``) when mount runs, and FastAPI is imported
# inside mount so that loading this plugin (every command does) does not load it.

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson

from core import EventSource, SignatureError, hookimpl, verify_timestamped

STRIPE_TOLERANCE = 300

# Shopify topics segflow understands out of the box.
SHOPIFY_TOPICS = {
    "orders/create": "purchase",
    "checkouts/create": "checkout_started",
    "refunds/create": "refund",
}
# Stripe event types with a built-in meaning; others become stripe_<type>.
STRIPE_TYPES = {"checkout.session.completed": "purchase", "charge.refunded": "refund"}


def verify_shopify(body: bytes, header: str | None, secret: str) -> None:
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    if not header or not hmac.compare_digest(header.strip(), expected):
        raise SignatureError("missing or bad X-Shopify-Hmac-Sha256")


def verify_stripe(body: bytes, header: str | None, secret: str, now: float | None = None) -> None:
    verify_timestamped(
        body, header, secret, name="Stripe-Signature", tolerance=STRIPE_TOLERANCE, now=now
    )


def shopify_event(topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    customer = payload.get("customer") if isinstance(payload.get("customer"), dict) else {}
    items = payload.get("line_items") if isinstance(payload.get("line_items"), list) else []
    event = {
        "type": SHOPIFY_TOPICS.get(topic, "shopify_" + topic.replace("/", "_")),
        "user_id": str(customer["id"]) if customer.get("id") is not None else None,
        "email": payload.get("email") or customer.get("email"),
        "ts": payload.get("created_at"),
        "value": float(payload["total_price"]) if payload.get("total_price") else None,
        "currency": payload.get("currency"),
        "message_id": f"shopify:{topic}:{payload.get('id')}",
        "properties": {
            "order_id": payload.get("id"),
            "items": [
                {
                    "product_id": str(i.get("product_id")),
                    "quantity": i.get("quantity"),
                    "price": i.get("price"),
                }
                for i in items
                if isinstance(i, dict)
            ],
        },
    }
    return {k: v for k, v in event.items() if v is not None}


def stripe_event(payload: dict[str, Any]) -> dict[str, Any]:
    kind = str(payload.get("type", ""))
    obj = (payload.get("data") or {}).get("object") or {}
    details = obj.get("customer_details") if isinstance(obj.get("customer_details"), dict) else {}
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    amount = obj.get("amount_total", obj.get("amount_refunded", obj.get("amount")))
    event = {
        "type": STRIPE_TYPES.get(kind, "stripe_" + kind.replace(".", "_")),
        "user_id": metadata.get("user_id"),
        "email": obj.get("customer_email") or details.get("email") or obj.get("receipt_email"),
        "ts": payload.get("created"),
        # Stripe amounts are in the currency's smallest unit.
        "value": amount / 100 if isinstance(amount, int | float) else None,
        "currency": obj.get("currency"),
        "message_id": f"stripe:{payload.get('id')}",
        "properties": {"stripe_object": obj.get("id"), "stripe_customer": obj.get("customer")},
    }
    return {k: v for k, v in event.items() if v is not None}


def mount(router: Any, api: Any) -> None:
    from fastapi import Request

    from core import RawRecord, Rejection
    from core import validate_event as validate
    from core.http import SIGNED, ApiError, requires

    @router.post("/webhooks/{name}", name="webhook", openapi_extra=requires(SIGNED))
    async def webhook(name: str, request: Request) -> dict:
        config = next((w for w in api.settings.webhooks if w.name == name), None)
        if config is None:
            raise ApiError(404, f"no webhook named {name!r}")
        body = await request.body()
        try:
            if config.style == "shopify":
                verify_shopify(body, request.headers.get("x-shopify-hmac-sha256"), config.secret)
            else:
                verify_stripe(body, request.headers.get("stripe-signature"), config.secret)
        except SignatureError as exc:
            raise ApiError(401, str(exc)) from None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "body must be a JSON object")
        if config.style == "shopify":
            topic = request.headers.get("x-shopify-topic", "")
            if not topic:
                raise ApiError(400, "missing X-Shopify-Topic")
            raw = shopify_event(topic, payload)
        else:
            raw = stripe_event(payload)
        checked = validate(RawRecord(f"webhook {name}", raw))
        if isinstance(checked, Rejection):
            raise ApiError(422, checked.reason)
        await api.ingest_async([checked], f"webhook:{name}")
        return {"received": True, "type": checked.type, "at": datetime.now(UTC).isoformat()}


@hookimpl
def register_event_sources(register) -> None:
    register(
        EventSource(
            "webhooks", "Signed webhooks (Stripe, Shopify) at /webhooks/{name}", mount=mount
        )
    )
