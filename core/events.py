"""The canonical event, its validation, and the bulk ingestion path.

Every source turns what it receives into dicts of this one shape; ``ingest``
validates them, drops duplicates (same ``message_id``), resolves identities,
writes in bounded transactions and then calls ``on_events_ingested``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Required
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import Connection, Engine
from typing_extensions import TypedDict

from core.db.models import utcnow
from core.db.tables import EVENTS
from core.identity import BatchResolver, fetch_in, move_events
from core.types import RawRecord, StoredEvent

STANDARD_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "purchase",
    "refund",
    "wishlist_add",
    "search",
    "email_sent",
    "email_open",
    "email_click",
    "email_bounce",
    "unsubscribe",
    "time_on_page",
    "scroll_depth",
    "video_progress",
)
IDENTIFY = "identify"
TYPE_PATTERN = r"^[a-z][a-z0-9_]*$"
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Epoch numbers above this are milliseconds or microseconds sent by mistake.
MAX_EPOCH_SECONDS = 1e11

# PostgreSQL cannot store a NUL character in text or JSON, so no backend
# takes one: a record with one is rejected, naming the field.
NO_NUL = r"^[^\x00]*$"
NUL_MESSAGE = "contains a NUL character (\\x00), which cannot be stored"
Id = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255, pattern=NO_NUL)
]
ShortText = Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
EventType = Annotated[str, StringConstraints(pattern=TYPE_PATTERN, max_length=64)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Url = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]
Properties = dict[str, Any]
# An event's validated values by field name, as ``Event`` holds them (ts an
# aware UTC datetime); a field left out has its default. The bulk path's form;
# the plain path adds STORED_JSON.
Fields = dict[str, Any]


def parse_timezone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name like Europe/London)"
        ) from None


class Event(BaseModel):
    """A behaviour event, or an ``identify`` call carrying ``traits``.

    Validation context (optional): ``default_tz`` (a tzinfo) for timestamps
    without an offset, ``ts_format`` (strptime) for non-ISO timestamps.
    """

    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, frozen=True, allow_inf_nan=False
    )

    type: EventType
    user_id: Id | None = None
    anonymous_id: Id | None = None
    email: Annotated[str, StringConstraints(max_length=320, pattern=NO_NUL)] | None = None
    ts: datetime | None = None
    session_id: ShortText | None = None
    product_id: ShortText | None = None
    value: float | None = None
    currency: Currency | None = None
    url: Url | None = None
    campaign: ShortText | None = None
    properties: Properties = Field(default_factory=dict)
    traits: Properties | None = None
    message_id: ShortText | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, v: Any, info: ValidationInfo) -> Any:
        """ISO 8601 or epoch seconds (or ``ts_format``) to an aware UTC datetime."""
        if v is None or v == "":
            return None
        ctx = info.context or {}
        if isinstance(v, str):
            fmt = ctx.get("ts_format")
            try:
                v = datetime.strptime(v.strip(), fmt) if fmt else datetime.fromisoformat(v)
            except ValueError:
                try:
                    v = float(v)  # epoch seconds sent as a string
                except ValueError:
                    expected = f"match {fmt!r}" if fmt else "look like ISO 8601 or epoch seconds"
                    raise ValueError(f"timestamp {v!r} does not {expected}") from None
        if isinstance(v, bool):
            raise ValueError("timestamp must be ISO 8601 or epoch seconds, not a boolean")
        if isinstance(v, int | float):
            if not math.isfinite(v) or abs(v) >= MAX_EPOCH_SECONDS:
                raise ValueError(f"epoch timestamp {v} out of range (use seconds, not ms)")
            try:
                return datetime.fromtimestamp(v, UTC)
            except (OverflowError, OSError):
                raise ValueError(f"epoch timestamp {v} out of range") from None
        if not isinstance(v, datetime):
            return v  # pydantic reports the wrong type
        if v.tzinfo is None:
            tz = ctx.get("default_tz")
            if tz is None:
                raise ValueError(
                    f"timestamp {v.isoformat()!r} has no UTC offset "
                    "(add Z or +HH:MM, or give a default timezone)"
                )
            v = v.replace(tzinfo=tz)
        return as_utc(v)

    @field_validator("properties", "traits")
    @classmethod
    def _storable(cls, v: Properties | None) -> Properties | None:
        if v is None:
            return v
        try:
            nul = has_nul(v)
        except (TypeError, ValueError) as exc:  # a set, NaN beside a huge integer, ...
            raise ValueError(f"cannot be stored as JSON: {exc}") from None
        if nul:
            raise ValueError(f"{NUL_MESSAGE} (in a key or a value)")
        return v

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, v: Any) -> Any:
        if v is None or v == "":
            return None
        if not isinstance(v, str) or not EMAIL_RE.match(v.strip()):
            raise ValueError(f"{v!r} is not an email address")
        # Addresses are matched case-insensitively, as every mailbox provider does.
        return v.strip().lower()

    @model_validator(mode="after")
    def _complete(self) -> Event:
        if self.user_id is None and self.anonymous_id is None and self.email is None:
            raise ValueError("needs user_id, anonymous_id or email to know whose event it is")
        if self.traits is not None and self.type != IDENTIFY:
            raise ValueError("traits are only allowed on type 'identify'")
        if self.message_id is None:
            object.__setattr__(self, "message_id", content_id(self.__dict__))
        return self


def has_nul(value: Properties) -> bool:
    """Whether a NUL character is in any key or string of a JSON-like value."""
    return json_has_nul(json_bytes(value))


def json_has_nul(text: bytes) -> bool:
    # Both encoders write U+0000 as this escape, never raw; an escaped
    # backslash before "u0000" (the text \u0000) is not one.
    return b"\\u0000" in text and _JSON_NUL.search(text) is not None


_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return _json_fallback(value)


def as_utc(v: datetime) -> datetime:
    """An aware datetime in UTC; ValueError when UTC cannot hold it (year 1 at +01:00)."""
    # fromisoformat hands back the shared UTC singleton for +00:00 and Z, so
    # most events skip the conversion.
    if v.tzinfo is UTC:
        return v
    try:
        return v.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp {v.isoformat()!r} is out of range in UTC") from None


# -- the plain form -------------------------------------------------------------------
# Nearly every record trackers and exports write is already in the form
# ``Event`` normalises to: ISO timestamps with an offset, lower-case addresses,
# strings for text. Such records are checked by pydantic-core alone, without
# ``Event``'s Python validators and without building a model (a third of the
# cost); everything else goes through ``Event``, which accepts more forms and
# names what is wrong. tests/test_plain.py holds the two to the same answers.

PLAIN_TS = (
    # Hours 00-23: Python 3.14 reads "24:00" as the next midnight, which the
    # stored text (cut from this one, see _sqlite_ts_of) would not say.
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
PLAIN_EMAIL = r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$"


class PlainEvent(TypedDict, total=False):
    """``Event``'s fields, strictly typed and already normalised."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # type: ignore[misc]

    type: Required[EventType]
    user_id: Id | None
    anonymous_id: Id | None
    email: Annotated[str, StringConstraints(pattern=PLAIN_EMAIL, max_length=320)] | None
    ts: Annotated[str, StringConstraints(pattern=PLAIN_TS)]
    session_id: ShortText | None
    product_id: ShortText | None
    value: float | None
    currency: Currency | None
    url: Url | None
    campaign: ShortText | None
    properties: Properties
    traits: Properties | None
    message_id: ShortText


