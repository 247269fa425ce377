"""The canonical event every source produces, and its validation.

Sources turn what they receive into dicts of this one shape; ``Event``
validates one (accepting the forms people send: epoch seconds, upper-case
addresses, ...) and ``describe_error`` names what is wrong in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.errors import describe_validation_error
from core.ingestion.report import Rejection
from core.types import EVENT_TYPE_MAX_LENGTH, SNAKE_NAME, RawRecord

IDENTIFY = "identify"
TYPE_PATTERN = SNAKE_NAME.pattern
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
# The rule core.types sets for event types (and definition names).
EventType = Annotated[
    str, StringConstraints(pattern=TYPE_PATTERN, max_length=EVENT_TYPE_MAX_LENGTH)
]
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


def _json_fallback(value: Any, **options: Any) -> bytes:
    """JSON for what orjson refuses: integers beyond 64 bits (Python callers can
    send them; JSON parsers hand back floats for them anyway)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"), **options).encode()


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


def describe_error(exc: ValidationError) -> str:
    """One line naming each failing field, e.g. ``field 'ts': ...``, worded
    for people sending events (what an event type or a timestamp must be)."""
    return describe_validation_error(
        ValidationError.from_exception_data(
            exc.title, [_reworded(err) for err in exc.errors(include_url=False)]
        )
    )


def _reworded(err: Any) -> InitErrorDetails:
    loc, kind, msg = ".".join(str(p) for p in err["loc"]), err["type"], err["msg"]
    if kind == "string_pattern_mismatch" and err["ctx"]["pattern"] == NO_NUL:
        msg = NUL_MESSAGE
    elif kind == "string_pattern_mismatch" and loc == "type":
        msg = f"{err['input']!r} is not a snake_case event type (lower case, digits, _)"
    elif kind.startswith("datetime_"):
        msg = f"timestamp {err['input']!r} is not ISO 8601 with offset or epoch seconds"
    elif kind == "extra_forbidden":
        msg = "unknown field (custom data goes under properties)"
    else:
        # Kept as it was, type included: the shared wording applies ("required").
        return {"type": PydanticCustomError(kind, msg), "loc": err["loc"], "input": err["input"]}
    return {"type": PydanticCustomError("event", msg), "loc": err["loc"], "input": err["input"]}


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


def trait_email(traits: Properties | None) -> str | None:
    """The email an identify call sets, normalised, if it is a valid address."""
    if traits is None:
        return None
    value = traits.get("email")
    if isinstance(value, str) and EMAIL_RE.match(value.strip()):
        return value.strip().lower()
    return None
