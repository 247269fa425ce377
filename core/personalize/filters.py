"""The built-in template filters: ``money``, ``date`` and ``truncate``.

``money`` and ``date`` format in the person's locale and timezone (the
context's ``locale`` and ``timezone``: the profile's attributes of those
names, else the ``[email]`` settings), with Babel.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from jinja2 import pass_context
from jinja2.runtime import Context


@lru_cache(maxsize=256)
def locale_named(name: str) -> Locale:
    """A Babel locale from ``en_US`` / ``en-US`` / ``de``; ValueError when unknown."""
    try:
        return Locale.parse(name.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError(f"unknown locale {name!r} (e.g. en_US, de_DE, fr)") from None


@lru_cache(maxsize=256)
def timezone_named(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (an IANA name, e.g. Europe/Paris)") from None


# Catalogue prices repeat from one email to the next, and Babel parses the
# currency pattern on every call: the formatted text is kept instead.
@lru_cache(maxsize=8192)
def _money(amount: float, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=locale_named(locale))


@pass_context
def money(context: Context, value: Any, currency: str | None = None) -> str:
    """``{{ item.price|money }}`` or ``{{ total|money("EUR") }}``: the amount in
    the person's locale; the currency defaults to the context's ``currency``."""
    if value is None or value == "":
        return ""
    return _money(float(value), currency or context.get("currency") or "USD", context["locale"])


@pass_context
def date_filter(context: Context, value: Any, format: str = "medium", time: bool = False) -> str:
    """``{{ entered|date }}``, ``{{ ts|date("long") }}``, ``{{ ts|date(time=true) }}``:
    a datetime (or ISO 8601 text, or a date) shown in the person's timezone and
    locale; ``format`` is short, medium, long, full or a Babel pattern."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    locale = locale_named(context["locale"])
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        local = aware.astimezone(timezone_named(context["timezone"]))
        if time:
            return format_datetime(local, format, locale=locale)
        value = local.date()
    if not isinstance(value, date):
        raise TypeError(f"date filter: expected a date or datetime, got {type(value).__name__}")
    return format_date(value, format, locale=locale)


def truncate(value: Any, length: int = 80, end: str = "\u2026") -> str:
    """``{{ product.name|truncate(30) }}``: at most ``length`` characters, cut
    at a word boundary when there is one, ``end`` appended when cut."""
    text = "" if value is None else str(value)
    if len(text) <= length:
        return text
    cut = text[: max(length - len(end), 0)]
    space = cut.rfind(" ")
    if space > len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + end


BUILTIN_FILTERS = {"money": money, "date": date_filter, "truncate": truncate}
