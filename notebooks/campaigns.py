"""segflow campaigns: what each campaign arm did against its holdout.

Per campaign and arm: people, sent, delivered, opened, clicked, visited,
converted (a purchase in the attribution window), unsubscribed and revenue,
as counts and rates, and each arm's lift against the holdout with its 95%
interval (difference of proportions; of means for revenue per person,
bootstrapped when the spend calls for it). Filter by workflow, segment and
assignment dates. Run it with `segflow dashboard campaigns`. The figures come
from the stored campaign outcomes (core.monitoring.outcomes, what `segflow
campaigns results` prints, kept current by `segflow campaigns refresh` and
the monitor flow), with a note of how fresh they are; for a window never
refreshed, from the events (core.monitoring.campaigns). The notebook never
writes: it only lays out and charts.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="segflow campaigns")


@app.cell
def _():
    from datetime import UTC, datetime, time, timedelta

    import altair as alt
    import marimo as mo
    import pandas as pd

    from core.config import load_settings
    from core.db import DatabaseError, open_db
    from core.monitoring.campaigns import campaign_results, lift_rows, participants
    from core.monitoring.outcomes import assignment_overview, overview_of, stored_results

    return (
        DatabaseError,
        UTC,
        alt,
        assignment_overview,
        campaign_results,
        datetime,
        lift_rows,
        load_settings,
        mo,
        open_db,
        overview_of,
        participants,
        pd,
        stored_results,
        time,
        timedelta,
    )


@app.cell
def _(DatabaseError, load_settings, mo, open_db):
    database_url = load_settings().database_url
    try:
        # Read-only dashboard: never migrate someone's database from here.
        engine = open_db(database_url, auto_upgrade=False)
    except DatabaseError as _exc:
        engine = None
        _problem = str(_exc)
    mo.stop(
        engine is None,
        mo.callout(mo.md(f"**Cannot open the database.** {_problem}"), kind="danger")
        if engine is None
        else None,
    )
    return (engine,)


@app.cell
def _(assignment_overview, engine, mo, overview_of, participants):
    # Everyone assigned to any campaign: what the filters offer (stored, else
    # from the events when the outcomes were never refreshed).
    assigned = assignment_overview(engine)
    if not assigned.people:
        with engine.connect() as _conn:
            assigned = overview_of(participants(_conn))
    mo.stop(
        not assigned.people,
        mo.vstack(
            [
                mo.md("# segflow campaigns"),
                mo.callout(
                    mo.md(
                        "**No campaigns yet.** Results appear once people are assigned: "
                        "a workflow with a split and a holdout (`segflow workflows run-tick`), "
                        "a `segflow send`, or imported assignments "
                        "(`segflow import --map examples/mappings/hillstrom.yaml ...`)."
                    ),
                    kind="warn",
                ),
            ]
        ),
    )
    return (assigned,)


@app.cell
def _(assigned, mo, timedelta):
    _workflows = assigned.workflows
    _segments = assigned.segments
    _first = assigned.first.date()
    _last = assigned.last.date()
    workflow = mo.ui.dropdown(options=["(all)", *_workflows], value="(all)", label="Workflow")
    segment = mo.ui.dropdown(options=["(all)", *_segments], value="(all)", label="Segment")
    # The last 30 days of assignments by default: a store with months of weekly
    # campaigns would otherwise weigh every one of them on opening.
    _from = max(_first, _last - timedelta(days=29))
    dates = mo.ui.date_range(
        start=_first, stop=_last, value=(_from, _last), label="Assigned between (UTC)"
    )
    window = mo.ui.slider(1, 60, value=14, step=1, label="Attribution window (days)")
    mo.vstack(
        [
            mo.md(
                f"# segflow campaigns\n\n{assigned.campaigns:,} campaigns, "
                f"{assigned.people:,} people assigned from {_first} to {_last}"
            ),
            mo.hstack([workflow, segment, window], justify="start", gap=2),
            dates,
        ]
    )
    return dates, segment, window, workflow


@app.cell
def _(
    UTC,
    campaign_results,
    dates,
    datetime,
    engine,
    segment,
    stored_results,
    time,
    timedelta,
    window,
    workflow,
):
    _filters = dict(
        window=timedelta(days=window.value),
        segment=None if segment.value == "(all)" else segment.value,
        since=datetime.combine(dates.value[0], time.min, UTC),
        until=datetime.combine(dates.value[1], time.max, UTC),
    )
    _stored = stored_results(engine, **_filters)
    if _stored is None:
        _all = campaign_results(engine, **_filters)
        freshness = (
            f"Computed from the events: no stored outcomes for a {window.value}-day window "
            f"(`segflow campaigns refresh --window {window.value}d` stores them)."
        )
    else:
        _all, freshness = (
            _stored.results,
            _stored.freshness.note[:1].upper() + _stored.freshness.note[1:] + ".",
        )
    results = [r for r in _all if workflow.value == "(all)" or r.workflow == workflow.value]
    return freshness, results


@app.cell
def _(freshness, mo, pd, results):
    def _arm_rows(result):
        for arm in result.arms:
            row = arm.as_dict()
            yield {
                "campaign": result.campaign,
                "arm": arm.arm + (" (holdout)" if arm.holdout else ""),
                "n": arm.n,
                "sent": row["sent"],
                "opened": row["opened"],
                "clicked": row["clicked"],
                "visit rate": row["visit_rate"],
                "conversion rate": row["conversion_rate"],
                "unsubscribed": row["unsubscribed"],
                "revenue": row["revenue"],
                "revenue per person": row["revenue_per_person"],
            }

    arms = pd.DataFrame([row for r in results for row in _arm_rows(r)])
    mo.stop(
        arms.empty,
        mo.callout(mo.md("No campaign matches the filters."), kind="info"),
    )
    mo.vstack(
        [
            mo.md(f"## Arms ({len(results)} campaign{'s' if len(results) != 1 else ''})"),
            mo.md(f"_{freshness}_"),
            mo.ui.table(
                arms,
                selection=None,
                format_mapping={
                    "visit rate": "{:.2%}".format,
                    "conversion rate": "{:.2%}".format,
                    "revenue": "{:,.2f}".format,
                    "revenue per person": "{:,.2f}".format,
                },
                show_download=True,
            ),
        ]
    )
    return (arms,)


@app.cell
def _(alt, lift_rows, mo, pd, results):
    _metrics = {
        "visit_rate": "visit rate (points)",
        "conversion_rate": "conversion rate (points)",
        "revenue_per_person": "revenue per person",
    }
    lift = pd.DataFrame(lift_rows(results))
    if lift.empty:
        _shown = mo.md("_No arm has a holdout to compare with._")
    else:
        # Rates in percentage points, so a 0.0166 difference reads 1.66.
        _scale = lift["metric"].str.endswith("_rate").map({True: 100.0, False: 1.0})
        _plot = lift.assign(
            label=lift["campaign"] + ": " + lift["arm"],
            chart_metric=lift["metric"].map(_metrics).fillna(lift["metric"]),
            shown_estimate=lift["estimate"] * _scale,
            shown_low=lift["low"] * _scale,
            shown_high=lift["high"] * _scale,
            excludes_zero=(lift["low"] > 0) | (lift["high"] < 0),
        )
        # Layers without data of their own: the facet hands each its metric's rows.
        _base = alt.Chart().encode(y=alt.Y("label:N", title=None))
        _bars = _base.mark_rule(strokeWidth=2).encode(
            x=alt.X("shown_low:Q", title="arm minus holdout, 95% interval"),
            x2="shown_high:Q",
        )
        _points = _base.mark_point(filled=True, size=70).encode(
            x="shown_estimate:Q",
            color=alt.Color("excludes_zero:N", title="interval excludes 0"),
            tooltip=[
                "campaign:N",
                "arm:N",
                alt.Tooltip("arm_value:Q", format=",.4f"),
                alt.Tooltip("holdout_value:Q", format=",.4f"),
                alt.Tooltip("shown_estimate:Q", title="difference", format=",.3f"),
                alt.Tooltip("shown_low:Q", title="low", format=",.3f"),
                alt.Tooltip("shown_high:Q", title="high", format=",.3f"),
                "method:N",
            ],
        )
        _zero = alt.Chart().mark_rule(strokeDash=[4, 4]).encode(x=alt.datum(0))
        _shown = (
            alt.layer(_bars, _points, _zero, data=_plot)
            .properties(width=240, height=alt.Step(26))
            .facet(column=alt.Column("chart_metric:N", title=None))
            .resolve_scale(x="independent")
        )
    mo.vstack([mo.md("## Lift against the holdout"), _shown])
    return (lift,)


if __name__ == "__main__":
    app.run()
