"""segflow segment lab: try a segment definition on the stored data, saving nothing.

Edit a definition (YAML, as in examples/segments); it is validated as you
type, with the error naming the rule path. You see its size now, a sample
of members, its size over past days as it would have been (each day
evaluated on the events up to then, nothing written), why one person is in
it or not, and how it overlaps a second definition. Run it with
`segflow dashboard segment_lab`. All logic lives in core.segment_lab; this
notebook only lays out and charts.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="segflow segment lab")


@app.cell
def _():
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import pandas as pd

    import core
    from core import segment_lab as lab
    from core.config import load_settings
    from core.db import DatabaseError, open_db
    from core.profiles import ProfileNotFound
    from core.segments.language import SegmentError

    examples = Path(core.__file__).resolve().parents[1] / "examples" / "segments"
    return (
        DatabaseError,
        ProfileNotFound,
        SegmentError,
        alt,
        core,
        examples,
        lab,
        load_settings,
        mo,
        open_db,
        pd,
    )


@app.cell
def _(DatabaseError, core, lab, load_settings, mo, open_db):
    database_url = load_settings().database_url
    try:
        # Read-only: never migrate someone's database from here.
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
    kinds = core.condition_kinds()
    with engine.connect() as _conn:
        as_of = lab.latest_event_time(_conn)
    mo.stop(
        as_of is None,
        mo.callout(
            mo.md(
                "**No events yet.** The lab evaluates definitions on stored events: "
                "import some (`segflow import FILE`) or build the demo store (`segflow demo`)."
            ),
            kind="warn",
        ),
    )
    return as_of, engine, kinds


@app.cell
def _(as_of, examples, mo):
    definition = mo.ui.code_editor(
        value=(examples / "high_intent.yaml").read_text(),
        language="yaml",
        label="Segment definition (YAML)",
        min_height=240,
    )
    other = mo.ui.code_editor(
        value=(examples / "cart_abandoners.yaml").read_text(),
        language="yaml",
        label="Second definition, to compare",
        min_height=160,
    )
    history_days = mo.ui.slider(2, 60, value=14, step=1, label="History (days)")
    mo.vstack(
        [
            mo.md(
                "# segflow segment lab\n\nEverything is evaluated as of the newest event, "
                f"**{as_of:%Y-%m-%d %H:%M} UTC**; nothing is saved."
            ),
            definition,
        ]
    )
    return definition, history_days, other


@app.cell
def _(SegmentError, definition, kinds, lab, mo):
    try:
        segment = lab.parse_definition(definition.value, kinds, label="definition")
        lab_error = None
    except SegmentError as _exc:
        segment, lab_error = None, str(_exc)
    mo.stop(
        segment is None,
        mo.callout(mo.md(f"**Not a valid segment.** `{lab_error}`"), kind="danger"),
    )
    return lab_error, segment


@app.cell
def _(SegmentError, as_of, engine, kinds, lab, mo, pd, segment):
    try:
        with engine.connect() as _conn:
            lab_preview = lab.preview(_conn, segment, kinds, as_of, sample=10)
    except SegmentError as _exc:  # e.g. a reference to a segment nobody saved
        lab_preview = None
        _problem = str(_exc)
    mo.stop(
        lab_preview is None,
        mo.callout(mo.md(f"**Cannot evaluate.** `{_problem}`"), kind="danger")
        if lab_preview is None
        else None,
    )
    _share = lab_preview.size / lab_preview.profiles if lab_preview.profiles else 0.0
    mo.vstack(
        [
            mo.md(f"## `{segment.name}`\n\n{segment.description}"),
            mo.hstack(
                [
                    mo.stat(f"{lab_preview.size:,}", label="members now", bordered=True),
                    mo.stat(f"{_share:.1%}", label="of profiles", bordered=True),
                    mo.stat(f"{lab_preview.profiles:,}", label="profiles", bordered=True),
                ],
                widths="equal",
            ),
            mo.md("Sample of members (lowest profile ids):"),
            mo.ui.table(pd.DataFrame(lab_preview.sample), selection=None, page_size=10)
            if lab_preview.sample
            else mo.md("_No one is in it now._"),
        ]
    )
    return (lab_preview,)


@app.cell
def _(alt, as_of, engine, history_days, kinds, lab, mo, pd, segment):
    with engine.connect() as _conn:
        lab_history = pd.DataFrame(
            lab.history(_conn, segment, kinds, lab.history_times(as_of, history_days.value))
        )
    _chart = (
        alt.Chart(lab_history)
        .mark_line(point=True)
        .encode(
            x=alt.X("as_of:T", title="as of (UTC)"),
            y=alt.Y("size:Q", title="members"),
            tooltip=[alt.Tooltip("as_of:T", format="%Y-%m-%d %H:%M"), "size:Q"],
        )
        .properties(width="container", height=260, title=f"{segment.name}, as it would have been")
    )
    mo.vstack([mo.md("## History"), history_days, _chart])
    return (lab_history,)


@app.cell
def _(lab_preview, mo):
    member = mo.ui.text(
        value=lab_preview.sample[0]["id"] if lab_preview.sample else "",
        label="Explain for (user id, anonymous id or email)",
        full_width=True,
    )
    mo.vstack([member])
    return (member,)


@app.cell
def _(ProfileNotFound, as_of, engine, kinds, lab, member, mo, segment):
    lab_explanation = None
    if not member.value.strip():
        _shown = mo.md("_Give someone to explain._")
    else:
        try:
            with engine.connect() as _conn:
                lab_explanation = lab.explain_member(
                    _conn, segment, kinds, member.value.strip(), as_of
                )
        except ProfileNotFound as _exc:
            _shown = mo.callout(mo.md(str(_exc)), kind="warn")
        else:
            _verdict = "is in" if lab_explanation["member"] else "is not in"
            _shown = mo.vstack(
                [
                    mo.md(f"**{member.value.strip()}** {_verdict} `{segment.name}`:"),
                    mo.md(
                        "```text\n"
                        + "\n".join(lab.explain_lines(lab_explanation["rule"]))
                        + "\n```"
                    ),
                ]
            )
    mo.vstack([mo.md("## Why"), _shown])
    return (lab_explanation,)


@app.cell
def _(SegmentError, alt, as_of, engine, kinds, lab, mo, other, pd, segment):
    lab_overlap = None
    try:
        _second = lab.parse_definition(other.value, kinds, label="second definition")
        with engine.connect() as _conn:
            lab_overlap = lab.overlap(_conn, segment, _second, kinds, as_of)
    except SegmentError as _exc:
        _shown = mo.callout(mo.md(f"`{_exc}`"), kind="danger")
    else:
        _parts = pd.DataFrame(
            {
                "part": [
                    f"only {lab_overlap.a}",
                    "both",
                    f"only {lab_overlap.b}",
                ],
                "members": [lab_overlap.only_a, lab_overlap.both, lab_overlap.only_b],
            }
        )
        _shown = mo.vstack(
            [
                mo.hstack(
                    [
                        mo.stat(f"{lab_overlap.both:,}", label="in both", bordered=True),
                        mo.stat(f"{lab_overlap.union:,}", label="in either", bordered=True),
                        mo.stat(f"{lab_overlap.jaccard:.1%}", label="Jaccard", bordered=True),
                    ],
                    widths="equal",
                ),
                alt.Chart(_parts)
                .mark_bar()
                .encode(
                    x=alt.X("members:Q"),
                    y=alt.Y("part:N", sort=None, title=None),
                    tooltip=["part:N", "members:Q"],
                )
                .properties(width="container", height=120),
            ]
        )
    mo.vstack([mo.md("## Overlap"), other, _shown])
    return (lab_overlap,)


if __name__ == "__main__":
    app.run()
