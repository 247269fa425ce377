"""The product catalogue: catalogue files and product events into ``products``.

Two ways in, one rule: a value given updates the stored one unless the stored
row is newer (``updated_at``), and a field left out (an empty cell, a key an
event does not carry) keeps its stored value.

- ``import_catalog`` reads a CSV or JSON Lines file through the same file
  sources and column mappings as ``segflow import`` (the columns feed product
  fields instead of event fields; columns the mapping does not name are left
  out) and writes the good rows in one transaction, stamped with the time of
  the import unless a row carries its own ``updated_at``; bad rows are
  reported by file and line.
- ``refresh_products`` brings the catalogue up to date with the product events
  (product_view, add_to_cart, purchase) stored since its last call, stamped
  with each event's time, so an old event never overwrites a newer price or
  stock level. It reads the events table, not what a hook was handed, so any
  call also repairs what an interrupted one missed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.db.sql import dialect_insert, driver_rows, fetch_in, marks
from core.db.tables import EVENTS, PRODUCTS, SOURCE_STATES
from core.ingestion.files import ImportUsageError, source_for
from core.ingestion.report import Rejection
from core.ingestion.schema import (
    NO_NUL,
    NUL_MESSAGE,
    Currency,
    Id,
    ShortText,
    Url,
    parse_timezone,
)
from core.segments.sqlfuncs import unindexed
from core.types import EventSource, RawRecord, ReadOptions

# What a catalogue column may feed (``updated_at``: when the row's values held).
PRODUCT_FIELDS = (
    "id",
    "name",
    "category",
    "price",
    "currency",
    "url",
    "image_url",
    "in_stock",
    "updated_at",
)
# The events whose properties describe their product.
PRODUCT_EVENT_TYPES = ("product_view", "add_to_cart", "purchase")
# The product columns a template or a recommendation carries.
PRODUCT_COLUMNS = ("id", "name", "category", "price", "currency", "url", "image_url", "in_stock")
# The fields an event's properties may set, under the same names.
EVENT_FIELDS = ("name", "category", "price", "currency", "url", "image_url", "in_stock")
# Where refresh_products left off in the events table (source_states).
EVENTS_CURSOR = "catalog:events"

Text = Annotated[str, StringConstraints(strip_whitespace=True, pattern=NO_NUL)]


class ProductRecord(BaseModel):
    """One product as a catalogue row or an event describes it; only what is
    given (not None) is written. Validation context: ``timezone`` (a tzinfo)
    for an ``updated_at`` without offset."""

    model_config = ConfigDict(
        extra="ignore", coerce_numbers_to_str=True, allow_inf_nan=False, frozen=True
    )

    id: Id
    name: Text | None = None
    category: ShortText | None = None
    price: Annotated[float, Field(ge=0)] | None = None
    currency: Currency | None = None
    url: Url | None = None
    image_url: Url | None = None
    in_stock: bool | None = None
    updated_at: datetime | None = None

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("updated_at", mode="after")
    @classmethod
    def _aware(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            zone = (info.context or {}).get("timezone")
            if zone is None:
                raise PydanticCustomError(
                    "naive_time", "give a UTC offset (e.g. 2026-11-01T00:00:00Z) or --timezone"
                )
            v = v.replace(tzinfo=zone)
        return v.astimezone(UTC)

    def given(self) -> dict[str, Any]:
        """The fields this record sets (not id or updated_at)."""
        return {
            name: value
            for name in self.model_fields_set
            if name not in ("id", "updated_at") and (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True)
class ProductUpdate:
    """The values one source gives one product, as of ``updated_at``."""

    id: str
    fields: dict[str, Any]
    updated_at: datetime


@dataclass
class CatalogReport:
    """What a catalogue import did: rows read, kept and rejected; products
    written and, of those, new to the catalogue."""

    received: int = 0
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    products: int = 0
    created: int = 0

    @property
    def ok(self) -> bool:
        return not self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": len(self.rejected),
            "rejections": [{"location": r.location, "reason": r.reason} for r in self.rejected],
            "products": self.products,
            "created": self.created,
        }


# -- pure parts -------------------------------------------------------------------


def read_products(
    conn: Connection, ids: list[str], *, in_stock: bool = False
) -> dict[str, dict[str, Any]]:
    """Catalogue rows by id (the product columns; in_stock a bool), only those in
    stock if ``in_stock``. Read per email, so through the driver."""
    if not ids:
        return {}
    rows = driver_rows(
        conn,
        f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products WHERE id IN ({marks(len(ids))})"
        + (" AND in_stock" if in_stock else ""),
        ids,
    )
    out = {}
    for row in rows:
        product = dict(zip(PRODUCT_COLUMNS, row, strict=True))
        product["in_stock"] = bool(product["in_stock"])
        out[product["id"]] = product
    return out


def describe_product_error(exc: ValidationError) -> str:
    """One line naming each failing field (``field 'price': ...``, as events'
    errors read), worded for someone fixing a catalogue."""
    reasons = []
    for err in exc.errors(include_url=False):
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        if kind == "missing":
            msg = "required"
        elif kind == "string_pattern_mismatch" and ctx.get("pattern") == NO_NUL:
            msg = NUL_MESSAGE
        elif kind == "string_pattern_mismatch" and err["loc"] == ("currency",):
            msg = f"{value!r} is not a three-letter currency code (ISO 4217)"
        elif kind == "greater_than_equal":
            msg = f"{value!r} is negative; a price is 0 or more"
        elif kind.startswith("bool_"):
            msg = f"{value!r} is not true/false (or yes/no, 1/0)"
        elif kind.startswith("float_"):
            msg = f"{value!r} is not a number"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(part) for part in err["loc"])
        reasons.append(f"field '{loc}': {msg}" if loc else msg)
    return "; ".join(reasons)


def parse_product(data: Mapping[str, Any], timezone: tzinfo | None = None) -> ProductRecord:
    """A catalogue row as a ProductRecord; raises ValidationError."""
    return ProductRecord.model_validate(data, context={"timezone": timezone})


def event_product_fields(
    event_type: str, url: str | None, currency: str | None, properties: Mapping[str, Any]
) -> dict[str, Any]:
    """What one product event says about its product, valid fields only.

    The properties of the product fields' names; besides, a product_view's page
    is the product's url and the event's currency is its price's. A value that
    is not valid (a price that is no number) is left out, the rest kept: an
    event is not a catalogue row, and one bad property must not hide the others.
    """
    raw = {name: properties[name] for name in EVENT_FIELDS if properties.get(name) is not None}
    if "url" not in raw and event_type == "product_view" and url:
        raw["url"] = url
    if "currency" not in raw and "price" in raw and currency:
        raw["currency"] = currency
    if not raw:
        return {}
    try:
        return ProductRecord.model_validate({"id": "-", **raw}).given()
    except ValidationError as exc:
        for name in {err["loc"][0] for err in exc.errors() if err["loc"]}:
            raw.pop(str(name), None)
    try:
        return ProductRecord.model_validate({"id": "-", **raw}).given()
    except ValidationError:
        return {}


class ProductMerge:
    """Folds updates into what to write per product: for each field its newest
    value (equal times: the later update), kept with that value's own time."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[datetime, dict[str, tuple[datetime, Any]]]] = {}

    def add(self, update: ProductUpdate) -> None:
        when = update.updated_at
        stamp, fields = self._latest.get(update.id, (when, {}))
        for name, value in update.fields.items():
            seen = fields.get(name)
            if seen is None or when >= seen[0]:
                fields[name] = (when, value)
        self._latest[update.id] = (max(stamp, when), fields)

    def __len__(self) -> int:
        return len(self._latest)

    def updates(self) -> list[ProductUpdate]:
        """Per product, one update per time its fields' values hold, oldest
        first, so that each is applied only over an older row (a field an
        old event gave does not ride along with a newer one's time)."""
        out = []
        for pid, (stamp, fields) in self._latest.items():
            by_time: dict[datetime, dict[str, Any]] = defaultdict(dict)
            for name, (when, value) in fields.items():
                by_time[when][name] = value
            if not by_time:  # a catalogue row naming only the id
                by_time[stamp] = {}
            out += [ProductUpdate(pid, by_time[when], when) for when in sorted(by_time)]
        return out