_check_plain = TypeAdapter(PlainEvent).validator.validate_python


# In the plain path's fields: the JSON text the event's properties are stored
# as, and the ISO text ts was read from (SQLite's copy of a UTC time is cut
# from it, four times cheaper than formatting the datetime).
STORED_JSON = "_stored_json"
TS_TEXT = "_ts_text"
_PLAIN_ONLY = (STORED_JSON, TS_TEXT)


def plain_fields(data: dict[str, Any]) -> Fields | None:
    """The validated fields of a record in plain form, exactly as ``Event``
    would hold them; None when ``Event`` must decide (other forms, errors)."""
    try:
        fields = _check_plain(data)
    except ValidationError:
        return None
    get = fields.get
    if get("user_id") is None and get("anonymous_id") is None and get("email") is None:
        return None
    identify = fields["type"] == IDENTIFY
    traits, properties = get("traits"), get("properties")
    if traits is not None and not identify:
        return None
    # What will be stored as the event's properties, encoded once: checked
    # for NUL here and kept for the writers.
    try:
        stored = json_bytes(traits if identify else properties or {})
        if json_has_nul(stored) or (identify and properties and has_nul(properties)):
            return None
    except (TypeError, ValueError):  # not JSON: Event names it
        return None
    fields[STORED_JSON] = stored.decode()
    if (ts := get("ts")) is not None:
        try:
            fields["ts"] = as_utc(datetime.fromisoformat(ts))
        except ValueError:
            return None
        fields[TS_TEXT] = ts
    if "message_id" not in fields:
        fields["message_id"] = content_id(fields)
    return fields


def as_event(item: Event | Fields) -> Event:
    """The Event of validated fields (its fields_set counts a generated message_id in)."""
    if isinstance(item, Event):
        return item
    values = {k: v for k, v in item.items() if k not in _PLAIN_ONLY}
    return Event.model_construct(_fields_set=set(values), **values)


