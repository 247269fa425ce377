"""``[[connectors]]`` in segflow.toml: the ESPs and CRMs to sync to.

    [[segflow.connectors]]
    name = "klaviyo"                 # how commands and workflows name it
    kind = "klaviyo"                 # a registered connector: klaviyo, mailchimp, hubspot, ...
    api_key_env = "KLAVIYO_API_KEY"  # the environment variable holding the secret
    segments = ["cart_abandoners", "vip"]
    membership = "list"              # list, tag or property (default: the connector's first)
    properties = {first_name = "attributes.first_name"}
    # base_url = "http://127.0.0.1:8700"   # default: the vendor's
    # events = true                  # segment entries and exits as ESP events
    # options = {list_prefix = "segflow: "}

The secret itself never appears in the file, in logs or in errors: only the
name of the variable that holds it.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core import EspConnector, SyncTarget, UsageError, esp_connectors

SECTION = "connectors"


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    kind: str
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    segments: list[str] = []
    membership: str | None = None
    properties: dict[str, str] = {}
    events: bool = True
    options: dict[str, Any] = {}

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        known = esp_connectors()
        if value not in known:
            raise ValueError(f"no connector of kind {value!r} ({', '.join(sorted(known))})")
        return value

    @field_validator("properties")
    @classmethod
    def _sources(cls, value: dict[str, str]) -> dict[str, str]:
        for remote, source in value.items():
            if source not in ("user_id", "email") and not source.startswith("attributes."):
                raise ValueError(
                    f"{remote} = {source!r}: a source is user_id, email or attributes.NAME"
                )
        return value

    def resolve(self) -> tuple[SyncTarget, EspConnector]:
        """(target, connector), as core's erasure asks for them (core.privacy)."""
        return target_of(self), connector_of(self)


def connector_of(config: ConnectorConfig) -> EspConnector:
    return esp_connectors()[config.kind]


def target_of(config: ConnectorConfig) -> SyncTarget:
    """The resolved target: the key read from its variable, the default base URL
    and membership of its kind. UsageError when it cannot sync or its key is unset."""
    connector = connector_of(config)
    if connector.sync is None:
        raise UsageError(f"connector {config.name!r}: {config.kind} sends email but cannot sync")
    if not config.api_key_env:
        raise UsageError(
            f"connector {config.name!r}: set api_key_env, the variable holding its key"
        )
    key = os.environ.get(config.api_key_env)
    if not key:
        raise UsageError(
            f"connector {config.name!r}: the environment variable {config.api_key_env} is not set"
        )
    base_url = config.base_url or connector.sync.base_url
    return SyncTarget(
        name=config.name,
        kind=config.kind,
        base_url=base_url.rstrip("/"),
        api_key=key,
        segments=tuple(config.segments),
        membership=config.membership or connector.sync.memberships[0],
        properties=dict(config.properties),
        events=config.events,
        options=dict(config.options),
    )


def configured(settings: Any, name: str | None = None) -> list[ConnectorConfig]:
    """The [[connectors]] entries that sync (``name``: that one)."""
    if name is not None:
        return [settings.plugin_entry(SECTION, name, "connector")]
    return [c for c in settings.plugin(SECTION) if connector_of(c).sync is not None]
