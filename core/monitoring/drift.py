"""Segment size drift: a day's size outside a robust band of the days before.

The band is median +- k x MAD (median absolute deviation) of the last
``days`` daily sizes before the day checked. Median and MAD ignore the odd
outlier day that would widen a mean +- standard deviation band. A MAD of 0
(a segment that held steady) would make any change an alert, so the MAD
used is at least ``min_mad`` people and ``min_mad_share`` of the median (half a percent).
With fewer than ``min_days`` days of history there is no band and no alert.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy.engine import Engine

from core.monitoring.alerts import Alert
from core.monitoring.history import size_series

CHECK = "segment_drift"


@dataclass(frozen=True)
class Band:
    """The robust band of a history: median, the MAD used (after its floor),
    k, and how many days it was taken over."""

    median: float
    mad: float
    k: float
    days: int

    @property
    def low(self) -> float:
        return self.median - self.k * self.mad

    @property
    def high(self) -> float:
        return self.median + self.k * self.mad

    def deviation(self, value: float) -> float:
        """How many MADs ``value`` is from the median."""
        return abs(value - self.median) / self.mad

    def describe(self) -> str:
        return (
            f"median {_num(self.median)} +- {_num(self.k)} x MAD {_num(self.mad)} "
            f"over {self.days} days"
        )


def robust_band(
    values: Sequence[float],
    k: float = 4.0,
    min_days: int = 7,
    min_mad: float = 1.0,
    min_mad_share: float = 0.005,
) -> Band | None:
    """median +- k x MAD of ``values``, or None when there are fewer than
    ``min_days`` of them."""
    if len(values) < max(min_days, 1):
        return None
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    floor = max(min_mad, min_mad_share * abs(median))
    return Band(float(median), float(max(mad, floor)), k, len(values))


def check_drift(
    segment: str,
    sizes: Iterable[tuple[date, int]],
    day: date,
    *,
    k: float = 4.0,
    days: int = 14,
    min_days: int = 7,
    min_mad: float = 1.0,
    min_mad_share: float = 0.005,
) -> Alert | None:
    """An Alert when ``segment``'s size on ``day`` is outside the band of
    the ``days`` days before it (``sizes``: (day, size) pairs, any order).

    None when it is inside, when ``day`` has no size, or when fewer than
    ``min_days`` of the previous ``days`` days have one. Beyond twice the
    band's half-width the alert is critical, else a warning.
    """
    by_day = dict(sizes)
    if day not in by_day:
        return None
    start = day - timedelta(days=days)
    history = [size for d, size in sorted(by_day.items()) if start <= d < day]
    band = robust_band(history, k, min_days, min_mad, min_mad_share)
    if band is None:
        return None
    size = by_day[day]
    if band.low <= size <= band.high:
        return None
    deviation = band.deviation(size)
    direction = "above" if size > band.high else "below"
    return Alert(
        CHECK,
        segment,
        "critical" if deviation > 2 * k else "warning",
        f"{segment}: {size:,} on {day.isoformat()}, outside {_num(band.low)}-{_num(band.high)} "
        f"({band.describe()})",
        day,
        {
            "size": size,
            "direction": direction,
            "median": band.median,
            "mad": band.mad,
            "k": k,
            "low": band.low,
            "high": band.high,
            "days": band.days,
            "deviation": round(deviation, 2),
        },
    )


def drift_alerts(
    engine: Engine,
    day: date,
    *,
    k: float = 4.0,
    days: int = 14,
    min_days: int = 7,
    min_mad: float = 1.0,
    min_mad_share: float = 0.005,
) -> list[Alert]:
    """``check_drift`` for every segment with a size stored on ``day``."""
    series = size_series(engine, since=day - timedelta(days=days), until=day)
    found = (
        check_drift(
            segment,
            sizes,
            day,
            k=k,
            days=days,
            min_days=min_days,
            min_mad=min_mad,
            min_mad_share=min_mad_share,
        )
        for segment, sizes in sorted(series.items())
    )
    return [a for a in found if a is not None]


def _num(value: float) -> str:
    """1,000 or 2.5: thousands separated, decimals only when there are any."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