def content_id(fields: Fields) -> str:
    """A message id from an event's validated content, so a re-sent line is a duplicate."""
    get = fields.get
    ts = get("ts")
    payload = (
        fields["type"],
        get("user_id"),
        get("anonymous_id"),
        get("email"),
        ts.isoformat() if ts else None,
        get("session_id"),
        get("product_id"),
        get("value"),
        get("currency"),
        get("url"),
        get("campaign"),
        get("properties", {}),
        get("traits"),
    )
    try:
        raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        raw = _json_fallback(payload, sort_keys=True, default=str)
    return "h-" + hashlib.blake2b(raw, digest_size=16).hexdigest()


class IngestError(Exception):
    """Storing a batch failed; everything committed before it is kept."""


def describe_error(exc: ValidationError) -> str:
    """One line naming each failing field, e.g. ``field 'ts': ...``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] == NO_NUL:
            msg = NUL_MESSAGE
        elif err["type"] == "string_pattern_mismatch" and loc == "type":
            msg = f"{err['input']!r} is not a snake_case event type (lower case, digits, _)"
        elif err["type"] == "datetime_from_date_parsing" or err["type"].startswith("datetime_"):
            msg = f"timestamp {err['input']!r} is not ISO 8601 with offset or epoch seconds"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (custom data goes under properties)"
        elif err["type"] == "missing":
            msg = "required"
        parts.append(f"field '{loc}': {msg}" if loc else msg)
    return "; ".join(parts)


@dataclass
class Rejection:
    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class IngestReport:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    profiles_created: int = 0
    profiles_merged: int = 0
    identifies: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.rejected

    def add(self, other: IngestReport) -> None:
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)
        self.profiles_created += other.profiles_created
        self.profiles_merged += other.profiles_merged
        self.identifies += other.identifies
        for k, v in other.by_type.items():
            self.by_type[k] = self.by_type.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "rejections": [{"location": r.location, "reason": r.reason} for r in self.rejected],
            "profiles_created": self.profiles_created,
            "profiles_merged": self.profiles_merged,
            "identifies": self.identifies,
            "by_type": dict(sorted(self.by_type.items())),
        }


Record = RawRecord | dict | Event


def _unreadable(raw: RawRecord) -> Rejection | None:
    """Why a record is not even an object to validate, if it is not."""
    if raw.data is None:
        return Rejection(raw.location, raw.error or "unreadable record")
    if not isinstance(raw.data, dict):
        return Rejection(raw.location, f"expected an object, got {type(raw.data).__name__}")
    return None


def validate(raw: RawRecord, context: dict[str, Any] | None = None) -> Event | Rejection:
    if (bad := _unreadable(raw)) is not None:
        return bad
    try:
        return Event.model_validate(raw.data, context=context)
    except ValidationError as exc:
        return Rejection(raw.location, describe_error(exc))


def ingest(
    engine: Engine,
    records: Iterable[Record],
    *,
    source: str = "api",
    batch_size: int = 5000,
    default_tz: str | tzinfo | None = None,
    ts_format: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    notify: bool = True,
    expected: int | None = None,
    on_stored: Callable[[list[StoredEvent]], None] | None = None,
) -> IngestReport:
    """Validate, dedupe, resolve and store events; one transaction per batch
    (a big SQLite load groups batches, up to PIPELINE_COMMIT_ROWS events each).

    Bad records are reported, never fatal: good ones in the same batch are kept.
    ``on_progress(n)`` is called with the number of records read per batch.
    ``notify=False`` skips the ``on_events_ingested`` hook (bulk back-loads).
    ``on_stored(events)``: called after each committed batch instead of the hook
    (for a caller that runs the hook itself, elsewhere or later).
    ``expected``: roughly how many records are coming; a load at least as big
    as the events already stored builds the secondary indexes once at the end
    instead of updating them row by row.
    """
    if isinstance(default_tz, str):
        default_tz = parse_timezone(default_tz)
    context = {"default_tz": default_tz, "ts_format": ts_format}
    report = IngestReport()
    rejected = report.rejected
    # ts_format changes how Event reads every timestamp; the plain form assumes ISO.
    plain = plain_fields if ts_format is None else None
    validate_event = Event.model_validate

    def check(data: dict[str, Any]) -> Event | Fields:
        """The plain form's fields, else the Event (raises ValidationError)."""
        if plain is not None and type(data) is dict and (fields := plain(data)) is not None:
            return fields
        return validate_event(data, context=context)

    batch: list[Event | Fields] = []
    # Where the current batch starts and ends, named only if storing it fails.
    first = last = None
    with (
        deferred_indexes(engine, expected) as load,
        BatchWriter(
            engine, source, report, notify, load, on_stored, pipeline=_is_big(expected)
        ) as out,
    ):
        n = 0
        for n, item in enumerate(records, 1):
            # Plain dicts are the bulk case: validated inline, located by number.
            if type(item) is dict:
                try:
                    batch.append(check(item))
                except ValidationError as exc:
                    rejected.append(Rejection(f"record {n}", describe_error(exc)))
                    continue
            elif isinstance(item, Event):
                batch.append(item)
            else:
                raw = item if isinstance(item, RawRecord) else _unexpected(item, n)
                if (bad := _unreadable(raw)) is not None:
                    rejected.append(bad)
                    continue
                try:
                    batch.append(check(raw.data))  # type: ignore[arg-type]
                except ValidationError as exc:
                    rejected.append(Rejection(raw.location, describe_error(exc)))
                    continue
            last = (n, item)
            first = first or last
            if len(batch) >= batch_size:
                out.put(batch, _span(first, last))
                batch, first = [], None
                if on_progress:
                    on_progress(n - report.received)
                    report.received = n
        if batch:
            out.put(batch, _span(first, last))
        if on_progress and n > report.received:
            on_progress(n - report.received)
        report.received = n
    return report


