"""What a template sees about a person: read from the core tables, then shaped.

Reading goes through the driver, as the real-time segment evaluation does
(core/segments/data.py): an email is a handful of small statements, and
SQLAlchemy's per-statement work would be a large share of rendering one.

- ``profile``: id, user_id, email, first_name, last_name, attributes,
  consent (purpose -> granted), locale and timezone;
- ``segments``: segment name -> when the person entered it. Without
  ``as_of``, the memberships of the last segment run; with ``as_of``, what the
  recorded entries and exits say held then;
- ``scores``: score name -> value, each from its model's latest run at or
  before as_of (the rule score conditions use);
- ``recently_viewed``: the products last viewed, newest first, distinct;
- ``cart``: the products added to the cart since the last purchase (a
  checkout buys the whole cart, as the cart_abandoners segment reads it) and
  not removed since, with quantities summed over their add_to_cart events and
  the catalogue's current price;
- products come from the ``products`` catalogue; one the catalogue does not
  hold yet is described from the properties of its latest event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from core.catalog import read_products
from core.db.sql import param_mark
from core.profiles import ProfileNotFound
from core.segments.batch import db_time, time_reader
from core.segments.data import latest_scores

# Product events read per email, newest first: the cart goes back to the last
# purchase and "recently viewed" to the last few views, so a bounded read
# covers them without reading a heavy browser's whole history.
PRODUCT_EVENTS = 500
PRODUCT_EVENT_TYPES = ("product_view", "add_to_cart", "remove_from_cart", "purchase")


@dataclass(frozen=True, slots=True)
class ProductEvent:
    type: str
    ts: datetime
    product_id: str | None
    value: float | None
    currency: str | None
    url: str | None
    raw_properties: Any  # JSON text on SQLite, parsed on PostgreSQL

    @property
    def properties(self) -> dict[str, Any]:
        props = self.raw_properties
        if isinstance(props, str | bytes):
            props = orjson.loads(props)
        return props if isinstance(props, dict) else {}


@dataclass
class Person:
    """One profile as read for an email."""

    profile_id: int
    user_id: str | None
    email: str | None
    attributes: dict[str, Any]
    consent: dict[str, bool]
    segments: dict[str, datetime]
    scores: dict[str, float]
    events: list[ProductEvent]  # newest first


@dataclass(frozen=True)
class CartLine:
    product: dict[str, Any]
    quantity: int
    added_at: datetime

    @property
    def price(self) -> float | None:
        return self.product.get("price")

    @property
    def total(self) -> float | None:
        price = self.price
        return None if price is None else round(price * self.quantity, 2)


@dataclass(frozen=True)
class Cart:
    """``{% for line in cart %}`` / ``cart.lines``, ``cart.total``, ``cart.quantity``."""

    lines: tuple[CartLine, ...] = ()
    currency: str | None = None

    @property
    def total(self) -> float:
        return round(sum(line.total or 0.0 for line in self.lines), 2)

    @property
    def quantity(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def products(self) -> list[dict[str, Any]]:
        return [line.product for line in self.lines]

    def __iter__(self) -> Iterator[CartLine]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def __bool__(self) -> bool:
        return bool(self.lines)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def read_person(conn: Connection, profile_id: int, as_of: datetime | None) -> Person:
    """Everything about one profile an email needs, as of ``as_of`` (None: now).

    A profile merged into another is read as the one it was merged into.
    ProfileNotFound when there is no such profile.
    """
    dialect = conn.dialect
    mark = param_mark(dialect)
    at = db_time(dialect.name, as_of or datetime.now(UTC))
    parse = time_reader(dialect.name)
    cur = conn.connection.cursor()
    try:
        row = None
        for _ in range(100):  # merge chains are compressed on merge; this is a guard
            cur.execute(
                "SELECT id, user_id, email, attributes, merged_into FROM profiles"
                f" WHERE id = {mark}",
                (profile_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise ProfileNotFound(f"no profile with id {profile_id}")
            if row[4] is None:
                break
            profile_id = row[4]
        assert row is not None
        cur.execute(
            f"SELECT purpose, granted FROM consents WHERE profile_id = {mark}", (profile_id,)
        )
        consent = {purpose: bool(granted) for purpose, granted in cur.fetchall()}
        segments = _segments(cur, mark, parse, profile_id, at if as_of is not None else None)
        scores = latest_scores(cur, mark, profile_id, at)
        types = ", ".join(f"'{t}'" for t in PRODUCT_EVENT_TYPES)
        cur.execute(
            "SELECT type, ts, product_id, value, currency, url, properties FROM events"
            f" WHERE profile_id = {mark} AND ts <= {mark} AND type IN ({types})"
            f" ORDER BY ts DESC, id DESC LIMIT {PRODUCT_EVENTS}",
            (profile_id, at),
        )
        events = [ProductEvent(r[0], parse(r[1]), *r[2:]) for r in cur.fetchall()]
    finally:
        cur.close()
    return Person(
        profile_id=profile_id,
        user_id=row[1],
        email=row[2],
        attributes=_json(row[3]) or {},
        consent=consent,
        segments=segments,
        scores=scores,
        events=events,
    )


def _segments(cur: Any, mark: str, parse: Any, pid: int, at: Any) -> dict[str, datetime]:
    if at is None:
        cur.execute(
            "SELECT s.name, m.since FROM memberships m JOIN segments s ON s.id = m.segment_id"
            f" WHERE m.profile_id = {mark} ORDER BY s.name",
            (pid,),
        )
        return {name: parse(since) for name, since in cur.fetchall()}
    # Replay the recorded entries and exits up to as_of.
    cur.execute(
        "SELECT s.name, c.change, c.at FROM membership_changes c"
        " JOIN segments s ON s.id = c.segment_id"
        f" WHERE c.profile_id = {mark} AND c.at <= {mark} ORDER BY c.at, c.id",
        (pid, at),
    )
    held: dict[str, datetime] = {}
    for name, change, when in cur.fetchall():
        if change == "entered":
            held[name] = parse(when)
        else:
            held.pop(name, None)
    return dict(sorted(held.items()))


def cart_events(events: Iterable[ProductEvent]) -> list[tuple[str, int, ProductEvent]]:
    """(product id, quantity, latest add_to_cart) of what is in the cart, the
    latest added first. ``events`` newest first."""
    removed: set[str] = set()
    lines: dict[str, list[Any]] = {}
    for event in events:
        if event.type == "purchase":
            break
        pid = event.product_id
        if pid is None or pid in removed:
            continue
        if event.type == "remove_from_cart":
            if pid not in lines:
                removed.add(pid)
        elif event.type == "add_to_cart":
            quantity = event.properties.get("quantity", 1)
            quantity = quantity if isinstance(quantity, int) and quantity > 0 else 1
            if pid in lines:
                lines[pid][1] += quantity
            else:
                lines[pid] = [pid, quantity, event]
    return [(pid, quantity, event) for pid, quantity, event in lines.values()]


def viewed_events(events: Iterable[ProductEvent], n: int) -> list[ProductEvent]:
    """The latest view of each of the last ``n`` distinct products viewed."""
    seen: dict[str, ProductEvent] = {}
    for event in events:
        if len(seen) >= n:
            break
        if event.type == "product_view" and event.product_id and event.product_id not in seen:
            seen[event.product_id] = event
    return list(seen.values())


def product_from_event(event: ProductEvent, currency: str) -> dict[str, Any]:
    """A product the catalogue lacks, as its event describes it."""
    props = event.properties
    price = props.get("price")
    if not isinstance(price, int | float) and event.value is not None:
        quantity = props.get("quantity", 1)
        price = event.value / quantity if isinstance(quantity, int) and quantity > 0 else None
    return {
        "id": event.product_id,
        "name": props.get("name") or event.product_id,
        "category": props.get("category"),
        "price": float(price) if isinstance(price, int | float) else None,
        "currency": event.currency or currency,
        "url": event.url,
        "image_url": props.get("image_url"),
        "in_stock": props.get("in_stock", True) is not False,
    }


@dataclass
class Shopping:
    """The person's cart and recently viewed products, with catalogue details."""

    cart: Cart
    recently_viewed: list[dict[str, Any]] = field(default_factory=list)


def shopping(conn: Connection, person: Person, viewed: int, currency: str) -> Shopping:
    in_cart = cart_events(person.events)
    views = viewed_events(person.events, viewed)
    ids = list(dict.fromkeys([pid for pid, _, _ in in_cart] + [e.product_id for e in views]))
    catalogue = read_products(conn, ids)

    def product(pid: str, event: ProductEvent) -> dict[str, Any]:
        found = catalogue.get(pid)
        if found is None:
            return product_from_event(event, currency)
        if not found.get("currency"):
            found = {**found, "currency": currency}
        return found

    lines = tuple(
        CartLine(product(pid, event), quantity, event.ts) for pid, quantity, event in in_cart
    )
    cart_currency = next((line.product["currency"] for line in lines), currency)
    return Shopping(
        cart=Cart(lines, cart_currency),
        recently_viewed=[product(e.product_id, e) for e in views if e.product_id],
    )