def merge_updates(updates: Iterable[ProductUpdate]) -> list[ProductUpdate]:
    """What to write for ``updates`` (see ProductMerge)."""
    merge = ProductMerge()
    for update in updates:
        merge.add(update)
    return merge.updates()


# -- writes ------------------------------------------------------------------------


def upsert_products(conn: Connection, updates: Sequence[ProductUpdate]) -> int:
    """Write ``updates`` in bulk: new products are inserted, known ones get the
    fields an update gives unless their row is newer than the update. Several
    updates of one product are applied oldest first. Returns how many
    products were written to."""
    rounds: dict[str, list[ProductUpdate]] = defaultdict(list)
    for u in updates:
        rounds[u.id].append(u)
    depth = max((len(us) for us in rounds.values()), default=0)
    for i in range(depth):  # a product at most once per statement
        this = [sorted(us, key=lambda u: u.updated_at)[i] for us in rounds.values() if len(us) > i]
        _upsert_once(conn, this)
    return len(rounds)


def _upsert_once(conn: Connection, updates: list[ProductUpdate]) -> None:
    # One statement per set of given fields: the others must keep their values.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for u in updates:
        row = {"in_stock": True, **u.fields, "id": u.id, "updated_at": u.updated_at}
        groups.setdefault(tuple(sorted(u.fields)), []).append(row)
    for given, rows in groups.items():
        insert = dialect_insert(conn, PRODUCTS)
        stmt = insert.on_conflict_do_update(
            index_elements=[PRODUCTS.c.id],
            set_={name: insert.excluded[name] for name in (*given, "updated_at")},
            where=insert.excluded.updated_at >= PRODUCTS.c.updated_at,
        )
        conn.execute(stmt, rows)


