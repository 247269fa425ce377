"""The built-in workflow triggers."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, field_validator

from core import (
    MEMBERSHIPS,
    PROFILES,
    SEGMENTS,
    Duration,
    Entry,
    EventRow,
    EventTypes,
    Trigger,
    Where,
    is_snake_name,
    where_matches,
)

SEGMENT_NAME_MAX_LENGTH = 255
CATCH_UP = timedelta(days=3)


def _segment_name(value: Any) -> str:
    if not is_snake_name(value, SEGMENT_NAME_MAX_LENGTH):
        raise ValueError(f"{value!r} is not a segment name (snake_case)")
    return value


def _segment_trigger(name: str, change: str) -> Trigger:
    def on_changes(segment: str, changes) -> list[Entry]:
        return [
            Entry(c.profile_id, c.at)
            for c in changes
            if c.segment == segment and c.change == change
        ]

    return Trigger(
        name,
        f"someone {change} the segment",
        _segment_name,
        on_changes=on_changes,
        segment=(lambda s: s) if change == "entered" else (lambda _s: None),
    )


class EventTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventTypes
    where: Where = ()
    # A field whose value keys the run: one run per cart (properties.cart_id).
    key: str | None = None


def _event_params(value: Any) -> EventTrigger:
    if isinstance(value, str | list):
        value = {"type": value}
    return EventTrigger.model_validate(value)


def _row(stored) -> EventRow:
    e = stored.event
    return EventRow(
        e.type, stored.ts, e.session_id, e.product_id, e.value, e.currency, e.url, e.campaign,
        None, dict(e.properties or {}), e.message_id,
    )  # fmt: skip


def _on_events(params: EventTrigger, events) -> list[Entry]:
    types = set(params.type)
    out = []
    for stored in events:
        if stored.type not in types:
            continue
        row = _row(stored)
        if params.where and not where_matches(row, params.where):
            continue
        key = row.get(params.key) if params.key else ""
        out.append(Entry(stored.profile_id, stored.ts, "" if key is None else str(key)))
    return out


class ScheduleTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    segment: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"cron {value!r}: {exc}") from None
        return value

    @field_validator("segment")
    @classmethod
    def _segment(cls, value: str) -> str:
        return _segment_name(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value


def _last_fire(params: ScheduleTrigger, since: datetime, as_of: datetime) -> datetime | None:
    from cronsim import CronSim

    tz = ZoneInfo(params.timezone)
    last = None
    for fire in CronSim(params.cron, since.astimezone(tz)):
        if fire > as_of.astimezone(tz):
            break
        last = fire
    return None if last is None else last.astimezone(as_of.tzinfo)


def _members(conn, segment: str) -> list[int]:
    return list(
        conn.execute(
            sa.select(MEMBERSHIPS.c.profile_id)
            .join(SEGMENTS, SEGMENTS.c.id == MEMBERSHIPS.c.segment_id)
            .join(PROFILES, PROFILES.c.id == MEMBERSHIPS.c.profile_id)
            .where(SEGMENTS.c.name == segment, PROFILES.c.merged_into.is_(None))
        ).scalars()
    )


def _on_schedule(params: ScheduleTrigger, conn, since, as_of) -> list[Entry]:
    # The first look only starts the clock: a new schedule does not fire for the past.
    if since is None:
        return []
    fire = _last_fire(params, since, as_of)
    if fire is None:
        return []
    key = fire.isoformat()
    return [Entry(pid, fire, key) for pid in _members(conn, params.segment)]


class DateTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str
    # Days (or any duration) after the date: 7d after signed_up_at.
    offset: Duration = timedelta(0)
    # Every year on the date (a birthday), not once.
    annual: bool = False


def _as_date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).date()
    except ValueError:
        return None


def _anniversary(d: date, year: int) -> date:
    try:
        return d.replace(year=year)
    except ValueError:  # 29 February in a year without one
        return date(year, 2, 28)


def _on_date(params: DateTrigger, conn, since, as_of) -> list[Entry]:
    today = as_of.date()
    first_day = today if since is None else since.date() + timedelta(days=1)
    # Ticks that stopped for long catch up a few days, not a year of birthdays.
    first_day = max(first_day, today - CATCH_UP)
    if first_day > today:
        return []
    days = {first_day + timedelta(days=i) for i in range((today - first_day).days + 1)}
    out = []
    rows = conn.execute(
        sa.select(PROFILES.c.id, PROFILES.c.attributes).where(PROFILES.c.merged_into.is_(None))
    )
    for pid, attrs in rows:
        if isinstance(attrs, str | bytes):
            import orjson

            attrs = orjson.loads(attrs)
        d = _as_date((attrs or {}).get(params.attribute))
        if d is None:
            continue
        target = d + params.offset
        for day in days:
            hit = _anniversary(target, day.year) == day if params.annual else target == day
            if hit:
                out.append(Entry(pid, as_of, day.isoformat()))
    return out


TRIGGERS = (
    _segment_trigger("segment_entered", "entered"),
    _segment_trigger("segment_exited", "exited"),
    Trigger("event", "an event of some type (where ..., one run per key)", _event_params,
            on_events=_on_events),
    Trigger("schedule", "a cron schedule, for a segment's members", ScheduleTrigger.model_validate,
            on_tick=_on_schedule, segment=lambda p: p.segment),
    Trigger("date_attribute", "a date in a profile attribute (birthday, N days after signup)",
            DateTrigger.model_validate, on_tick=_on_date),
)  # fmt: skip
