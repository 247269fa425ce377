"""Settings: where segflow finds its database and other knobs.

Plugins declare sections of their own (``register_settings``); the core
validates them with the plugin's model when the file loads and hands them out
through ``Settings.plugin(section)``. Any other key is an error naming it.

Precedence, highest first: the ``--db`` option, the ``SEGFLOW_DATABASE_URL``
environment variable, a ``segflow.toml`` in the working directory (or the file
named by ``SEGFLOW_CONFIG``), then the default ``sqlite:///segflow.db``.
``SEGFLOW_SECRET_KEY`` likewise overrides ``secret_key``.
"""

from __future__ import annotations

import os
import secrets
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from core.errors import not_utf8, validation_reason
from core.plugins import settings_sections
from core.privacy.settings import PrivacySettings
from core.types import UsageError

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


class EmailSettings(BaseModel):
    """``[email]``: how personalised email is rendered (core.personalize)."""

    model_config = ConfigDict(extra="forbid")

    # Where recipients' mail clients reach `segflow serve` (its default address
    # here): click links, the open pixel and the unsubscribe page point there.
    base_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://[^/\s]+")
    # The shop's own site, for links templates make ("back to the shop").
    site_url: str = Field(default="https://shop.example.com", pattern=r"^https?://[^/\s]+")
    # Folders of the installation's templates, searched in order before the
    # built-in templates/ folder (a template of the same name there wins).
    templates: list[Path] = []
    # For people whose profile has no `locale` / `timezone` attribute.
    locale: str = Field(default="en_US", pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
    timezone: str = "UTC"
    # Prices without a currency of their own.
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    # Who sends, and the postal address marketing email must show (CAN-SPAM).
    company: str = "segflow demo store"
    postal_address: str = "1 Example Street, Springfield, USA"
    # A page of the site where people manage their email; else the unsubscribe page.
    preferences_url: str | None = Field(default=None, pattern=r"^https?://")
    # Products in the recommendation grid and in "recently viewed".
    recommendations: int = Field(default=4, ge=0, le=24)
    recently_viewed: int = Field(default=4, ge=0, le=24)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (an IANA name, e.g. Europe/Paris)"
            ) from None
        return value


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
    # Signs tracking links (open pixel, clicks, unsubscribe); `segflow init` makes one.
    secret_key: str | None = Field(default=None, min_length=16)
    # Personalised email: [email] in segflow.toml.
    email: EmailSettings = EmailSettings()
    # Consent policy, minimisation and retention: [privacy] (core.privacy.settings).
    privacy: PrivacySettings = PrivacySettings()
    # Plugins' sections as written (section name -> raw value); see plugin().
    plugin_settings: dict[str, Any] = {}
    # Where database_url came from, for `segflow info` and error messages.
    _source: str = PrivateAttr(default="default")
    # The settings file, named in errors about its plugin sections.
    _path: str = PrivateAttr(default=CONFIG_FILE)
    _validated: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        return self._source

    def plugin(self, section: str) -> Any:
        """A plugin's validated settings section (its defaults when not in the file).

        ConfigError naming the file, section and key when the value is bad, or
        when no loaded plugin registered ``section``.
        """
        if section not in self._validated:
            models = settings_sections()
            if section not in models:
                raise ConfigError(f"no plugin registered the settings section [{section}]")
            self._validated[section] = _validate_section(
                self._path, section, models[section], self.plugin_settings.get(section, _ABSENT)
            )
        return self._validated[section]

    def plugin_entry(self, section: str, name: str, what: str) -> Any:
        """The entry called ``name`` of a plugin's array-of-tables section (entries
        with a ``name``, such as ``[[sources.poll]]``), or a UsageError listing them."""
        entries = self.plugin(section)
        found = next((e for e in entries if e.name == name), None)
        if found is None:
            known = ", ".join(e.name for e in entries) or "none configured"
            raise UsageError(f"no {what} named {name!r} in [[{section}]] ({known})")
        return found


