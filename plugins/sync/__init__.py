"""Sync to ESPs and CRMs as a plugin: the ``[[connectors]]`` settings,
``segflow sync run | status | verify`` and the workflows' ``sync`` action.

The engine is core's (``core.run_sync``, ``core.verify_sync``); the
connectors (klaviyo, mailchimp, hubspot) are ESP connectors with a ``sync``
API (``register_esp_connectors``).
"""

from __future__ import annotations

import typer

from core import hookimpl


@hookimpl
def register_settings(register) -> None:
    from plugins.sync.config import SECTION, ConnectorConfig

    register(SECTION, list[ConnectorConfig])


@hookimpl
def register_commands(cli) -> None:
    from plugins.sync.commands import sync_app

    cli.add_command(typer.main.get_command(sync_app), "sync")


@hookimpl
def register_actions(register) -> None:
    from plugins.sync.action import SYNC

    register(SYNC)
