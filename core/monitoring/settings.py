"""``[monitor]`` in segflow.toml: the checks' thresholds and what an alert does.

    [monitor]
    drift_k = 4.0               # band: median +- k x MAD of the days before
    drift_days = 14             # ... over this many days
    drift_min_days = 7          # fewer days of history: no band, no alert
    freshness_lag = "1d"        # a source/type with no newer event alerts
    future_tolerance = "5m"     # an event this far after its receipt is in the future
    spike_k = 4.0               # duplicate / reject share above median + k x MAD
    spike_days = 14
    spike_min = 10              # ... and at least this many records in the day
    missing_share = 0.05        # share of a needed event type lacking a field a segment reads
    missing_window = "1d"       # ... among the events of this last period

    [monitor.freshness]         # per "source/type" or "source" (the most specific wins)
    "api/page_view" = "2h"
    files = "7d"

    [[monitor.on_alert]]        # a registered action, with its params, per new alert
    action = "webhook"
    url = "https://hooks.example.com/segflow"

The built-in monitoring plugin registers the section, like any plugin's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.segments.language import Duration

SECTION = "monitor"


class AlertAction(BaseModel):
    """One action every newly opened alert performs: ``action`` names a
    registered action (``webhook``), the other keys are its params."""

    model_config = ConfigDict(extra="allow")

    action: str = Field(min_length=1)

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MonitorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drift_k: float = Field(default=4.0, gt=0)
    drift_days: int = Field(default=14, ge=2, le=365)
    drift_min_days: int = Field(default=7, ge=2, le=365)
    drift_min_mad: float = Field(default=1.0, ge=0)
    drift_min_mad_share: float = Field(default=0.005, ge=0, le=1)
    freshness_lag: Duration = timedelta(days=1)
    freshness: dict[str, Duration] = {}
    future_tolerance: Duration = timedelta(minutes=5)
    spike_k: float = Field(default=4.0, gt=0)
    spike_days: int = Field(default=14, ge=2, le=365)
    spike_min: int = Field(default=10, ge=1)
    missing_share: float = Field(default=0.05, ge=0, le=1)
    missing_window: Duration = timedelta(days=1)
    on_alert: list[AlertAction] = []

    @model_validator(mode="after")
    def _min_days_fit(self) -> MonitorSettings:
        if self.drift_min_days > self.drift_days:
            raise ValueError(
                f"drift_min_days ({self.drift_min_days}) cannot exceed drift_days "
                f"({self.drift_days})"
            )
        return self

    def lag_for(self, source: str, type_: str) -> timedelta:
        """The freshness lag of ``source``/``type_``: its own, else its source's,
        else the default."""
        return self.freshness.get(
            f"{source}/{type_}", self.freshness.get(source, self.freshness_lag)
        )
