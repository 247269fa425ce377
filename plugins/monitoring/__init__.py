"""Built-in plugin: the monitoring checks ``segment_drift``, ``source_freshness``
and ``data_quality``, and the ``[monitor]`` settings they read, registered
like any plugin's (the functions are core's, ``core.monitoring``)."""

from __future__ import annotations

from core import hookimpl


@hookimpl
def register_settings(register) -> None:
    from core import MonitorSettings

    register("monitor", MonitorSettings)


@hookimpl
def register_monitor_checks(register) -> None:
    from plugins.monitoring.checks import CHECKS

    for check in CHECKS:
        register(check)
