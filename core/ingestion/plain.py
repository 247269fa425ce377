"""The plain form: records already as ``Event`` would hold them, checked fast.

Nearly every record trackers and exports write is already in the form
``Event`` normalises to: ISO timestamps with an offset, lower-case addresses,
strings for text. Such records are checked by pydantic-core alone, without
``Event``'s Python validators and without building a model (a third of the
cost); everything else goes through ``Event``, which accepts more forms and
names what is wrong. tests/test_plain.py holds the two to the same answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Required

from pydantic import ConfigDict, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from core.ingestion.schema import (
    IDENTIFY,
    Currency,
    Event,
    EventType,
    Fields,
    Id,
    Properties,
    ShortText,
    Url,
    as_utc,
    content_id,
    has_nul,
    json_bytes,
    json_has_nul,
)

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
