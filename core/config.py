"""Settings: where segflow finds its database and other knobs.

Precedence, highest first: the ``--db`` option, the ``SEGFLOW_DATABASE_URL``
environment variable, a ``segflow.toml`` in the working directory (or the file
named by ``SEGFLOW_CONFIG``), then the default ``sqlite:///segflow.db``.
``SEGFLOW_SECRET_KEY`` likewise overrides ``secret_key``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

DEFAULT_DATABASE_URL = "sqlite:///segflow.db"
CONFIG_FILE = "segflow.toml"


class ConfigError(Exception):
    """A configuration file or value is wrong; the message names where."""


class WebhookConfig(BaseModel):
    """One signed webhook endpoint: POST /webhooks/{name}."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    style: Literal["stripe", "shopify"]
    secret: str = Field(min_length=8)


class PollConfig(BaseModel):
    """A paginated HTTP JSON endpoint to pull events from (``segflow poll NAME``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str
    interval_seconds: float = Field(default=60.0, gt=0)
    headers: dict[str, str] = {}
    cursor_param: str = "cursor"
    items_field: str = "events"
    next_field: str = "next_cursor"
    max_attempts: int = Field(default=5, ge=1)


class StreamConfig(BaseModel):
    """A Redis Stream to consume events from (``segflow consume NAME``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str = "redis://127.0.0.1:6379/0"
    stream: str
    group: str = "segflow"
    consumer: str = "segflow-1"
    # The entry field holding the event as JSON.
    field: str = "event"
    batch: int = Field(default=500, ge=1)
    block_ms: int = Field(default=5000, ge=0)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    # Bulk loads commit every ``batch_size`` events so memory stays flat and a
    # crash loses at most one uncommitted batch.
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    # Upgrade the schema automatically when a command opens an old database.
    auto_upgrade: bool = True
    # Ingestion API: requests per second per API key, and the burst allowed above it.
    api_rate_limit: float = Field(default=200.0, gt=0)
    api_burst: int = Field(default=400, ge=1)
    webhooks: list[WebhookConfig] = []
    polls: list[PollConfig] = []
    streams: list[StreamConfig] = []
    # Signs tracking links (open pixel, clicks, unsubscribe); `segflow init` makes one.
    secret_key: str | None = Field(default=None, min_length=16)
    # Where database_url came from, for `segflow info` and error messages.
    _source: str = PrivateAttr(default="default")

    @property
    def source(self) -> str:
        return self._source


def _config_path() -> Path:
    return Path(os.environ.get("SEGFLOW_CONFIG", CONFIG_FILE))


def load_file(path: Path) -> dict:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Accept both a top-level table and a [segflow] section, so the file can
    # also live inside a pyproject-like layout.
    data = raw.get("segflow", raw)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [segflow] must be a table")
    return data


def load_settings(db: str | None = None) -> Settings:
    values: dict = {}
    source = "default"
    path = _config_path()
    if path.is_file():
        values.update(load_file(path))
        source = str(path)
    if os.environ.get("SEGFLOW_SECRET_KEY"):
        values["secret_key"] = os.environ["SEGFLOW_SECRET_KEY"]
    env_url = os.environ.get("SEGFLOW_DATABASE_URL")
    if env_url:
        values["database_url"] = env_url
        source = "SEGFLOW_DATABASE_URL"
    if db:
        values["database_url"] = db
        source = "--db"
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: field '{field}': {err['msg']}") from None
    settings._source = source
    return settings
