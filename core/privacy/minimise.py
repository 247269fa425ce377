"""Data minimisation at ingestion: allow-listed properties, scrubbed text,
truncated IP addresses.

``store_batch`` (every path: the API, batch and bulk imports, sources) runs
``Minimiser.apply`` on each batch after duplicates and suppressed people are
dropped, before the INSERT; a policy that does nothing costs one check per
batch. An event's message id is made from what was sent, before any of this,
so a re-sent event is still a duplicate.

- allow: the properties not on the event type's list are dropped, counted per
  type and property (``IngestReport.minimised``, ``ingest_minimised``).
- scrub: in ``url`` and every string of ``properties`` (nested too), email
  addresses become ``[email]``, phone numbers ``[phone]``, and the values of
  query parameters that carry secrets or identities (token, key, password,
  session, email, ...) ``[redacted]``. An identify call's traits are not
  scrubbed: they are the person's profile, stored as such.
- ip: ``properties.ip`` and ``properties.context.ip`` truncated to their /24
  (IPv4) or /48 (IPv6) network, or dropped; a value that is no address is dropped.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from core.privacy.settings import DEFAULT, MinimiseSettings

IDENTIFY = "identify"
EMAIL_MARK = "[email]"
PHONE_MARK = "[phone]"
SECRET_MARK = "[redacted]"
# Query parameters whose values are secrets or name the person.
SECRET_PARAMS = (
    "token", "access_token", "refresh_token", "id_token", "auth", "authorization",
    "key", "api_key", "apikey", "password", "passwd", "pwd", "pass", "secret",
    "session", "session_id", "sessionid", "sid", "email", "e-mail", "mail", "phone", "tel",
    "code", "signature", "sig",
)  # fmt: skip
# Dropped-property names are counted as sent; a sender inventing names could
# otherwise grow the counts without bound.
MAX_NAME = 64
MAX_NAMES_PER_TYPE = 100
OTHER = "(other)"

_QUERY = re.compile(
    r"(?P<lead>[?&;#](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&#;\s]*",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# International numbers (+ and 8-15 digits with separators), and the 3-3-4
# form; bare digit runs are left alone: they are order ids and prices as often.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d[\d\s().-]{6,18}\d|\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4})(?![\w-])"
)


def scrub_text(text: str) -> str:
    """``text`` with secret query values, emails and phone numbers replaced by markers."""
    if "=" in text:
        text = _QUERY.sub(lambda m: m.group("lead") + SECRET_MARK, text)
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(EMAIL_MARK, text)
    return _PHONE.sub(PHONE_MARK, text)


def _scrub_value(value: Any) -> Any:
    if type(value) is str:
        return scrub_text(value)
    if type(value) is dict:
        return {k: _scrub_value(v) for k, v in value.items()}
    if type(value) is list:
        return [_scrub_value(v) for v in value]
    return value


def truncate_ip(value: Any) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network address of ``value``; None if it is no address."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


# (type, property, action) -> how many; action is "dropped", "scrubbed" or "ip".
Counts = dict[tuple[str, str, str], int]


@dataclass
class Minimiser:
    """A compiled ``[privacy.minimise]``: which properties each type keeps,
    whether text is scrubbed, what happens to IP addresses."""

    allow: dict[str, frozenset[str]] = field(default_factory=dict)
    default: frozenset[str] | None = None
    scrub: bool = False
    ip: str = "keep"

    @classmethod
    def from_settings(cls, settings: MinimiseSettings) -> Minimiser:
        allow = {t: frozenset(keys) for t, keys in settings.allow.items() if t != DEFAULT}
        default = settings.allow.get(DEFAULT)
        return cls(
            allow, frozenset(default) if default is not None else None, settings.scrub, settings.ip
        )

    @property
    def active(self) -> bool:
        return bool(self.allow) or self.default is not None or self.scrub or self.ip != "keep"

    def allowed(self, type_: str) -> frozenset[str] | None:
        """The properties ``type_`` keeps; None: all of them."""
        found = self.allow.get(type_)
        if found is None and type_ != IDENTIFY:
            return self.default
        return found

    def event(self, type_: str, fields: dict[str, Any], counts: Counts) -> dict[str, Any] | None:
        """The changed fields (``properties``, ``traits``, ``url``) of one
        event's ``fields``, or None when nothing changes; ``counts`` grows."""
        identify = type_ == IDENTIFY
        key = "traits" if identify else "properties"
        props = fields.get(key) or {}
        changed: dict[str, Any] = {}
        keep = self.allowed(type_)
        if keep is not None and props and not keep.issuperset(props):
            for name in props:
                if name not in keep:
                    _count(counts, type_, name, "dropped")
            props = {k: v for k, v in props.items() if k in keep}
            changed[key] = props
        if self.ip != "keep" and props and not identify:
            props = self._ip(type_, props, counts)
            if props is not changed.get(key, fields.get(key)):
                changed[key] = props
        if self.scrub and not identify:
            url = fields.get("url")
            if url:
                clean = scrub_text(url)
                if clean != url:
                    changed["url"] = clean
                    _count(counts, type_, "url", "scrubbed")
            if props:
                clean_props = _scrub_value(props)
                if clean_props != props:
                    for name, v in clean_props.items():
                        if v != props.get(name):
                            _count(counts, type_, name, "scrubbed")
                    changed[key] = clean_props
        return changed or None

    def _ip(self, type_: str, props: dict[str, Any], counts: Counts) -> dict[str, Any]:
        out = props
        if "ip" in props:
            out = dict(props)
            _set_ip(out, "ip", self.ip, type_, "ip", counts)
        context = props.get("context")
        if isinstance(context, dict) and "ip" in context:
            context = dict(context)
            _set_ip(context, "ip", self.ip, type_, "context.ip", counts)
            out = dict(out) if out is props else out
            out["context"] = context
        return out


def _set_ip(holder: dict[str, Any], key: str, mode: str, type_: str, name: str, c: Counts) -> None:
    short = truncate_ip(holder[key]) if mode == "truncate" else None
    if short is None:
        del holder[key]
        _count(c, type_, name, "dropped")
    elif short != holder[key]:
        holder[key] = short
        _count(c, type_, name, "ip")


def _count(counts: Counts, type_: str, name: str, action: str) -> None:
    # A name is counted as sent, less any address or number in it.
    name = scrub_text(name)[:MAX_NAME]
    k = (type_, name, action)
    if k not in counts and sum(1 for t, _, a in counts if t == type_ and a == action) >= (
        MAX_NAMES_PER_TYPE
    ):
        k = (type_, OTHER, action)
    counts[k] = counts.get(k, 0) + 1


OFF = Minimiser()


def configured() -> Minimiser:
    """The policy of the settings file the commands read (SEGFLOW_CONFIG or
    segflow.toml), re-read when the file changes; OFF without one."""
    from core.config import config_path

    path = config_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return OFF
    return _load(str(path.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _load(_path: str, _stamp: int) -> Minimiser:
    """Keyed by the file and its modification time, so an edit is seen."""
    from core.config import load_settings

    try:
        return Minimiser.from_settings(load_settings().privacy.minimise)
    except Exception:  # noqa: BLE001 - a bad file fails the command itself, not each batch
        return OFF
