"""The connectors an erasure is sent to: every ``[[connectors]]`` entry whose
kind can delete people (``SyncApi.delete``).

The entries are the sync plugin's settings; each resolves itself
(``entry.resolve()`` -> target and connector), so the core needs no plugin.
"""

from __future__ import annotations

from typing import Any

from core.types import EspConnector, SyncTarget, UsageError

SECTION = "connectors"


def deleting_connectors(
    settings: Any,
) -> tuple[list[tuple[SyncTarget, EspConnector]], dict[str, str]]:
    """(resolved targets that delete, {name: why not reachable now} of those
    that delete but cannot be resolved, such as an unset key variable)."""
    from core.plugins import esp_connectors, settings_sections

    if SECTION not in settings_sections():
        return [], {}
    known = esp_connectors()
    targets: list[tuple[SyncTarget, EspConnector]] = []
    unresolved: dict[str, str] = {}
    for entry in settings.plugin(SECTION):
        connector = known.get(entry.kind)
        if connector is None or connector.sync is None or connector.sync.delete is None:
            continue
        try:
            targets.append(entry.resolve())
        except UsageError as exc:
            unresolved[entry.name] = str(exc)
    return targets, unresolved
