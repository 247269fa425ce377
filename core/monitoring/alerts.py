"""What a monitoring check reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any


@dataclass(frozen=True)
class Alert:
    """One finding of a check, about one subject on one UTC day."""

    # segment_drift | source_freshness | data_quality | misclassified_segment | a plugin's name
    check: str
    # What it is about: a segment name, "source/type", a campaign, ...
    subject: str
    severity: str  # warning | critical
    # One line a person reads, with the reason and its numbers.
    message: str
    day: date
    details: dict[str, Any] = field(default_factory=dict)


SEVERITIES = ("warning", "critical")
# The alerts.subject column's length.
SUBJECT_MAX_LENGTH = 255
# An on_alert action that still fails after this many runs is given up.
MAX_ACTION_ATTEMPTS = 5
ALERT_COLUMNS = [
    "id",
    "check",
    "subject",
    "severity",
    "message",
    "day",
    "first_seen",
    "last_seen",
    "resolved_at",
    "details",
    "actions",
]


@dataclass
class CheckReport:
    """What ``run_checks`` did: alerts opened, updated and resolved (ids per
    check), checks that failed (name -> reason), actions performed."""

    day: date
    checks: list[str] = field(default_factory=list)
    opened: dict[str, list[int]] = field(default_factory=dict)
    updated: dict[str, list[int]] = field(default_factory=dict)
    resolved: dict[str, list[int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "checks": self.checks,
            "opened": self.opened,
            "updated": self.updated,
            "resolved": self.resolved,
            "errors": self.errors,
            "actions": self.actions,
        }


def monitor_settings(settings: Any) -> Any:
    """The ``[monitor]`` section (core.monitoring.settings.MonitorSettings):
    its defaults when no loaded plugin registered it; a bad value is a
    ConfigError naming the file, section and key."""
    from core.monitoring.settings import SECTION, MonitorSettings
    from core.plugins import settings_sections

    if SECTION not in settings_sections():
        return MonitorSettings()
    return settings.plugin(SECTION)


def run_checks(
    engine: Any,
    settings: Any,
    today: date | None = None,
    *,
    now: datetime | None = None,
    checks: dict[str, Any] | None = None,
) -> CheckReport:
    """Run every registered check (``register_monitor_checks``) and store
    what fires: a new (check, subject) opens an alert, one still firing is
    updated (severity, message, day, details, last_seen), an open alert its
    check no longer returns is resolved. Then the ``[monitor] on_alert``
    actions of every alert with some still to do are performed.

    ``today``: the UTC day checked (default: the day of ``now``); ``now``
    (default: the current time, or the end of ``today`` when only that is
    given) is what lags are measured to. A check that raises is reported in
    ``errors`` and its open alerts stay as they are.
    """
    from core.plugins import monitor_checks

    config = monitor_settings(settings)
    actions = _configured_actions(config)
    if now is None:
        now = datetime.now(UTC)
        if today is not None and today < now.date():
            now = datetime.combine(today, time.max, UTC)
    day = today or now.astimezone(UTC).date()
    checks = monitor_checks() if checks is None else checks
    report = CheckReport(day, sorted(checks))
    for name in sorted(checks):
        try:
            found = _checked(name, checks[name].run(engine, settings, day, now))
        except Exception as exc:  # noqa: BLE001 - one failing check must not stop the others
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        opened, updated, resolved = store_alerts(engine, name, found, now, actions)
        report.opened[name], report.updated[name], report.resolved[name] = opened, updated, resolved
    report.actions = perform_alert_actions(engine, settings, actions, now)
    return report


def _checked(name: str, found: Any) -> list[Alert]:
    alerts = list(found)
    for a in alerts:
        if not isinstance(a, Alert):
            raise TypeError(f"returned {type(a).__name__}, not an Alert")
        if a.check != name:
            raise ValueError(f"returned an alert of check {a.check!r}, not {name!r}")
        if not a.subject or len(a.subject) > SUBJECT_MAX_LENGTH:
            raise ValueError(f"alert subject {a.subject!r}: 1-{SUBJECT_MAX_LENGTH} characters")
        if a.severity not in SEVERITIES:
            raise ValueError(
                f"alert {a.subject!r}: severity {a.severity!r} is not one of {SEVERITIES}"
            )
    return alerts


def _open_key(check: str, subject: str) -> str:
    return f"{check}\x1f{subject}"


def store_alerts(
    engine: Any,
    check: str,
    found: list[Alert],
    now: datetime,
    actions: list[tuple[str, Any]] | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Record what ``check`` found now, in one transaction: (ids opened,
    updated, resolved). A subject found twice keeps its last alert.
    ``actions``: the on_alert actions a newly opened alert is to perform."""
    import sqlalchemy as sa

    from core.db.tables import ALERTS

    latest = {a.subject: a for a in found}
    due = {
        f"{i}:{name}": {"status": "pending", "attempts": 0}
        for i, (name, _) in enumerate(actions or [])
    }
    opened: list[int] = []
    updated: list[int] = []
    with engine.begin() as conn:
        current = {
            subject: alert_id
            for alert_id, subject in conn.execute(
                sa.select(ALERTS.c.id, ALERTS.c.subject).where(
                    ALERTS.c.check == check, ALERTS.c.resolved_at.is_(None)
                )
            )
        }
        for subject, a in sorted(latest.items()):
            values = {
                "severity": a.severity,
                "message": a.message,
                "day": a.day,
                "details": a.details,
                "last_seen": now,
            }
            if subject in current:
                conn.execute(ALERTS.update().where(ALERTS.c.id == current[subject]).values(values))
                updated.append(current[subject])
                continue
            inserted = conn.execute(
                ALERTS.insert()
                .values(
                    check=check,
                    subject=subject,
                    open_key=_open_key(check, subject),
                    first_seen=now,
                    actions=due,
                    pending_actions=len(due),
                    **values,
                )
                .returning(ALERTS.c.id)
            )
            opened.append(inserted.scalar_one())
        gone = sorted(i for s, i in current.items() if s not in latest)
        if gone:
            conn.execute(
                ALERTS.update().where(ALERTS.c.id.in_(gone)).values(resolved_at=now, open_key=None)
            )
    return opened, updated, gone