def _save_cursor(conn: Connection, name: str, cursor: Any) -> None:
    insert = dialect_insert(conn, SOURCE_STATES)
    now = utcnow()
    conn.execute(
        insert.values(name=name, cursor={"cursor": cursor}, updated_at=now).on_conflict_do_update(
            index_elements=[SOURCE_STATES.c.name],
            set_={"cursor": insert.excluded.cursor, "updated_at": insert.excluded.updated_at},
        )
    )


# -- the two ways in -------------------------------------------------------------------


def load_products(
    engine: Engine,
    records: Iterable[RawRecord | Mapping[str, Any]],
    *,
    now: datetime | None = None,
    timezone: tzinfo | None = None,
) -> CatalogReport:
    """Validate catalogue rows (RawRecords from a file source, or dicts) and
    write the good ones in one transaction; rows without ``updated_at`` are
    stamped ``now`` (default: the current time). Bad rows are reported by
    location (``file:line``, else ``record N``), never fatal."""
    stamp = now or utcnow()
    report = CatalogReport()
    merge = ProductMerge()
    for n, item in enumerate(records, 1):
        report.received += 1
        if isinstance(item, RawRecord):
            where, data = item.location, item.data
            if data is None:
                report.rejected.append(Rejection(where, item.error or "unreadable row"))
                continue
        else:
            where, data = f"record {n}", item
        try:
            product = parse_product(data, timezone)
        except ValidationError as exc:
            report.rejected.append(Rejection(where, describe_product_error(exc)))
            continue
        report.accepted += 1
        merge.add(ProductUpdate(product.id, product.given(), product.updated_at or stamp))
    updates = merge.updates()
    with engine.begin() as conn:
        ids = sorted({u.id for u in updates})
        known = fetch_in(conn, "SELECT id FROM products WHERE 1 = 1", "id", ids)
        report.products = upsert_products(conn, updates)
    report.created = report.products - len(known)
    return report


def import_catalog(
    engine: Engine,
    path: Path,
    options: ReadOptions | None = None,
    *,
    sources: Mapping[str, EventSource],
    fmt: str | None = None,
    now: datetime | None = None,
) -> CatalogReport:
    """Read a catalogue file with the file source for its name (or ``fmt``)
    among ``sources`` (``core.plugins.file_sources()``) and load its rows.

    ``options`` as for ``segflow import`` (a CSV's column map, constants,
    computed fields, delimiter, encoding, timezone of ``updated_at``); its
    columns feed the product's fields."""
    options = (options or ReadOptions()).model_copy(update={"record_fields": PRODUCT_FIELDS})
    if not path.is_file():
        raise ImportUsageError(f"{path}: no such file")
    source = source_for(path, sources, fmt)
    timezone = parse_timezone(options.timezone) if options.timezone else None
    return load_products(engine, source.read(path, options), now=now, timezone=timezone)


def _events_cursor(conn: Connection) -> int:
    state = conn.execute(
        sa.select(SOURCE_STATES.c.cursor).where(SOURCE_STATES.c.name == EVENTS_CURSOR)
    ).scalar()
    value = (state or {}).get("cursor")
    return int(value) if isinstance(value, int) else 0


def refresh_products(engine: Engine) -> int:
    """Update the catalogue from the product events stored since the last call
    (the first call reads them all); returns how many products were updated.

    Safe to call from several places at once and after a crash: it always
    starts from what the last committed call recorded, and applying an event
    twice changes nothing.
    """
    with engine.connect() as conn:
        done = _events_cursor(conn)
        top = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one()
        if done > top:  # the events were deleted and their ids start again
            done = 0
        if top == done:
            return 0
        rows = conn.execute(
            sa.select(
                EVENTS.c.type,
                EVENTS.c.product_id,
                EVENTS.c.ts,
                EVENTS.c.url,
                EVENTS.c.currency,
                EVENTS.c.properties,
            ).where(
                EVENTS.c.id > done,
                EVENTS.c.id <= top,
                # Through the primary key: the (type, ts) index would read
                # every product event ever stored, not the new ones.
                unindexed(EVENTS.c.type).in_(PRODUCT_EVENT_TYPES),
                EVENTS.c.product_id.is_not(None),
            )
        )
        merge = ProductMerge()
        for event_type, product_id, ts, url, currency, properties in rows:
            fields = event_product_fields(event_type, url, currency, properties or {})
            if fields:
                merge.add(ProductUpdate(product_id, fields, ts))
    # Written in a transaction of its own, which starts by writing: on SQLite
    # a read transaction that turns into a write can fail at once when another
    # writer went first, where a write waits its turn.
    with engine.begin() as conn:
        updated = upsert_products(conn, merge.updates())
        _save_cursor(conn, EVENTS_CURSOR, top)
    return updated
