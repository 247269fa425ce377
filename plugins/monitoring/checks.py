"""The built-in checks: thin over core's functions, thresholds from ``[monitor]``."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from core import (
    Alert,
    MonitorCheck,
    MonitorSettings,
    drift_alerts,
    freshness_alerts,
    misclassified_segments,
    quality_alerts,
)


def _config(settings: Any) -> MonitorSettings:
    return settings.plugin("monitor")


def _drift(engine: Any, settings: Any, day: date, now: datetime) -> list[Alert]:
    c = _config(settings)
    return drift_alerts(
        engine,
        day,
        k=c.drift_k,
        days=c.drift_days,
        min_days=c.drift_min_days,
        min_mad=c.drift_min_mad,
        min_mad_share=c.drift_min_mad_share,
    )


def _freshness(engine: Any, settings: Any, day: date, now: datetime) -> list[Alert]:
    return freshness_alerts(engine, now, _config(settings).lag_for)


def _quality(engine: Any, settings: Any, day: date, now: datetime) -> list[Alert]:
    return quality_alerts(engine, day, now, _config(settings))


def _misclassified(engine: Any, settings: Any, day: date, now: datetime) -> list[Alert]:
    return misclassified_segments(engine, now)


def checks() -> list[MonitorCheck]:
    """The built-in checks."""
    return list(CHECKS)


CHECKS = (
    MonitorCheck(
        "segment_drift",
        "a segment's size outside median +- k x MAD of the days before",
        _drift,
    ),
    MonitorCheck(
        "source_freshness",
        "a source/type whose newest event is older than its allowed lag",
        _freshness,
    ),
    MonitorCheck(
        "data_quality",
        "future timestamps, duplicate / reject spikes, events lacking a field a segment sums",
        _quality,
    ),
    MonitorCheck(
        "misclassified_segment",
        "a segment whose emailed members respond no better than its holdout or others",
        _misclassified,
    ),
)
