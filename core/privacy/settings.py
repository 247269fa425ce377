"""``[privacy]`` settings (read by core.config; the policy is core.privacy.policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ConsentPolicy(BaseModel):
    """``[privacy.consent]``: what ingestion does without tracking consent."""

    model_config = ConfigDict(extra="forbid")

    tracking: Literal["off", "required", "anonymise"] = "off"
    # Event properties an anonymised event keeps (everything else is dropped).
    anonymous_properties: list[str] = Field(default_factory=list)


class PrivacySettings(BaseModel):
    """``[privacy]`` in segflow.toml."""

    model_config = ConfigDict(extra="forbid")

    consent: ConsentPolicy = ConsentPolicy()