def _unexpected(item: object, n: int) -> RawRecord:
    return RawRecord(f"record {n}", None, f"expected an object, got {type(item).__name__}")


def _span(first: tuple[int, Any], last: tuple[int, Any]) -> tuple[str, str]:
    def where(pos: tuple[int, Any]) -> str:
        n, item = pos
        return item.location if isinstance(item, RawRecord) else f"record {n}"

    return where(first), where(last)


class BatchWriter:
    """Stores batches in order, commits, then runs the hook for each batch.

    With ``pipeline`` (big loads, SQLite), a batch's INSERT statements run on
    a helper thread, SQLite working without the GIL, while the caller
    validates the next batch; each batch still starts after the one before
    it is in (its duplicate check and identity lookups must see those rows
    and profiles). Batches then share a transaction up to
    PIPELINE_COMMIT_ROWS events: a commit writes every index page the
    transaction touched, and random message ids touch a new page per event.
    """

    def __init__(
        self,
        engine: Engine,
        source: str,
        report: IngestReport,
        notify: bool,
        load: DeferredLoad | None = None,
        on_stored: Callable[[list[StoredEvent]], None] | None = None,
        pipeline: bool = False,
    ) -> None:
        self.engine = engine
        self.load = load or DeferredLoad()
        self.source = source
        self.report = report
        self.writer = make_writer(engine)
        self.hook: Callable[[list[StoredEvent]], None] | None = on_stored
        if notify and on_stored is None:
            from core.plugins import ingest_hook

            if (hook := ingest_hook()) is not None:
                self.hook = lambda events: hook(events=events, engine=engine)
        self.helper: ThreadPoolExecutor | None = None
        if pipeline and _shares_connections(engine):
            self.helper = ThreadPoolExecutor(1, thread_name_prefix="segflow-insert")
        # The pipeline's open transaction, the batches in it and the one on the helper.
        self.conn: Connection | None = None
        self.group: list[_Batch] = []
        self.pending: _Pending | None = None

    def __enter__(self) -> BatchWriter:
        if self.helper is not None:
            _switching.enter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self.helper is None:
            return
        try:
            if exc is None:
                self._finish()
                self._commit()
            else:
                # The batches already handed over are still stored and get
                # their hook; the error under way stays the one raised.
                try:
                    self._finish()
                    self._commit()
                except Exception as also:
                    exc.add_note(f"also: {also}")
        finally:
            self.helper.shutdown()  # first: the helper may still be using self.conn
            if self.conn is not None:
                self.conn.close()
            _switching.leave()

    def put(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        if self.helper is None:
            self._store(batch, span)
        else:
            self._finish()
            self._start(batch, span)

    def _store(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        try:
            with self.engine.begin() as conn:
                stored = self._prepare(conn, self.writer, batch)
        except (sa.exc.DBAPIError, self.engine.dialect.dbapi.Error) as exc:
            self.load.rolled_back()
            raise self._failed(span, exc) from exc
        except BaseException:
            self.load.rolled_back()
            raise
        self.load.committed()
        if self.hook is not None and stored:
            self.hook(stored)

    def _prepare(
        self, conn: Connection, writer: EventWriter, batch: list[Event | Fields]
    ) -> list[StoredEvent]:
        return store_batch(
            conn, writer, batch, self.source, self.report, self.hook is not None, self.load
        )

    def _start(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        """Everything but the INSERTs now; those (and the commit) on the helper."""
        if self.conn is None:
            self.conn = self.engine.connect()
            self.conn.begin()
        try:
            insert = _LaterSqliteInsert()
            stored = self._prepare(self.conn, insert, batch)
        except BaseException as exc:
            lost = self._roll_back(span)
            if isinstance(exc, sa.exc.DBAPIError | self.engine.dialect.dbapi.Error):
                raise self._failed(lost, exc) from exc
            raise
        rows = sum(b.claimed for b in self.group) + insert.claimed
        commit = rows >= PIPELINE_COMMIT_ROWS
        assert self.helper is not None
        future = self.helper.submit(insert.run, self.conn, commit)
        self.pending = _Pending(_Batch(span, stored, insert.claimed), future, commit)

    def _finish(self) -> None:
        """Wait for the batch on the helper; once committed, account and run hooks."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        try:
            pending.batch.inserted = pending.future.result()
        except BaseException as exc:
            if not pending.future.done() or pending.future.exception() is not exc:
                # Interrupted here, not failed there: the helper's batch is
                # still to be accounted for (at exit at the latest).
                self.pending = pending
                raise
            # The helper closed the connection: the transaction rolled back.
            self.group.append(pending.batch)
            self.conn = None
            lost = self._roll_back(pending.batch.span)
            if isinstance(exc, sa.exc.DBAPIError | self.engine.dialect.dbapi.Error):
                raise self._failed(lost, exc) from exc
            raise
        self.group.append(pending.batch)
        if pending.commit:
            self.conn = None  # committed and closed by the helper
            self._committed()

    def _commit(self) -> None:
        """Commit the open transaction (the load's last batches)."""
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            conn.commit()
        except (sa.exc.DBAPIError, self.engine.dialect.dbapi.Error) as exc:
            lost = self._roll_back(self.group[-1].span)
            raise self._failed(lost, exc) from exc
        finally:
            conn.close()
        self._committed()

    def _committed(self) -> None:
        report = self.report
        self.load.committed()
        group, self.group = self.group, []
        for b in group:
            if b.inserted != b.claimed:
                # Another writer stored some of these between our check and insert.
                report.accepted -= b.claimed - b.inserted
                report.duplicates += b.claimed - b.inserted
        if self.hook is None:
            return
        # Every committed batch gets its call, even after one fails; the
        # first failure is raised afterwards and stops the load.
        failure: Exception | None = None
        for b in group:
            if b.stored:
                try:
                    self.hook(b.stored)
                except Exception as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def _roll_back(self, last: tuple[str, str]) -> tuple[str, str]:
        """Forget the open transaction's batches; the span they covered."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        first = self.group[0].span if self.group else last
        self.report.accepted -= sum(b.claimed for b in self.group)
        self.group = []
        self.load.rolled_back()
        return first[0], last[1]

    def _failed(self, span: tuple[str, str], exc: Exception) -> IngestError:
        # Driver errors come wrapped from SQLAlchemy, or bare from the
        # driver-level COPY and multi-row INSERT.
        reason = getattr(exc, "orig", None) or exc
        return IngestError(
            f"storing {span[0]} .. {span[1]} failed: {' '.join(str(reason).split())}; "
            f"the {self.report.accepted:,} events committed before are kept"
        )


def _shares_connections(engine: Engine) -> bool:
    """Whether a connection of this SQLite engine may be handed to another thread."""
    if engine.dialect.name != "sqlite":
        return False
    if not isinstance(engine.pool, sa.pool.QueuePool | sa.pool.StaticPool):
        return False  # e.g. SingletonThreadPool: a connection per thread
    same_thread = str(engine.url.query.get("check_same_thread", "false")).lower()
    return same_thread in ("false", "0", "no", "off")


# The GIL switch interval while a pipelined load runs (see BatchWriter).
PIPELINE_SWITCH_INTERVAL = 0.0005


class _FastSwitching:
    """Shortens the GIL switch interval while any pipelined load runs.

    When SQLite is done with a statement, the helper waits for the GIL for up
    to the switch interval while the loading thread validates; at the default
    5 ms, that wait is longer than the statement. The interval is process-wide,
    so loads running side by side (a Prefect worker's tasks) share one setting,
    and the last to end puts back what was there before the first began.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads = 0
        self.before = 0.0

    def enter(self) -> None:
        with self.lock:
            if self.loads == 0:
                self.before = sys.getswitchinterval()
                sys.setswitchinterval(min(self.before, PIPELINE_SWITCH_INTERVAL))
            self.loads += 1

    def leave(self) -> None:
        with self.lock:
            self.loads -= 1
            if self.loads == 0:
                sys.setswitchinterval(self.before)


_switching = _FastSwitching()


# Events per transaction on a pipelined load (batches are grouped up to it).
PIPELINE_COMMIT_ROWS = 50_000


@dataclass
class _Batch:
    span: tuple[str, str]
    stored: list[StoredEvent]
    claimed: int
    inserted: int = 0


@dataclass
class _Pending:
    batch: _Batch
    future: Future[int]
    commit: bool


class _LaterSqliteInsert:
    """An EventWriter that converts the rows at once and inserts them later,
    on the pipeline's helper; it claims every row meanwhile."""

    def __init__(self) -> None:
        self.params: list[Any] = []
        self.claimed = 0

    def __call__(
        self, conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
    ) -> int:
        self.params = _sqlite_params(events, pids, source, now)
        self.claimed = len(events)
        return self.claimed

    def run(self, conn: Connection, commit: bool) -> int:
        """Insert (and commit and close ``conn``); rows inserted. On failure
        ``conn`` is closed, rolling its transaction back."""
        try:
            cur = conn.connection.driver_connection.cursor()
            try:
                inserted = _insert_sqlite(cur, self.params, SQLITE_PIPELINE_ROWS_PER_STATEMENT)
            finally:
                cur.close()
            if commit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        if commit:
            conn.close()
        return inserted


# Below this many rows, dropping and rebuilding indexes is not worth it, nor
# is a pipeline.
DEFER_INDEXES_MIN = 50_000


def _is_big(expected: int | None) -> bool:
    return expected is not None and expected >= DEFER_INDEXES_MIN


@dataclass
class DeferredLoad:
    """A big load with the events' secondary indexes dropped until the end.

    Without the (profile_id, ts) index, moving a merged profile's events would
    scan the whole table, so those moves are queued in ``moves`` and applied,
    in order, once the indexes are back. A batch's moves wait in ``staged``
    until it commits: a batch rolled back merged nothing.
    """

    active: bool = False
    moves: list[tuple[int, int]] = field(default_factory=list)
    staged: list[tuple[int, int]] = field(default_factory=list)

    def committed(self) -> None:
        self.moves.extend(self.staged)
        self.staged.clear()

    def rolled_back(self) -> None:
        self.staged.clear()


# Lets SQLite sort for an index build on every core (a quarter faster on two).
SQLITE_SORT_THREADS = min(os.cpu_count() or 1, 8)


@contextlib.contextmanager
def deferred_indexes(engine: Engine, expected: int | None) -> Iterator[DeferredLoad]:
    """Drop the events' secondary indexes for a big load, rebuild them after.

    Keeping (profile_id, ts) and (type, ts) current costs more per row than the
    insert itself; one sorted build at the end is several times cheaper. The
    unique message_id index stays: deduplication needs it. Queries still run
    meanwhile, only slower, and a merged profile's older events point at it
    until the end; the indexes come back even when the load fails.
    """
    load = DeferredLoad()
    if not _is_big(expected):
        yield load
        return
    with engine.connect() as conn:
        existing = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one()
    if expected < existing:
        yield load
        return
    indexes = [ix for ix in EVENTS.indexes if not ix.unique]
    with engine.begin() as conn:
        for ix in indexes:
            ix.drop(conn, checkfirst=True)
    load.active = True
    # A big load allocates millions of short-lived objects and no cycles; the
    # cyclic collector would rescan the growing heap over and over (a fifth of
    # the load's time), so it pauses until the load is done.
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield load
    finally:
        if collecting:
            gc.enable()
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA threads = {SQLITE_SORT_THREADS}")
            for ix in indexes:
                ix.create(conn, checkfirst=True)
            for source, into in load.moves:
                move_events(conn, source, into)


def store_batch(
    conn: Connection,
    writer: EventWriter,
    batch: list[Event | Fields],
    source: str,
    report: IngestReport,
    want_stored: bool = True,
    load: DeferredLoad | None = None,
) -> list[StoredEvent]:
    fresh = _drop_duplicates(conn, batch, report)
    if not fresh:
        return []
    records: list[Fields] = [e if type(e) is dict else e.__dict__ for e in fresh]
    resolver = BatchResolver(conn)
    emails = [trait_email(r.get("traits")) if r["type"] == IDENTIFY else None for r in records]
    ids = [(r.get("user_id"), r.get("anonymous_id"), r.get("email")) for r in records]
    keys: set[tuple[str, str]] = {("email", email) for email in emails if email is not None}
    # A batch holds a few hundred people's events: their ids, once each.
    for user_id, anonymous_id, address in set(ids):
        if user_id is not None:
            keys.add(("user_id", user_id))
        if anonymous_id is not None:
            keys.add(("anonymous_id", anonymous_id))
        if address is not None:
            keys.add(("email", address))
    resolver.prefetch(keys)
    handles = [
        resolver.resolve(*who, r.get("traits"), email)
        if r["type"] == IDENTIFY
        else resolver.resolve(*who)
        for who, r, email in zip(ids, records, emails, strict=True)
    ]
    moves = load.staged if load is not None and load.active else None
    stats = resolver.apply(defer_moves=moves)
    report.profiles_created += stats.created
    report.profiles_merged += stats.merged

    now = utcnow()
    pid_of = {h: resolver.profile_id(h) for h in set(handles)}
    pids = [pid_of[h] for h in handles]
    inserted = writer(conn, records, pids, source, now)
    if inserted != len(records):
        # Another writer stored some of these between our check and insert.
        report.duplicates += len(records) - inserted
    report.accepted += inserted
    types = Counter(r["type"] for r in records)
    for type_, n in types.items():
        report.by_type[type_] = report.by_type.get(type_, 0) + n
    report.identifies += types[IDENTIFY]
    if not want_stored:
        return []
    return [
        StoredEvent(as_event(e), pid, r.get("ts") or now, now)
        for e, r, pid in zip(fresh, records, pids, strict=True)
    ]


def trait_email(traits: Properties | None) -> str | None:
    """The email an identify call sets, normalised, if it is a valid address."""
    if traits is None:
        return None
    value = traits.get("email")
    if isinstance(value, str) and EMAIL_RE.match(value.strip()):
        return value.strip().lower()
    return None


def _drop_duplicates(
    conn: Connection, batch: list[Event | Fields], report: IngestReport
) -> list[Event | Fields]:
    ids = [e["message_id"] if type(e) is dict else e.message_id for e in batch]
    unique = batch
    if len(set(ids)) < len(ids):  # the same message twice in the batch: keep the first
        seen: set[str] = set()
        unique, kept = [], []
        for e, message_id in zip(batch, ids, strict=True):
            if message_id in seen:
                report.duplicates += 1
                continue
            seen.add(message_id)
            unique.append(e)
            kept.append(message_id)
        ids = kept
    rows = fetch_in(conn, "SELECT message_id FROM events WHERE 1 = 1", "message_id", ids)
    existing = {r[0] for r in rows}
    if existing:
        report.duplicates += len(existing)
        unique = [e for e, i in zip(unique, ids, strict=True) if i not in existing]
    return unique


# (connection, events' fields, their profile ids, source, receive time) -> rows inserted
EventWriter = Callable[[Connection, list[Fields], list[int], str, datetime], int]

EVENT_COLUMNS = (
    "profile_id",
    "type",
    "ts",
    "session_id",
    "product_id",
    "value",
    "currency",
    "url",
    "campaign",
    "properties",
    "source",
    "message_id",
    "received_at",
)


def make_writer(engine: Engine) -> EventWriter:
    """The fastest correct bulk insert for the backend; returns rows inserted."""
    if engine.dialect.name == "postgresql":
        return _write_postgres_copy
    if engine.dialect.name == "sqlite":
        return _write_sqlite
    return _write_core


def _sqlite_ts(value: datetime) -> str:
    # The exact text SQLAlchemy's SQLite DateTime writes (naive UTC, fixed
    # width), so rows written here and through the ORM compare and sort alike.
    # Event times are already UTC (the schema converts them), hence the slice.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_ts_of(text: str | None, value: datetime) -> str:
    """``_sqlite_ts(value)``, cut from ``text`` when that is the plain form's
    ISO text of ``value`` in UTC (date, time, 0-6 fraction digits, offset)."""
    if text is not None and (text[-1] == "Z" or text.endswith("+00:00")):
        fraction = text[19:-1] if text[-1] == "Z" else text[19:-6]
        return text[:10] + " " + text[11:19] + ((fraction or ".") + "000000")[:7]
    return _sqlite_ts(value)


# Rows per INSERT statement on SQLite: 13 columns x 500 stays far below the
# 32766 bound parameters SQLite allows, and one statement per 500 rows spends
# less time in the driver than executemany's row-by-row loop.
SQLITE_ROWS_PER_STATEMENT = 500
# On the pipeline's helper, each statement ends waiting for the GIL: fewer,
# bigger statements (13 x 2500 bound values, near the 32766 limit) wait less.
SQLITE_PIPELINE_ROWS_PER_STATEMENT = 2500


# Binding None costs the sqlite3 module an adapter lookup per value, a fifth
# of the insert's time with the three or four fields an event usually leaves
# out. So on SQLite a missing optional field is bound as a marker its column
# never holds, and SQLite turns it into NULL: 0 in text columns (validated
# text is always a str), '' for value (always a float).
SQLITE_ABSENT: dict[str, Any] = {
    "session_id": 0,
    "product_id": 0,
    "value": "",
    "currency": 0,
    "url": 0,
    "campaign": 0,
}


@functools.cache
def _sqlite_insert_sql(n_rows: int) -> str:
    one = (
        "("
        + ", ".join(
            f"NULLIF(?, {SQLITE_ABSENT[c]!r})" if c in SQLITE_ABSENT else "?" for c in EVENT_COLUMNS
        )
        + ")"
    )
    return (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
        + ", ".join([one] * n_rows)
        + " ON CONFLICT (message_id) DO NOTHING"
    )


def _write_sqlite(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """Driver-level multi-row INSERTs: SQLAlchemy's per-row parameter processing
    costs more than SQLite's insert itself, so values are converted here once."""
    cur = conn.connection.driver_connection.cursor()
    try:
        return _insert_sqlite(cur, _sqlite_params(events, pids, source, now))
    finally:
        cur.close()


def _sqlite_params(events: list[Fields], pids: list[int], source: str, now: datetime) -> list:
    """The rows' bound values, one flat list."""
    return list(itertools.chain.from_iterable(_rows(events, pids, source, now, for_sqlite=True)))


def _insert_sqlite(
    cur: Any, flat: list, rows_per_statement: int = SQLITE_ROWS_PER_STATEMENT
) -> int:
    width = len(EVENT_COLUMNS)
    step = rows_per_statement * width
    inserted = 0
    for start in range(0, len(flat), step):
        params = flat[start : start + step]
        cur.execute(_sqlite_insert_sql(len(params) // width), params)
        inserted += cur.rowcount
    return inserted


def _json_fallback(value: Any, **options: Any) -> bytes:
    """JSON for what orjson refuses: integers beyond 64 bits (Python callers can
    send them; JSON parsers hand back floats for them anyway)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"), **options).encode()


def _rows(
    events: list[Fields],
    pids: list[int],
    source: str,
    now: datetime,
    *,
    for_sqlite: bool = False,
    props_json: bool = False,
) -> list[tuple]:
    """Column values in EVENT_COLUMNS order; properties as JSON text with
    ``props_json``; ``for_sqlite``: times as SQLite's text, properties as JSON
    text and missing fields as SQLITE_ABSENT's markers.

    The hottest loop of a bulk load, hence written out inline.
    """
    received: datetime | str = _sqlite_ts(now) if for_sqlite else now
    props_json = props_json or for_sqlite
    absent = SQLITE_ABSENT if for_sqlite else dict.fromkeys(SQLITE_ABSENT)
    no_session, no_product, no_value, no_currency, no_url, no_campaign = (
        absent[c] for c in ("session_id", "product_id", "value", "currency", "url", "campaign")
    )
    rows = []
    append = rows.append
    for e, pid in zip(events, pids, strict=True):
        get = e.get
        type_ = e["type"]
        ts = get("ts")
        if ts is None:
            ts = received
        elif for_sqlite:
            ts = _sqlite_ts_of(get(TS_TEXT), ts)
        if props_json and (text := get(STORED_JSON)) is not None:
            props = text
        else:
            # An identify call keeps its traits as the event's properties.
            props = get("traits") if type_ == IDENTIFY else get("properties", {})
            if props_json:
                props = json_bytes(props).decode()
        append(
            (
                pid,
                type_,
                ts,
                # A field given as None (always so in an Event's fields) is
                # bound as None, which SQLite stores as NULL too.
                get("session_id", no_session),
                get("product_id", no_product),
                get("value", no_value),
                get("currency", no_currency),
                get("url", no_url),
                get("campaign", no_campaign),
                props,
                source,
                e["message_id"],
                received,
            )
        )
    return rows


def _write_core(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """Any other SQLAlchemy dialect: Core executemany (duplicates were checked before)."""
    rows = [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in _rows(events, pids, source, now)]
    return conn.execute(EVENTS.insert(), rows).rowcount


def _write_postgres_copy(
    conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
) -> int:
    """COPY straight into events; duplicates were already dropped in this
    transaction. Should a concurrent writer have stored one of these since,
    the COPY fails on the unique key and the batch goes through a temp table
    and INSERT .. ON CONFLICT DO NOTHING instead."""
    from psycopg.errors import UniqueViolation

    cols = ", ".join(EVENT_COLUMNS)
    dbapi = conn.connection.driver_connection
    try:
        with conn.begin_nested(), dbapi.cursor() as cur:
            _copy_rows(cur, "events", events, pids, source, now)
            return len(events)
    except UniqueViolation:
        pass  # the savepoint is rolled back; nothing of this batch was stored
    with dbapi.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS events_stage "
            f"ON COMMIT DELETE ROWS AS SELECT {cols} FROM events WITH NO DATA"
        )
        _copy_rows(cur, "events_stage", events, pids, source, now)
        cur.execute(
            f"INSERT INTO events ({cols}) SELECT {cols} FROM events_stage "
            "ON CONFLICT (message_id) DO NOTHING"
        )
        inserted = cur.rowcount
        cur.execute("TRUNCATE events_stage")
    return inserted


def _copy_rows(
    cur: Any, table: str, events: list[Fields], pids: list[int], source: str, now: datetime
) -> None:
    with cur.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
        for row in _rows(events, pids, source, now, props_json=True):
            copy.write_row(row)
