"""The plugin manager: built-in plugins first, then the ``segflow`` entry points.

It is fetched only at the edges (CLI commands, the HTTP app, flows, hook
implementations): they build what the library functions take - condition
kinds, scoring models, the segment-change hook - with the helpers at the end
of this module and pass it in.

Built-in plugins are loaded as entry points too (made from DEFAULT_PLUGINS),
through the same ``_load`` as installed ones, so they cannot rely on anything a
third-party plugin could not.

``SEGFLOW_LOAD_PLUGINS`` (comma-separated plugin names, as shown by
``segflow plugins``) restricts loading to those plugins; set it empty to load
none, which tests use to check a core without plugins.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from functools import cache
from typing import TYPE_CHECKING, Any

import pluggy

from core import hookspecs
from core.types import (
    Action,
    Change,
    EspConnector,
    EventSource,
    MonitorCheck,
    Recommender,
    ScoringModel,
    StoredEvent,
    Trigger,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from core.segments.kinds import ConditionKinds

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.sources.files",
    "plugins.sources.segment_spec",
    "plugins.sources.webhooks",
    "plugins.sources.ga4",
    "plugins.sources.polling",
    "plugins.sources.redis_stream",
    "plugins.sources.tracking",
    "plugins.segments.realtime",
    "plugins.scoring.points",
    "plugins.scoring.rfm",
    "plugins.scoring.predictive",
    "plugins.demo",
    "plugins.catalog.events",
    "plugins.recommend",
    "plugins.esp.outbox",
    "plugins.esp.smtp",
    "plugins.esp.klaviyo",
    "plugins.esp.fakes",
    "plugins.esp.mailchimp",
    "plugins.esp.hubspot",
    "plugins.automation",
    "plugins.actions",
    "plugins.sync",
    "plugins.monitoring",
    # `segflow deploy` and `segflow server`, from the Prefect shell (flows/).
    "flows.commands",
)
# Settings sections: dotted snake_case names, e.g. "sources.poll".
SECTION_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def _allowed() -> set[str] | None:
    raw = os.environ.get("SEGFLOW_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


# plugin name -> distribution version, for plugins loaded from entry points.
_versions: dict[str, str] = {}


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    """DEFAULT_PLUGINS as entry points of the ``segflow`` group (no distribution)."""
    return [
        importlib.metadata.EntryPoint(name=module, value=module, group="segflow")
        for module in DEFAULT_PLUGINS
    ]


def _load(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    if pm.get_plugin(ep.name) is not None:
        return  # an installed plugin may not replace a built-in one of the same name
    pm.register(ep.load(), name=ep.name)
    if ep.dist is not None:
        _versions[ep.name] = ep.dist.version


def build_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("segflow")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    for ep in (*builtin_entry_points(), *importlib.metadata.entry_points(group="segflow")):
        if allowed is None or ep.name in allowed:
            _load(pm, ep)
    # A hookimpl whose name is no hook (a typo) would never be called: refuse it.
    pm.check_pending()
    return pm


@cache
def get_manager() -> pluggy.PluginManager:
    return build_manager()


def events_ingested_hook(
    engine: Engine, pm: pluggy.PluginManager | None = None, *, bulk: bool = False
) -> Callable[[Sequence[StoredEvent]], None] | None:
    """What ingestion calls after each committed batch (its ``on_stored``):
    ``on_events_ingested``; None when no plugin implements it, so ingestion
    need not build the stored events at all. ``bulk``: for a bulk load that
    also calls ``profiles_loaded_hook``, so plugins implementing
    ``on_profiles_loaded`` are left out here (they get that call instead)."""
    pm = pm or get_manager()
    hook = pm.hook.on_events_ingested
    if bulk:
        instead = {impl.plugin for impl in pm.hook.on_profiles_loaded.get_hookimpls()}
        if instead:
            hook = pm.subset_hook_caller("on_events_ingested", remove_plugins=instead)
    if not hook.get_hookimpls():
        return None

    def notify(events: Sequence[StoredEvent]) -> None:
        hook(events=events, engine=engine)

    return notify


def profiles_loaded_hook(
    engine: Engine, pm: pluggy.PluginManager | None = None
) -> Callable[[AbstractSet[int]], None] | None:
    """What a bulk load calls once at its end (``ingest``'s ``on_loaded``):
    ``on_profiles_loaded``; None when no plugin implements it."""
    hook = (pm or get_manager()).hook.on_profiles_loaded
    if not hook.get_hookimpls():
        return None

    def notify(profile_ids: AbstractSet[int]) -> None:
        hook(profile_ids=profile_ids, engine=engine)

    return notify


def reset() -> None:
    """Forget the cached manager (after registering test plugins or changing the env)."""
    get_manager.cache_clear()


def plugin_table(pm: pluggy.PluginManager | None = None) -> list[dict]:
    pm = pm or get_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": name,
                "builtin": name in DEFAULT_PLUGINS,
                "version": _versions.get(name),
                "hooks": hooks,
            }
        )
    return rows


def collect(
    hook: str,
    what: str,
    key: Callable[[Any], str],
    pm: pluggy.PluginManager | None = None,
    reserved: Iterable[str] = (),
) -> dict[str, Any]:
    """Call a ``register_*`` hook and gather what plugins register, by name.

    Two plugins claiming one name, or a plugin taking a ``reserved`` (built-in)
    name, is an error naming it.
    """
    pm = pm or get_manager()
    reserved = set(reserved)
    found: dict[str, Any] = {}

    def register(item: Any) -> None:
        name = key(item)
        if name in reserved:
            raise ValueError(f"{what} {name!r} is built in; choose another name")
        if name in found:
            raise ValueError(f"{what} {name!r} is registered twice")
        found[name] = item

    getattr(pm.hook, hook)(register=register)
    return found


def event_sources(pm: pluggy.PluginManager | None = None) -> dict:
    """All registered event sources by name."""
    return collect("register_event_sources", "event source", lambda s: s.name, pm)


def file_sources(pm: pluggy.PluginManager | None = None) -> dict[str, EventSource]:
    """The event sources that read files (what ``import_file`` chooses from)."""
    return {name: s for name, s in event_sources(pm).items() if s.read is not None}


def condition_kinds(pm: pluggy.PluginManager | None = None) -> ConditionKinds:
    """The built-in condition kinds plus every plugin's (``register_conditions``)."""
    from core.segments.kinds import ConditionKinds

    return ConditionKinds.from_plugins(pm or get_manager())


def scoring_models(pm: pluggy.PluginManager | None = None) -> dict[str, ScoringModel]:
    """Every registered scoring model kind by name (``register_scoring_models``)."""
    return collect("register_scoring_models", "scoring model", lambda m: m.kind, pm)


def esp_connectors(pm: pluggy.PluginManager | None = None) -> dict[str, EspConnector]:
    """Every registered email service connector by name (``register_esp_connectors``)."""
    return collect("register_esp_connectors", "ESP connector", lambda c: c.name, pm)


def segment_change_hook(
    engine: Engine, pm: pluggy.PluginManager | None = None
) -> Callable[[Sequence[Change]], None]:
    """What segment runs call with their committed changes: ``on_segment_change``."""
    hook = (pm or get_manager()).hook.on_segment_change

    def notify(changes: Sequence[Change]) -> None:
        hook(changes=changes, engine=engine)

    return notify


def settings_sections(pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Plugins' settings sections (``register_settings``): section name -> model."""
    pm = pm or get_manager()
    found: dict[str, Any] = {}

    def register(section: str, model: Any) -> None:
        if not isinstance(section, str) or not SECTION_NAME.match(section):
            raise ValueError(f"settings section {section!r}: use dotted snake_case names")
        if section in found:
            raise ValueError(f"settings section {section!r} is registered twice")
        for other in found:
            if other.startswith(section + ".") or section.startswith(other + "."):
                raise ValueError(f"settings sections {other!r} and {section!r} overlap")
        found[section] = model

    pm.hook.register_settings(register=register)
    return found


def plugin_report(pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """What ``segflow plugins`` shows: plugins, event sources, settings sections."""
    pm = pm or get_manager()
    return {
        "plugins": plugin_table(pm),
        "event_sources": [
            {"name": s.name, "suffixes": list(s.suffixes), "description": s.description}
            for s in event_sources(pm).values()
        ],
        "settings": {
            section: model.__name__ if isinstance(model, type) else str(model)
            for section, model in settings_sections(pm).items()
        },
    }


def recommenders(pm: pluggy.PluginManager | None = None) -> dict[str, Recommender]:
    """Every registered recommender by name (``register_recommenders``)."""
    return collect("register_recommenders", "recommender", lambda r: r.name, pm)


def triggers(pm: pluggy.PluginManager | None = None) -> dict[str, Trigger]:
    """Every registered workflow trigger by name (``register_triggers``)."""
    return collect("register_triggers", "trigger", lambda t: t.name, pm)


def actions(pm: pluggy.PluginManager | None = None) -> dict[str, Action]:
    """Every registered workflow action by name (``register_actions``)."""
    return collect(
        "register_actions", "action", lambda a: a.name, pm, reserved=("wait", "if", "split", "exit")
    )


def monitor_checks(pm: pluggy.PluginManager | None = None) -> dict[str, MonitorCheck]:
    """Every registered monitoring check by name (``register_monitor_checks``)."""
    return collect("register_monitor_checks", "monitor check", lambda c: c.name, pm)
