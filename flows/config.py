"""``[deploy]`` in segflow.toml: what ``segflow deploy`` serves, and when.

Light on purpose (pydantic alone, no Prefect): the settings are validated
whenever a command loads segflow.toml, so a bad schedule is an error naming
its key at once, not when the deployment is served.

    [deploy]
    name = "segflow"              # deployment name: "segment/segflow", ...
    timezone = "UTC"              # of the cron schedules
    segments = "segments"         # folders of definitions the flows save first
    scores = "scores"             # (default: the examples/ folders)
    workflows = "workflows"

    [deploy.schedules]            # a cron expression, an interval (30s, 5m, 1h, 1d),
    segment = "*/5 * * * *"       # or false: served, run only when asked
    send = "1h"
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_SEGMENTS = EXAMPLES / "segments"
EXAMPLE_SCORES = EXAMPLES / "scores"
EXAMPLE_WORKFLOWS = EXAMPLES / "workflows"

CRON_ALIASES = {
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
}
MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (field, lowest, highest, names), in the order of a cron expression.
CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


def check_cron(expression: str) -> str:
    """``expression`` if it is a five-field cron expression (numbers, names of
    months and days, ``*``, ranges, lists, steps) or an alias such as
    ``@daily``; else a ValueError saying which field is wrong."""
    if expression in CRON_ALIASES:
        return expression
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(
            f"{expression!r}: a cron expression has 5 fields (minute hour day-of-month "
            f"month day-of-week), this one {len(fields)}"
        )
    for text, (what, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        for item in text.split(","):
            base, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"{expression!r}: {what} step {step!r} is not a positive number")
            if base == "*":
                continue
            bounds = base.split("-")
            values = [names.get(b.lower()) if not b.isdigit() else int(b) for b in bounds]
            if len(bounds) > 2 or any(v is None or not low <= v <= high for v in values):
                raise ValueError(f"{expression!r}: {what} {base!r} is not in {low}-{high}")
            if len(values) == 2 and values[0] > values[1]:
                raise ValueError(f"{expression!r}: {what} range {base!r} runs backwards")
    return expression


def check_schedule(value: str | Literal[False]) -> str | Literal[False]:
    if value is False:
        return value
    if " " in value.strip() or value.startswith("@"):
        return check_cron(value.strip())
    from core import parse_duration

    try:
        parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a cron expression (5 fields) nor an interval (30s, 5m, 1h, 1d)"
        ) from None
    return value


def schedule_interval(value: str) -> timedelta | None:
    """The interval of a schedule value, None for a cron expression."""
    if " " in value.strip() or value.startswith("@"):
        return None
    from core import parse_duration

    return parse_duration(value)


Schedule = Annotated[str | Literal[False], AfterValidator(check_schedule)]


class Schedules(BaseModel):
    """When each deployment runs. Segments and the tick run at the data's
    refresh cadence, the tick a minute after each segment run so it sees the
    entries that run made; sends hourly; recommendations, then scores, daily,
    before anyone reads them in the morning (UTC)."""

    model_config = ConfigDict(extra="forbid")

    # [[sources.poll]] feeds; served only when some are configured.
    ingest: Schedule = "*/5 * * * *"
    segment: Schedule = "*/5 * * * *"
    automate: Schedule = "1-59/5 * * * *"
    send: Schedule = "0 * * * *"
    # [[connectors]]; served only when some are configured.
    sync: Schedule = "*/15 * * * *"
    recommend: Schedule = "0 1 * * *"
    scores: Schedule = "0 2 * * *"
    # The pipeline is served without a schedule: run on demand (or by the demo).
    pipeline: Schedule = False
    # The monitoring checks, daily after the scores, before anyone reads the alerts.
    monitor: Schedule = "0 3 * * *"


class DeploySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Deployments are "<flow>/<name>": one name per installation on a shared Prefect server.
    name: str = Field(default="segflow", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    timezone: str = "UTC"
    segments: Path = EXAMPLE_SEGMENTS
    scores: Path = EXAMPLE_SCORES
    workflows: Path = EXAMPLE_WORKFLOWS
    # Flow runs at once in the serving process (None: no limit).
    limit: int | None = Field(default=None, ge=1)
    schedules: Schedules = Schedules()

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
