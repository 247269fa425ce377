"""A profile-heavy clickstream, shaped like a real store's traffic.

Most people come once or twice and leave a few events; a few come back often.
``clickstream(people, seed=...)`` yields canonical segflow event dicts, person
by person, with random UUID message ids as Segment's libraries send them
(seeded, so the same arguments give the same events). Six event types:
page_view, product_view, add_to_cart, purchase, email_open, email_click.

About 60% of people are anonymous visitors (anonymous_id only), the rest
identified (user_id). Events of one visit share a session id.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

TYPES = ("page_view", "product_view", "add_to_cart", "purchase", "email_open", "email_click")
CATEGORIES = ("tents", "backpacks", "footwear", "jackets", "cooking", "socks")
END = datetime(2025, 1, 1, tzinfo=UTC)


def _visits(rng: random.Random) -> int:
    # Heavy tail: half the people visit once; a few visit dozens of times.
    return min(300, int(rng.paretovariate(1.15)))


def clickstream(
    people: int, *, seed: int = 11, days: int = 90, end: datetime = END
) -> Iterator[dict[str, Any]]:
    """Events for ``people`` people over ``days`` days before ``end``."""
    rng = random.Random(seed)
    span = days * 86400
    start = end - timedelta(days=days)
    for n in range(people):
        ident: dict[str, Any] = (
            {"user_id": f"c{n:07d}"} if rng.random() < 0.4 else {"anonymous_id": f"a{n:07d}"}
        )
        identified = "user_id" in ident
        for _ in range(_visits(rng)):
            t = start + timedelta(seconds=int(rng.random() * span))
            if t >= end:
                continue
            session = f"s{rng.getrandbits(48):012x}"
            category = CATEGORIES[int(rng.random() * len(CATEGORIES))]
            if identified and rng.random() < 0.25:
                campaign = f"weekly-{t:%Y-%W}"
                yield _event("email_open", t - timedelta(minutes=3), ident, rng, campaign=campaign)
                if rng.random() < 0.4:
                    yield _event("email_click", t, ident, rng, campaign=campaign)
            yield _event("page_view", t, ident, rng, session=session, category=category)
            views = int(rng.expovariate(0.7))
            cart = False
            for _ in range(views):
                t += timedelta(seconds=20 + int(rng.random() * 120))
                product = f"P{rng.randrange(200):04d}"
                yield _event(
                    "product_view",
                    t,
                    ident,
                    rng,
                    session=session,
                    category=category,
                    product=product,
                )
                if rng.random() < 0.15:
                    t += timedelta(seconds=10 + int(rng.random() * 30))
                    cart = True
                    yield _event("add_to_cart", t, ident, rng, session=session, product=product)
            if cart and rng.random() < 0.35 and t + timedelta(minutes=5) < end:
                t += timedelta(minutes=2 + int(rng.random() * 3))
                value = round(15 + rng.random() * 285, 2)
                yield _event("purchase", t, ident, rng, session=session, value=value)


def _event(
    kind: str,
    t: datetime,
    ident: dict[str, Any],
    rng: random.Random,
    *,
    session: str | None = None,
    category: str | None = None,
    product: str | None = None,
    value: float | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "ts": t.isoformat(), **ident}
    if session is not None:
        event["session_id"] = session
    if product is not None:
        event["product_id"] = product
    if value is not None:
        event["value"] = value
        event["currency"] = "USD"
    if campaign is not None:
        event["campaign"] = campaign
    if category is not None:
        event["properties"] = {"category": category}
    event["message_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return event