_ABSENT = object()


def _validate_section(path: str, section: str, model: Any, value: Any) -> Any:
    if value is _ABSENT:
        # An absent array of tables is an empty list; an absent table, the defaults.
        value = [] if typing.get_origin(model) is list else {}
    try:
        return TypeAdapter(model).validate_python(value)
    except ValidationError as exc:
        where, msg = validation_reason(exc)
        raise ConfigError(f"{path}: [{section}] {where + ': ' if where else ''}{msg}") from None


def _plugin_sections(path: str, data: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    """The plugin sections in ``data`` (keys that are no core setting), by section name.

    A key that is neither a section nor leads to one is an error naming it.
    """
    found: dict[str, Any] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if name in models:
                found[name] = value
            elif isinstance(value, dict) and any(m.startswith(name + ".") for m in models):
                walk(value, name + ".")
            else:
                known = ", ".join(sorted(Settings.model_fields.keys() - {"plugin_settings"}))
                sections = ", ".join(f"[{m}]" for m in sorted(models)) or "none"
                raise ConfigError(
                    f"{path}: field '{name}': unknown setting (settings: {known}; "
                    f"plugin sections: {sections})"
                )

    walk(data, "")
    return found


def config_path() -> Path:
    """The settings file: SEGFLOW_CONFIG, else segflow.toml in the working directory."""
    return Path(os.environ.get("SEGFLOW_CONFIG", CONFIG_FILE))


def load_file(path: Path, sections: dict[str, Any] | None = None) -> dict:
    """The settings in ``path``: its [segflow] table, else the whole file.

    With a [segflow] table, other top-level tables belong to other tools (a
    pyproject-like layout) and are left alone, unless one is a plugin section
    from ``sections``: that is an error saying where it belongs.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {not_utf8(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "segflow" not in raw:
        return raw
    data = raw["segflow"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [segflow] must be a table")
    for key in raw.keys() - {"segflow"}:
        if any(s == key or s.startswith(key + ".") for s in sections or {}):
            raise ConfigError(
                f"{path}: [{key}] is outside [segflow]; write it as [segflow.{key}] "
                "(or drop the [segflow] table and keep everything at the top)"
            )
    return data


def load_settings(db: str | None = None) -> Settings:
    values: dict = {}
    source = "default"
    path = config_path()
    # Plugin sections can only come from the file; without one, no plugin need load.
    models = settings_sections() if path.is_file() else {}
    if path.is_file():
        values.update(load_file(path, models))
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
    core_keys = Settings.model_fields.keys() - {"plugin_settings"}
    sections = _plugin_sections(
        str(path), {k: v for k, v in values.items() if k not in core_keys}, models
    )
    try:
        settings = Settings(
            **{k: v for k, v in values.items() if k in core_keys}, plugin_settings=sections
        )
    except ValidationError as exc:
        field, msg = validation_reason(exc)
        raise ConfigError(f"{path}: field '{field}': {msg}") from None
    settings._source = source
    settings._path = str(path)
    # Every section now, so a bad value fails at once, whichever command runs.
    for section in sections:
        settings.plugin(section)
    return settings


def write_config(path: Path, database_url: str) -> bool:
    """Write a starter segflow.toml with a fresh secret key; False when one exists."""
    if path.exists():
        return False
    path.write_text(
        f'[segflow]\ndatabase_url = "{database_url}"\n'
        f'secret_key = "{secrets.token_urlsafe(32)}"  # signs tracking links; keep it private\n'
    )
    return True


def init_project(database_url: str, config: Path | None) -> tuple[str, bool]:
    """Create the database at the latest schema and, when ``config`` is given and
    does not exist, a starter settings file there.

    Returns the database URL fit to print (no password) and whether the file was written.
    """
    from core.db import make_engine, upgrade

    engine = make_engine(database_url)
    upgrade(engine)
    wrote = write_config(config, database_url) if config is not None else False
    return engine.url.render_as_string(hide_password=True), wrote
