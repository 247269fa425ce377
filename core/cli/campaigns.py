"""``segflow campaigns``: campaign results, each arm against its holdout."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from core.cli.context import AsOf, Group, Json, obj, out, parse_as_of
from core.types import UsageError

if TYPE_CHECKING:
    from core.monitoring.campaigns import CampaignResult

app = typer.Typer(
    help="Campaign results and lift against holdouts.", no_args_is_help=True, cls=Group
)


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _interval(lift: dict[str, Any] | None, metric: str, scale: float) -> str:
    if not lift or metric not in lift:
        return ""
    iv = lift[metric]["difference"]
    return f"{iv.estimate * scale:+.2f} [{iv.low * scale:+.2f}, {iv.high * scale:+.2f}]"


def _table(result: CampaignResult) -> Table:
    about = [result.kind]
    if result.segment:
        about.append(f"segment {result.segment}")
    days = result.window.total_seconds() / 86400
    title = f"{result.campaign} ({', '.join(about)}; {days:g}-day window)"
    emails = any(a.counts["sent"] for a in result.arms)
    heads = ["arm", "n"] + (["sent", "opened", "clicked"] if emails else [])
    table = Table(
        *heads, "visit", "conv.", "rev./person", "visit lift pt", "conv. lift pt", "rev. lift",
        title=title,
    )  # fmt: skip
    for arm in result.arms:
        r = arm.rates
        name = f"{arm.arm} (holdout)" if arm.holdout else arm.arm
        mail = [f"{arm.counts[c]:,}" for c in ("sent", "opened", "clicked")] if emails else []
        table.add_row(
            name,
            f"{arm.n:,}",
            *mail,
            _pct(r["visit_rate"]),
            _pct(r["conversion_rate"]),
            f"{arm.revenue_per_person:.2f}",
            _interval(arm.lift, "visit_rate", 100),
            _interval(arm.lift, "conversion_rate", 100),
            _interval(arm.lift, "revenue_per_person", 1),
        )
    return table


def _window(text: str) -> timedelta:
    from core.segments.language import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None


@app.command("refresh")
def refresh_cmd(
    ctx: typer.Context,
    window: Annotated[
        str, typer.Option("--window", help="Attribution window after assignment, like 14d.")
    ] = "14d",
    as_json: Json = False,
) -> None:
    """Bring the stored campaign outcomes up to date: recompute only the
    participants who are new, changed, or have events or messages since the last
    refresh (the monitor flow runs this daily)."""
    from core.monitoring.outcomes import refresh_outcomes

    report = refresh_outcomes(obj(ctx).engine(), _window(window))
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    out.print(
        f"{report.participants:,} participants stored, {report.recomputed:,} recomputed, "
        f"{report.dropped:,} dropped"
    )


@app.command("results")
def results_cmd(
    ctx: typer.Context,
    campaign: Annotated[
        str | None,
        typer.Option("--campaign", help="One campaign by name (a workflow, a send, an import)."),
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="Attribution window after assignment, like 14d.")
    ] = "14d",
    segment: Annotated[
        str | None, typer.Option("--segment", help="Only campaigns aimed at this segment.")
    ] = None,
    as_of: AsOf = None,
    as_json: Json = False,
) -> None:
    """Per campaign and arm: n, sent, opened, clicked, visit and conversion rates,
    revenue per person, and the lift against the holdout with 95% intervals.
    Brings the stored outcomes up to date first (``campaigns refresh``), then
    aggregates them; ``--as-of`` recomputes from the events as they were then."""
    from core.monitoring.campaigns import campaign_results
    from core.monitoring.outcomes import current_results

    span = _window(window)
    engine = obj(ctx).engine()
    if as_of:
        results = campaign_results(
            engine, campaign=campaign, window=span, segment=segment, as_of=parse_as_of(as_of)
        )
    else:
        results = current_results(engine, campaign=campaign, window=span, segment=segment)
    if as_json:
        out.print_json(json.dumps([r.as_dict() for r in results]))
        return
    if not results:
        out.print("no campaign has participants yet")
        return
    for result in results:
        out.print(_table(result))
    out.print(
        "lift: arm minus holdout, 95% interval in brackets (rates: Newcombe; "
        "revenue: bootstrap when zero-heavy or skewed, else Welch)"
    )