def _configured_actions(config: Any) -> list[tuple[str, Any]]:
    """(action name, validated params) of each ``on_alert`` entry, checked
    against the registered actions; a ConfigError naming the entry otherwise."""
    if not config.on_alert:
        return []
    from pydantic import ValidationError

    from core.config import ConfigError
    from core.errors import validation_reason
    from core.plugins import actions as registered_actions

    known = registered_actions()
    out = []
    for i, entry in enumerate(config.on_alert):
        where = f"[monitor] on_alert[{i}]"
        action = known.get(entry.action)
        if action is None:
            names = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{where}: no action named {entry.action!r} (actions: {names})")
        try:
            action.validate(entry.params())
        except ValidationError as exc:
            field_name, msg = validation_reason(exc)
            raise ConfigError(f"{where}: {field_name + ': ' if field_name else ''}{msg}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        out.append((entry.action, entry.params()))
    return out


def alert_payload(row: Any) -> dict[str, Any]:
    """What an action is told about an alert (JSON-able)."""
    return {
        "id": row.id,
        "check": row.check,
        "subject": row.subject,
        "severity": row.severity,
        "message": row.message,
        "day": _as_day(row.day).isoformat(),
        "first_seen": row.first_seen.isoformat(),
        "details": row.details,
    }


def perform_alert_actions(
    engine: Any, settings: Any, actions: list[tuple[str, Any]], now: datetime
) -> dict[str, str]:
    """Perform the on_alert actions still due on any alert: each action of
    each alert once, by the idempotency key ``alert:ID:INDEX:ACTION``. An
    action answering ``retry`` (or raising) stays due for the next run, up to
    MAX_ACTION_ATTEMPTS; ``done``, ``skipped`` and ``failed`` are final.
    Actions that take a ``body`` (webhook) get the alert in ``body.alert``.
    Returns key -> status of what was performed now."""
    import sqlalchemy as sa

    from core.db.tables import ALERTS
    from core.plugins import actions as registered_actions
    from core.types import ActionCall, ActionResult

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ALERTS).where(ALERTS.c.pending_actions > 0).order_by(ALERTS.c.id)
        ).all()
    if not rows:
        return {}
    known = registered_actions()
    done: dict[str, str] = {}
    for row in rows:
        states = {k: dict(v) for k, v in row.actions.items()}
        for slot, state in sorted(states.items()):
            if state["status"] not in ("pending", "retry"):
                continue
            index, _, name = slot.partition(":")
            i = int(index)
            configured = actions[i][1] if i < len(actions) and actions[i][0] == name else None
            action = known.get(name)
            key = f"alert:{row.id}:{slot}"
            if configured is None or action is None:
                state.update(status="skipped", reason="no longer configured in [monitor] on_alert")
                done[key] = "skipped"
                continue
            params = dict(configured)
            params["body"] = {**params.get("body", {}), "alert": alert_payload(row)}
            try:
                validated = action.validate(params)
            except ValueError:
                validated = action.validate(configured)
            call = ActionCall(
                key=key,
                workflow="monitor",
                run_id=row.id,
                step=f"on_alert[{i}]",
                profile_id=0,
                params=validated,
                as_of=now,
                engine=engine,
                settings=settings,
            )
            try:
                if action.transactional:
                    with engine.begin() as conn:
                        result = action.perform(dataclasses.replace(call, conn=conn))
                else:
                    result = action.perform(call)
            except Exception as exc:  # noqa: BLE001 - tried again on the next run
                result = ActionResult("retry", f"{type(exc).__name__}: {exc}")
            attempts = state.get("attempts", 0) + 1
            status = result.status
            if status == "retry" and attempts >= MAX_ACTION_ATTEMPTS:
                status = "failed"
            state.update(status=status, attempts=attempts, reason=result.reason, at=now.isoformat())
            done[key] = status
        pending = sum(1 for s in states.values() if s["status"] in ("pending", "retry"))
        with engine.begin() as conn:
            conn.execute(
                ALERTS.update()
                .where(ALERTS.c.id == row.id)
                .values(actions=states, pending_actions=pending)
            )
    return done


