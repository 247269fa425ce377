"""Built-in plugin: the monitoring checks ``segment_drift``, ``source_freshness``,
``data_quality``, ``misclassified_segment``, and the
``[monitor]`` settings they read, registered like any plugin's (the functions
are core's, ``core.monitoring``)."""

from __future__ import annotations

from core import hookimpl


@hookimpl
def register_settings(register) -> None:
    from core import MonitorSettings

    register("monitor", MonitorSettings)


@hookimpl
def register_monitor_checks(register) -> None:
    from plugins.monitoring.checks import checks

    for check in checks():
        register(check)
