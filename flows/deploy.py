"""Deployments of the flows, with their schedules, and serving them.

    build_deployments(settings) -> one RunnerDeployment per flow ([deploy] in segflow.toml)
    serve_deployments(settings)  -> serve them (as prefect.serve) until stopped

``segflow deploy`` calls these. Serving registers the deployments with the
Prefect API (PREFECT_API_URL); that server's scheduler creates the runs, and
the serving process runs them, each in a subprocess with this process's
environment and working directory (so the runs read the same segflow.toml).
Stopping it (Ctrl-C, SIGTERM) pauses the schedules, so no runs pile up
while nothing serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import Any

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval, Schedule
from sqlalchemy.engine import Engine

from core.config import Settings
from flows.automate import automate
from flows.config import DeploySettings, schedule_interval
from flows.ingest import ingest_polls, poll_names
from flows.monitor import monitor
from flows.pipeline import pipeline
from flows.recommend import recommend
from flows.scores import scores
from flows.segment import segment
from flows.send import send
from flows.sync import sync

SECTION = "deploy"
TAGS = ["segflow"]


@dataclass(frozen=True)
class Planned:
    """One deployment to serve: which flow, when ([deploy.schedules] key), with what."""

    key: str
    flow: Flow
    parameters: dict[str, Any]


def planned(settings: Settings) -> list[Planned]:
    """The deployments ``[deploy]`` asks for, in the order the pipeline runs them."""
    deploy: DeploySettings = settings.plugin(SECTION)
    folders = {
        "segments": str(deploy.segments.resolve()),
        "scores": str(deploy.scores.resolve()),
        "workflows": str(deploy.workflows.resolve()),
    }
    plan = []
    # Feeds only when some are configured: with none, the flow has nothing to do.
    if poll_names(settings):
        plan.append(Planned("ingest", ingest_polls, {}))
    plan += [
        Planned("recommend", recommend, {}),
        Planned("scores", scores, {"directory": folders["scores"]}),
        Planned("segment", segment, {"directory": folders["segments"]}),
        Planned("automate", automate, {"directory": folders["workflows"]}),
        Planned("send", send, {}),
        *([Planned("sync", sync, {})] if _syncs(settings) else []),
        Planned("monitor", monitor, {}),
        Planned(
            "pipeline",
            pipeline,
            {
                "scores_dir": folders["scores"],
                "segments_dir": folders["segments"],
                "workflows_dir": folders["workflows"],
            },
        ),
    ]
    return plan


def _syncs(settings: Settings) -> bool:
    """Whether some [[connectors]] entry syncs (the sync plugin may not be loaded)."""
    from core.plugins import settings_sections

    if "connectors" not in settings_sections():
        return False
    from plugins.sync.config import configured

    return bool(configured(settings))


def schedule_of(value: str | bool, timezone: str) -> Schedule | None:
    """A [deploy.schedules] value as a Prefect schedule; None for false (on demand)."""
    if value is False or value is True:
        return None
    interval = schedule_interval(value)
    if interval is not None:
        return Interval(interval, timezone=timezone)
    return Cron(value, timezone=timezone)


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """One deployment per planned flow, named ``<flow>/<[deploy] name>``, with
    its schedule (none for those set to false) and its parameters."""
    deploy: DeploySettings = settings.plugin(SECTION)
    built = []
    for item in planned(settings):
        schedule = schedule_of(getattr(deploy.schedules, item.key), deploy.timezone)
        built.append(
            item.flow.to_deployment(
                name=deploy.name,
                schedules=[schedule] if schedule is not None else None,
                parameters=item.parameters,
                tags=TAGS,
            )
        )
    return built


def describe(deployment: RunnerDeployment) -> dict[str, Any]:
    """What ``segflow deploy`` prints for a deployment: name, schedule, parameters."""
    schedules = []
    for entry in deployment.schedules or []:
        s = entry.schedule
        if getattr(s, "cron", None):
            schedules.append(f"cron {s.cron} ({s.timezone or 'UTC'})")
        elif getattr(s, "interval", None):
            schedules.append(f"every {s.interval}")
    return {
        "deployment": f"{deployment.flow_name}/{deployment.name}",
        "schedule": ", ".join(schedules) or "on demand",
        "parameters": deployment.parameters,
    }


def record_serving(engine: Engine, name: str, rows: list[dict[str, Any]]) -> None:
    """The audit record of a ``segflow deploy``: which deployments, on which
    schedules, are about to be served (parameters left out: they hold paths)."""
    from core.audit import record

    served = {row["deployment"]: row["schedule"] for row in rows}
    with engine.begin() as conn:
        record(conn, None, "deploy.serve", name, {"deployments": served})


def serve_deployments(deployments: list[RunnerDeployment], limit: int | None = None) -> None:
    """Serve until stopped (Ctrl-C or SIGTERM), then pause the schedules.

    This is ``prefect.serve`` with the registration guarded: Prefect's runner
    takes over SIGTERM only once it starts, and pauses only if stopped after
    that, while the server may already be scheduling runs of the deployments
    registered so far. A signal during registration is held until the
    deployment being registered is in, then serving stops; whatever got
    registered is paused.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True, limit=limit)
    held: list[int] = []
    hold = signal.signal(signal.SIGTERM, lambda signum, _: held.append(signum))
    previous_int = signal.signal(signal.SIGINT, lambda signum, _: held.append(signum))
    try:
        for deployment in deployments:
            if held:
                break
            runner.add_deployment(deployment)
        signal.signal(signal.SIGINT, previous_int)
        if not held:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt, SystemExit, TerminationSignal):
                asyncio.run(runner.start())
    finally:
        signal.signal(signal.SIGTERM, hold)
        signal.signal(signal.SIGINT, previous_int)
    pause_deployments(deployments)


def pause_deployments(deployments: list[RunnerDeployment]) -> None:
    """Pause each registered deployment's schedules; unregistered ones have none."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in deployments:
            try:
                found = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except ObjectNotFound:
                continue
            if not found.paused:
                client.pause_deployment(found.id)