def open_alerts(engine: Any, check: str | None = None) -> list[dict[str, Any]]:
    """The open alerts, critical first, then by check and subject; each a
    dict of ALERT_COLUMNS (times as datetimes, ``day`` a date)."""
    return _alert_rows(engine, open_only=True, check=check)


def alerts_frame(engine: Any, since: date | None = None, open_only: bool = False) -> Any:
    """Alerts as a pandas DataFrame (ALERT_COLUMNS), for the dashboards:
    open and resolved ones seen from ``since`` on (all when None)."""
    import pandas as pd

    rows = _alert_rows(engine, open_only=open_only, since=since)
    frame = pd.DataFrame.from_records(rows, columns=ALERT_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def _alert_rows(
    engine: Any, open_only: bool, check: str | None = None, since: date | None = None
) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from core.db.tables import ALERTS

    query = sa.select(*(ALERTS.c[c] for c in ALERT_COLUMNS))
    if open_only:
        query = query.where(ALERTS.c.resolved_at.is_(None))
    if check is not None:
        query = query.where(ALERTS.c.check == check)
    if since is not None:
        query = query.where(ALERTS.c.last_seen >= datetime.combine(since, time.min, UTC))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for r in rows:
        r["day"] = _as_day(r["day"])
    rank = {"critical": 0, "warning": 1}
    rows.sort(
        key=lambda r: (
            r["resolved_at"] is not None,
            rank.get(r["severity"], 2),
            r["check"],
            r["subject"],
        )
    )
    return rows


def _as_day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
