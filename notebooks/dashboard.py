"""segflow dashboard: segment health over time, flows in and out, open alerts,
source freshness, scores.

Run it as an app with `segflow dashboard` (or `marimo run
notebooks/dashboard.py`), export a static report with `segflow dashboard
dashboard --export-html report.html`. The database is SEGFLOW_DATABASE_URL,
else segflow.toml, else sqlite:///segflow.db. Sizes come from the sizes the
segment runs and back-fills stored (segment_sizes), never recomputed; all SQL
lives in core.dashboards; this notebook only lays out and charts.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="segflow dashboard")


@app.cell
def _():
    import altair as alt
    import marimo as mo

    from core.config import load_settings
    from core.dashboards import (
        score_distribution,
        score_models,
        segment_flows,
        segment_size_history,
    )
    from core.db import DatabaseError, open_db
    from core.monitoring.alerts import alerts_frame
    from core.monitoring.freshness import freshness

    # Long histories of many segments outgrow Altair's default 5,000-row guard.
    _ = alt.data_transformers.disable_max_rows()
    return (
        DatabaseError,
        alerts_frame,
        alt,
        freshness,
        load_settings,
        mo,
        open_db,
        score_distribution,
        score_models,
        segment_flows,
        segment_size_history,
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
    database_label = engine.url.render_as_string(hide_password=True)
    return database_label, engine


@app.cell
def _(mo):
    window = mo.ui.dropdown(
        options={"last 14 days": 14, "last 30 days": 30, "last 90 days": 90, "all": 0},
        value="last 30 days",
        label="Window",
    )
    return (window,)


@app.cell
def _(database_label, engine, mo, segment_size_history, window):
    sizes = segment_size_history(engine, days=window.value or None)
    _intro = mo.md(f"# segflow dashboard\n\n`{database_label}`")
    mo.stop(
        sizes.empty,
        mo.vstack(
            [
                _intro,
                mo.callout(
                    mo.md(
                        "**No segment history yet.** Sizes appear once segments have run "
                        "(`segflow segments run --dir examples/segments`, daily through "
                        "`segflow deploy`) or been back-filled (`segflow segments backfill`); "
                        "`segflow demo` builds a store with all of it."
                    ),
                    kind="warn",
                ),
            ]
        ),
    )
    _last = sizes[sizes["day"] == sizes["day"].max()]
    mo.vstack(
        [
            _intro,
            mo.hstack([window], justify="start"),
            mo.hstack(
                [
                    mo.stat(f"{sizes['segment'].nunique():,}", label="segments", bordered=True),
                    mo.stat(f"{sizes['day'].nunique():,}", label="days with sizes", bordered=True),
                    mo.stat(f"{sizes['day'].max():%Y-%m-%d}", label="latest size", bordered=True),
                    mo.stat(f"{int(_last['size'].sum()):,}", label="memberships", bordered=True),
                ],
                widths="equal",
            ),
        ]
    )
    return (sizes,)


@app.cell
def _(alerts_frame, engine, mo):
    alerts = alerts_frame(engine, open_only=True)
    if alerts.empty:
        _shown = mo.callout(
            mo.md("No open alerts (`segflow monitor` runs the checks; the monitor flow daily)."),
            kind="success",
        )
    else:
        _counts = alerts["severity"].value_counts()
        _shown = mo.vstack(
            [
                mo.hstack(
                    [
                        mo.stat(
                            f"{int(_counts.get('critical', 0)):,}", label="critical", bordered=True
                        ),
                        mo.stat(
                            f"{int(_counts.get('warning', 0)):,}", label="warning", bordered=True
                        ),
                    ],
                    justify="start",
                ),
                mo.ui.table(
                    alerts[["severity", "check", "subject", "message", "day", "last_seen"]],
                    selection=None,
                    page_size=10,
                ),
            ]
        )
    mo.vstack([mo.md("## Open alerts"), _shown])
    return (alerts,)


@app.cell
def _(alt, engine, freshness, mo):
    fresh = freshness(engine)
    if fresh.empty:
        _shown = mo.md("_No source has delivered events yet._")
    else:
        _plot = fresh.assign(
            source_type=fresh["source"] + "/" + fresh["type"],
            lag_days=fresh["lag_seconds"] / 86400,
        )
        _shown = (
            alt.Chart(_plot)
            .mark_bar()
            .encode(
                x=alt.X("lag_days:Q", title="days since the newest event"),
                y=alt.Y("source_type:N", sort="-x", title=None),
                tooltip=[
                    "source:N",
                    "type:N",
                    alt.Tooltip("last_event:T", format="%Y-%m-%d %H:%M"),
                    alt.Tooltip("lag_days:Q", format=",.2f"),
                    alt.Tooltip("events:Q", format=","),
                ],
            )
            .properties(width="container", height=alt.Step(18), title="Source freshness")
        )
    mo.vstack([mo.md("## Source freshness"), _shown])
    return (fresh,)


@app.cell
def _(alt, mo, sizes):
    _pick = alt.selection_point(fields=["segment"], bind="legend")
    size_chart = (
        alt.Chart(sizes)
        .mark_line(point=True)
        .encode(
            x=alt.X("yearmonthdate(day):T", title="day (UTC)"),
            y=alt.Y("size:Q", title="members"),
            color=alt.Color("segment:N", title="segment"),
            opacity=alt.condition(_pick, alt.value(1.0), alt.value(0.15)),
            tooltip=[alt.Tooltip("yearmonthdate(day):T", title="day"), "segment:N", "size:Q"],
        )
        .add_params(_pick)
        .properties(width="container", height=340, title="Segment sizes per day")
    )
    mo.vstack([mo.md("## Segment sizes"), size_chart])
    return (size_chart,)


@app.cell
def _(alt, engine, mo, segment_flows, window):
    flows = segment_flows(engine, days=window.value or None)
    if flows.empty:
        _shown = mo.md("_No membership changes recorded in the window._")
    else:
        _long = flows.melt(
            id_vars=["day", "segment"], value_vars=["entered", "exited"], var_name="change"
        )
        # Exits below the axis, entries above: one glance shows the net flow.
        _long["people"] = _long["value"].where(_long["change"] == "entered", -_long["value"])
        _shown = (
            alt.Chart(_long)
            .mark_bar()
            .encode(
                x=alt.X("yearmonthdate(day):T", title="day (UTC)"),
                y=alt.Y("sum(people):Q", title="entered (+) / exited (-)"),
                color=alt.Color(
                    "change:N", scale=alt.Scale(domain=["entered", "exited"]), title=None
                ),
                tooltip=[
                    alt.Tooltip("yearmonthdate(day):T", title="day"),
                    "segment:N",
                    "change:N",
                    alt.Tooltip("value:Q", title="people", format=","),
                ],
            )
            .properties(width="container", height=260, title="Entered and exited per day")
        )
    mo.vstack([mo.md("## Flows in and out"), _shown])
    return (flows,)


@app.cell
def _(engine, mo, score_models):
    models = score_models(engine)
    model = mo.ui.dropdown(
        options=models or ["(none)"],
        value="engagement" if "engagement" in models else (models or ["(none)"])[0],
        label="Model",
    )
    return model, models


@app.cell
def _(alt, engine, mo, model, models, score_distribution):
    scores = score_distribution(engine, model.value, bins=20) if models else None
    if scores is None:
        _shown = mo.md("_No scores yet (`segflow scores run --dir examples/scores`)._")
    else:
        _shown = mo.vstack(
            [
                model,
                alt.Chart(scores)
                .mark_bar()
                .encode(
                    x=alt.X("low:Q", bin="binned", title=f"{model.value} score"),
                    x2="high:Q",
                    y=alt.Y("profiles:Q", title="profiles"),
                    tooltip=[
                        alt.Tooltip("low:Q", format=",.2f"),
                        alt.Tooltip("high:Q", format=",.2f"),
                        alt.Tooltip("profiles:Q", format=","),
                    ],
                )
                .properties(width="container", height=220, title=f"{model.value}, latest run"),
            ]
        )
    mo.vstack([mo.md("## Score distribution"), _shown])
    return (scores,)


if __name__ == "__main__":
    app.run()
