"""``[privacy]`` in segflow.toml: what ingestion keeps and for how long
(read by core.config; the consent policy is applied by core.privacy.policy).

    [privacy.consent]
    tracking = "required" # off | required | anonymise
    anonymous_properties = ["plan"]

    [privacy.consent.cmp]  # the CMP webhook, POST /v1/consents/cmp (core.privacy.cmp)
    secret_env = "SEGFLOW_CMP_SECRET"
    purposes = {analytics = "tracking", newsletter = "email_marketing"}

    [privacy.minimise]
    allow = {page_view = ["title", "referrer"], default = ["plan"]}
    scrub = true          # emails, phone numbers, secret query parameters -> markers
    ip = "truncate"       # keep | truncate (IPv4 /24, IPv6 /48) | drop

    [privacy.retention]
    page_view = "90d"
    default = "3y"        # every type not named; without it they are kept

An ``allow`` list names the top-level keys of an event type's properties
that are stored; the rest are dropped and counted. ``default`` applies to
every type not named, except ``identify``, whose properties are the
person's traits: they are allow-listed only when ``identify`` is named.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from core.types import SNAKE_NAME

DEFAULT = "default"
FOREVER = "forever"
RETENTION_RE = re.compile(r"^\s*(\d+)\s*(d|w|y)\s*$")
UNIT_DAYS = {"d": 1, "w": 7, "y": 365}


def parse_retention(value: Any) -> timedelta | None:
    """``"90d"``, ``"12w"``, ``"3y"`` (365 days a year); ``"forever"``: None."""
    if value is None or value == FOREVER:
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and (m := RETENTION_RE.match(value)):
        amount = int(m.group(1))
        if amount == 0:
            raise ValueError(f"retention {value!r} must be positive")
        return timedelta(days=amount * UNIT_DAYS[m.group(2)])
    raise ValueError(f"{value!r} is not a retention period (like 90d, 12w, 3y, or forever)")


Retention = Annotated[timedelta | None, BeforeValidator(parse_retention)]


def _check_types(value: dict[str, Any]) -> dict[str, Any]:
    for name in value:
        if name != DEFAULT and not SNAKE_NAME.match(name):
            raise ValueError(f"{name!r} is not an event type (snake_case) or 'default'")
    return value


# The purposes a CMP's purpose ids map to (``email`` is the old name of email_marketing).
CmpPurpose = Literal["tracking", "email_marketing", "personalisation", "email"]


class CmpSettings(BaseModel):
    """``[privacy.consent.cmp]``: the consent-management platform's signed webhook."""

    model_config = ConfigDict(extra="forbid")

    # The environment variable holding the shared signing secret, never the secret.
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # The CMP's own purpose ids (configured in the CMP) -> segflow's purposes.
    purposes: dict[Annotated[str, Field(min_length=1, max_length=200)], CmpPurpose] = Field(
        min_length=1
    )
    # How old a signature's timestamp may be: a captured request replays no longer.
    tolerance_seconds: int = Field(default=300, ge=1, le=3600)


class ConsentPolicy(BaseModel):
    """``[privacy.consent]``: what ingestion does without tracking consent, and
    where consent decisions may come from (the CMP webhook)."""

    model_config = ConfigDict(extra="forbid")

    tracking: Literal["off", "required", "anonymise"] = "off"
    # Event properties an anonymised event keeps (everything else is dropped).
    anonymous_properties: list[str] = Field(default_factory=list)
    cmp: CmpSettings | None = None


class MinimiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: dict[str, list[Annotated[str, Field(min_length=1)]]] = {}
    scrub: bool = False
    ip: Literal["keep", "truncate", "drop"] = "keep"

    @field_validator("allow")
    @classmethod
    def _types(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_types(value)


class PrivacySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consent: ConsentPolicy = ConsentPolicy()
    minimise: MinimiseSettings = MinimiseSettings()
    # event type (or "default") -> how long its events are kept
    retention: dict[str, Retention] = {}

    @field_validator("retention")
    @classmethod
    def _types(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_types(value)
