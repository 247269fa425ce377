"""segflow overview dashboard: what is stored, activity per day, top products.

Run it as an app with `segflow dashboard overview` (or `marimo run
notebooks/overview.py`), edit it with `marimo edit`, export a static report
with `segflow dashboard overview --export-html report.html`. The database is
SEGFLOW_DATABASE_URL, else segflow.toml, else sqlite:///segflow.db. All SQL
lives in core.dashboards; this notebook only lays out and charts.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="segflow overview")


@app.cell
def _():
    import altair as alt
    import marimo as mo

    from core.config import load_settings
    from core.dashboards import events_per_day, top_products
    from core.db import DatabaseError, open_db
    from core.stats import database_summary

    # The per-day frame can outgrow Altair's default 5,000-row guard on long histories.
    alt.data_transformers.disable_max_rows()
    return (
        DatabaseError,
        alt,
        database_summary,
        events_per_day,
        load_settings,
        mo,
        open_db,
        top_products,
    )


@app.cell
def _(DatabaseError, load_settings, mo, open_db):
    # load_settings() reads SEGFLOW_DATABASE_URL first, then segflow.toml.
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
def _(database_label, database_summary, engine, mo):
    summary = database_summary(engine)
    _period = (
        f"{summary['first_event'][:10]} to {summary['last_event'][:10]}"
        if summary["first_event"]
        else "no events yet"
    )
    mo.vstack(
        [
            mo.md(f"# segflow overview\n\n`{database_label}` &middot; {_period}"),
            mo.hstack(
                [
                    mo.stat(f"{summary['profiles']:,}", label="profiles", bordered=True),
                    mo.stat(f"{summary['identified']:,}", label="identified", bordered=True),
                    mo.stat(f"{summary['anonymous']:,}", label="anonymous", bordered=True),
                    mo.stat(f"{summary['events']:,}", label="events", bordered=True),
                    mo.stat(f"{summary['revenue']:,.2f}", label="revenue", bordered=True),
                ],
                widths="equal",
            ),
        ]
    )
    return (summary,)


@app.cell
def _(mo):
    window = mo.ui.dropdown(
        options={"all time": 0, "last 7 days": 7, "last 30 days": 30, "last 90 days": 90},
        value="all time",
        label="Window",
    )
    top_n = mo.ui.slider(5, 50, value=10, step=5, label="Top products")
    mo.hstack([window, top_n], justify="start", gap=2)
    return top_n, window


@app.cell
def _(alt, engine, events_per_day, mo, window):
    per_day = events_per_day(engine, days=window.value or None)
    _chart = (
        alt.Chart(per_day)
        .mark_bar()
        .encode(
            x=alt.X("yearmonthdate(day):T", title="day (UTC)"),
            y=alt.Y("sum(events):Q", title="events"),
            color=alt.Color("type:N", title="event type"),
            tooltip=[
                alt.Tooltip("yearmonthdate(day):T", title="day"),
                "type:N",
                alt.Tooltip("events:Q", format=","),
            ],
        )
        .properties(width="container", height=320, title="Events per day by type")
    )
    mo.vstack([mo.md("## Activity"), _chart])
    return (per_day,)


@app.cell
def _(alt, engine, mo, top_n, top_products):
    top = top_products(engine, limit=top_n.value)
    _labelled = top.assign(product=top["name"].fillna(top["product_id"]))
    _chart = (
        alt.Chart(_labelled)
        .mark_bar()
        .encode(
            x=alt.X("views:Q", title="product views"),
            y=alt.Y("product:N", sort="-x", title=None),
            color=alt.Color("purchases:Q", title="purchases", scale=alt.Scale(scheme="greens")),
            tooltip=[
                "product_id:N",
                "name:N",
                "category:N",
                alt.Tooltip("views:Q", format=","),
                alt.Tooltip("purchases:Q", format=","),
                alt.Tooltip("revenue:Q", format=",.2f"),
            ],
        )
        .properties(width="container", height=alt.Step(22), title="Most viewed products")
    )
    mo.vstack(
        [
            mo.md("## Top products"),
            _chart,
            mo.ui.table(top, selection=None, page_size=top_n.value, show_download=True),
        ]
    )
    return (top,)


if __name__ == "__main__":
    app.run()
