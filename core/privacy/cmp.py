"""The CMP webhook: consent decisions from a consent-management platform,
signed, mapped from the CMP's purpose ids to segflow's purposes.

Body (the segflow CMP format, version 1; other fields are ignored)::

    {"id": "evt-8c1f",                       # optional: the CMP's event id
     "user": {"id": "u1", "email": "ann@example.com", "anonymous_id": "a-9"},
     "decided_at": "2026-12-03T10:00:00Z",   # when the person decided
     "text_version": "notice-v7",            # optional: the text they agreed to
     "purposes": [{"id": "newsletter", "enabled": false},
                  {"id": "analytics", "enabled": true}]}

``user`` names the person by at least one of its keys. Purpose ids are each
CMP's own configuration, so ``[privacy.consent.cmp] purposes`` maps them
(``newsletter = "email_marketing"``); ids it does not map are ignored and
counted. Two ids mapped to one purpose that disagree record a withdrawal: a
"no" given anywhere is not overridden by a "yes" elsewhere in the same event.

Signature: ``X-Segflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>." + body>`` with the shared secret, accepted within
``tolerance_seconds`` (Stripe's scheme: the timestamp is signed, so a
captured request cannot be replayed later). A bad or missing one is 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from core.errors import validation_reason
from core.privacy.consent import purpose_name
from core.signatures import timestamped_signature, verify_timestamped

SIGNATURE_HEADER = "X-Segflow-Signature"
SOURCE = "cmp"
Text = Field(default=None, min_length=1, max_length=255)


class CmpBodyError(ValueError):
    """The body is not a CMP event; ``field`` names where (``purposes.1.enabled``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CmpUser(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Text
    email: str | None = Text
    anonymous_id: str | None = Text

    @model_validator(mode="after")
    def _someone(self) -> CmpUser:
        if not (self.id or self.email or self.anonymous_id):
            raise ValueError("names nobody: give id, email or anonymous_id")
        return self


class CmpPurposeChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=200)
    enabled: StrictBool


class CmpEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Text
    user: CmpUser
    decided_at: AwareDatetime
    text_version: str | None = Text
    purposes: list[CmpPurposeChoice] = Field(min_length=1, max_length=200)


@dataclass(frozen=True)
class CmpDecisions:
    """What one CMP event decides, in segflow's terms."""

    purposes: dict[str, bool]
    ignored: list[str]  # the CMP's purpose ids no mapping names
    version: str | None
    at: datetime
    ids: dict[str, str]  # user_id / email / anonymous_id
    message_id: str | None


def signature(body: bytes, secret: str, at: int) -> str:
    """The header value a CMP (or a relay in front of one) sends with ``body``."""
    return timestamped_signature(body, secret, at)


def verify(
    body: bytes, header: str | None, secret: str, tolerance: int, now: float | None = None
) -> None:
    verify_timestamped(body, header, secret, name=SIGNATURE_HEADER, tolerance=tolerance, now=now)


def parse(body: bytes) -> CmpEvent:
    """The CMP event in ``body``, or CmpBodyError naming the field."""
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CmpBodyError("body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise CmpBodyError(f"body must be a JSON object, not {type(raw).__name__}")
    try:
        return CmpEvent.model_validate(raw)
    except ValidationError as exc:
        where, message = validation_reason(exc)
        raise CmpBodyError(f"{where}: {message}" if where else message, where or None) from None


def decisions(event: CmpEvent, mapping: dict[str, str]) -> CmpDecisions:
    """The event's choices mapped to segflow's purposes (a withdrawal wins a
    disagreement), and the purpose ids no mapping names."""
    purposes: dict[str, bool] = {}
    ignored: list[str] = []
    for choice in event.purposes:
        target = mapping.get(choice.id)
        if target is None:
            ignored.append(choice.id)
            continue
        name = purpose_name(target)
        purposes[name] = purposes.get(name, True) and choice.enabled
    user = event.user
    ids = {"user_id": user.id, "email": user.email, "anonymous_id": user.anonymous_id}
    return CmpDecisions(
        purposes=purposes,
        ignored=ignored,
        version=event.text_version,
        at=event.decided_at,
        ids={k: v for k, v in ids.items() if v},
        message_id=f"{SOURCE}:{event.id}" if event.id else None,
    )
