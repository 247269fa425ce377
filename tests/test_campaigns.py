"""Campaign results and lift: the real Hillstrom file through the shipped mapping
and `segflow campaigns results`, a workflow split run by the automation engine,
and the misclassified-segment check."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy import stats

from core.db import open_db
from core.db.tables import MESSAGES
from core.ingestion import ingest
from core.monitoring.campaigns import (
    campaign_names,
    campaign_results,
    lift_rows,
    misclassified_segments,
)
from tests.conftest import PROJECT_ROOT, require_shared

ARMS = ("Mens E-Mail", "Womens E-Mail", "No E-Mail")
# MineThatData's published group results (visit %, conversion %, spend per customer).
PUBLISHED = {
    "Mens E-Mail": (18.28, 1.25, 1.42),
    "Womens E-Mail": (15.14, 0.88, 1.08),
    "No E-Mail": (10.62, 0.57, 0.65),
}


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory):
    """The file imported once with `segflow import --mapping`, and the CSV read by pandas."""
    from core.cli import main

    path = require_shared("hillstrom/hillstrom.csv.gz")
    url = f"sqlite:///{tmp_path_factory.mktemp('hillstrom') / 'h.db'}"
    mapping = PROJECT_ROOT / "examples/mappings/hillstrom.yaml"
    assert main(["--db", url, "import", str(path), "--mapping", str(mapping), "--json"]) == 0
    return url, pd.read_csv(path)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def newcombe(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float]:
    """Written out again from Newcombe (1998), method 10, as the check."""
    z = NormalDist().inv_cdf(0.975)
    (l1, u1), (l0, u0) = wilson(k1, n1, z), wilson(k0, n0, z)
    p1, p0 = k1 / n1, k0 / n0
    return (
        p1 - p0 - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
        p1 - p0 + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2),
    )


def test_hillstrom_reproduces_the_published_figures_and_lift(hillstrom, run):
    url, csv = hillstrom
    status, out, err = run(
        "--db", url, "campaigns", "results", "--campaign", "hillstrom", "--window", "14d", "--json"
    )
    assert status == 0, err
    (result,) = json.loads(out)
    assert result["campaign"] == "hillstrom" and result["holdout"] == "No E-Mail"
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == set(ARMS)
    groups = {name: g for name, g in csv.groupby("segment")}
    for name, (visit, conversion, spend) in PUBLISHED.items():
        arm = arms[name]
        assert arm["n"] == len(groups[name])
        assert round(arm["visit_rate"] * 100, 2) == visit
        assert round(arm["conversion_rate"] * 100, 2) == conversion
        assert round(arm["revenue_per_person"], 2) == spend
    hold = groups["No E-Mail"]
    assert arms["No E-Mail"]["lift"] is None
    for name in ARMS[:2]:
        g, lift = groups[name], arms[name]["lift"]
        for metric, column in (("visit_rate", "visit"), ("conversion_rate", "conversion")):
            got = lift[metric]["difference"]
            low, high = newcombe(int(g[column].sum()), len(g), int(hold[column].sum()), len(hold))
            assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-9)
            assert got["estimate"] == pytest.approx(g[column].mean() - hold[column].mean())
        revenue = lift["revenue_per_person"]
        ci = stats.ttest_ind(g["spend"], hold["spend"], equal_var=False).confidence_interval()
        assert (revenue["welch"]["low"], revenue["welch"]["high"]) == pytest.approx(
            (ci.low, ci.high), rel=1e-6
        )
        # Spend is zero for 99% of people: the bootstrap is the interval to read,
        # and it agrees with a plain resampling of the CSV's spend columns.
        assert revenue["difference"]["method"] == "bootstrap"
        rng = np.random.default_rng(11)
        x1, x0 = g["spend"].to_numpy(), hold["spend"].to_numpy()
        diffs = [
            rng.choice(x1, x1.size).mean() - rng.choice(x0, x0.size).mean() for _ in range(400)
        ]
        plain = np.quantile(diffs, [0.025, 0.975])
        boot = (revenue["bootstrap"]["low"], revenue["bootstrap"]["high"])
        assert boot == pytest.approx(tuple(plain), abs=0.06)
        assert revenue["bootstrap"]["low"] > 0  # both emails raised spend


def test_hillstrom_window_and_mistakes(hillstrom, run):
    url, _ = hillstrom
    # The visits and purchases fall a week after the send: a 3-day window sees none.
    status, out, _ = run("--db", url, "campaigns", "results", "--window", "3d", "--json")
    assert status == 0
    (result,) = json.loads(out)
    assert all(a["visited"] == a["converted"] == 0 for a in result["arms"])
    status, out, _ = run("--db", url, "campaigns", "results", "--campaign", "hillstrom")
    assert status == 0 and "18.28%" in out and "10.62%" in out
    status, _, err = run("--db", url, "campaigns", "results", "--campaign", "nope")
    assert status == 2 and err.strip() == "error: no campaign 'nope' (known: hillstrom)"
    status, _, err = run("--db", url, "campaigns", "results", "--window", "two weeks")
    assert status == 2 and err.startswith("error: --window: 'two weeks' is not a duration")


# -- a workflow split run by the automation engine ----------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
OFFER = """
name: offer
trigger: {segment_entered: buyers}
steps:
  - split:
      arms:
        - {name: a, percent: 45, steps: [{send: {template: welcome}}]}
        - {name: b, percent: 45, steps: [{send: {template: welcome}}]}
      holdout: {name: control, percent: 10}
"""


def test_a_workflow_split_is_a_campaign_with_its_holdout(db_url, tmp_path):
    from core.automation import perform_pending
    from core.automation.engine import enter
    from core.types import Entry
    from tests.helpers import people
    from tests.test_automation import save, settings_for

    engine = open_db(db_url)
    save(engine, OFFER)
    ids = people(engine, 120)
    enter(engine, {"offer": [Entry(pid, NOW) for pid in ids]}, as_of=NOW)
    perform_pending(engine, settings_for(tmp_path), as_of=NOW)
    with engine.connect() as conn:
        sent = dict(
            conn.execute(sa.select(MESSAGES.c.profile_id, MESSAGES.c.idempotency_key)).all()
        )
    with engine.connect() as conn:
        arm_of = dict(conn.execute(sa.text("select profile_id, arm from workflow_states")).all())
    user = {pid: f"p{i}" for i, pid in enumerate(ids)}
    by_arm = {arm: [p for p in ids if arm_of[p] == arm] for arm in ("a", "b", "control")}
    assert set(sent) == set(by_arm["a"]) | set(by_arm["b"])  # the holdout got nothing
    at = (NOW + timedelta(days=1)).isoformat()
    openers, clickers = by_arm["a"][:30], by_arm["a"][:10]
    buyers = {"a": by_arm["a"][:12], "b": by_arm["b"][:6], "control": by_arm["control"][:1]}
    events = [
        {"type": "email_open", "user_id": user[p], "ts": at, "campaign": "welcome",
         "properties": {"message": sent[p]}} for p in openers
    ] + [
        {"type": "email_click", "user_id": user[p], "ts": at, "campaign": "welcome",
         "properties": {"message": sent[p]}} for p in clickers
    ] + [
        {"type": "purchase", "user_id": user[p], "ts": at, "value": 20.0, "currency": "USD"}
        for group in buyers.values() for p in group
    ] + [
        # Before the assignment and after the window: neither counts.
        {"type": "purchase", "user_id": user[by_arm["b"][-1]], "value": 99.0, "currency": "USD",
         "ts": (NOW - timedelta(days=1)).isoformat()},
        {"type": "purchase", "user_id": user[by_arm["b"][-2]], "value": 99.0, "currency": "USD",
         "ts": (NOW + timedelta(days=15)).isoformat()},
        {"type": "page_view", "user_id": user[by_arm["control"][0]], "ts": at, "url": "/"},
    ]  # fmt: skip
    assert not ingest(engine, events).rejected
    (result,) = campaign_results(engine, campaign="offer", window=timedelta(days=14))
    assert (result.kind, result.workflow, result.segment, result.holdout) == (
        "workflow", "offer", "buyers", "control"
    )  # fmt: skip
    arms = {a.arm: a for a in result.arms}
    for name, members in by_arm.items():
        arm = arms[name]
        assert arm.n == len(members)
        emailed = 0 if name == "control" else len(members)
        assert arm.counts["sent"] == arm.counts["delivered"] == emailed
        assert arm.counts["converted"] == len(buyers[name])
        assert arm.revenue == pytest.approx(20.0 * len(buyers[name]))
    assert (arms["a"].counts["opened"], arms["a"].counts["clicked"]) == (30, 10)
    assert arms["b"].counts["opened"] == arms["control"].counts["opened"] == 0
    assert arms["control"].counts["visited"] == 1 and arms["control"].lift is None
    a, c = arms["a"], arms["control"]
    lift = a.lift["conversion_rate"]["difference"]
    assert lift.estimate == pytest.approx(12 / a.n - 1 / c.n)
    assert lift.low < lift.estimate < lift.high
    (template,) = [t for t in result.templates if t["arm"] == "a"]
    assert template == {
        "arm": "a", "template": "welcome", "messages": a.n, "sent": a.n, "delivered": a.n,
        "opened": 30, "clicked": 10, "unsubscribed": 0,
    }  # fmt: skip
    assert campaign_results(engine, segment="elsewhere") == []
    rows = {(r["arm"], r["metric"]): r for r in lift_rows([result])}
    assert set(rows) == {(arm, m) for arm in "ab" for m in
                         ("visit_rate", "conversion_rate", "revenue_per_person")}  # fmt: skip
    conv = rows[("a", "conversion_rate")]
    assert (conv["arm_value"], conv["holdout_value"]) == (12 / a.n, 1 / c.n)
    assert (conv["low"], conv["high"]) == (lift.low, lift.high)
    assert campaign_names(engine) == ["offer"]


def test_a_segment_send_is_a_campaign_aimed_at_its_segment(fresh_sqlite, tmp_path):
    from core.consents import set_consent
    from core.personalize.delivery import campaign_key, send
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, run_segments
    from tests.helpers import people, rendered_email
    from tests.test_delivery import OUTBOX, outbox_settings

    engine = open_db(fresh_sqlite())
    ids = people(engine, 4)
    set_consent(engine, "p3", "email", False, "preferences")
    ingest(engine, [{"type": "product_view", "user_id": f"p{i}", "product_id": "x"}
                    for i in range(4)])  # fmt: skip
    (tmp_path / "segs").mkdir()
    (tmp_path / "segs" / "viewers.yaml").write_text(
        "name: viewers\nrule: {event: product_view, within: 30d}\n"
    )
    kinds = condition_kinds()
    definitions = load_segment_files(tmp_path / "segs", kinds)
    run_segments(engine, datetime.now(UTC), kinds=kinds, definitions=definitions)

    def render(conn, template, profile_id, key):
        return rendered_email(profile_id, key, to=f"p{ids.index(profile_id)}@example.com",
                              template=template)  # fmt: skip

    settings = outbox_settings(tmp_path / "out")
    report = send(engine, "browse", "viewers", campaign="spring", via=OUTBOX, settings=settings,
                  render=render)  # fmt: skip
    assert report.sent == 3
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    key = campaign_key("spring", "viewers", "browse", ids[0])
    assert not ingest(engine, [
        {"type": "email_click", "user_id": "p0", "ts": soon, "properties": {"message": key}},
        {"type": "purchase", "user_id": "p1", "ts": soon, "value": 12.5},
    ]).rejected  # fmt: skip
    (result,) = campaign_results(engine, campaign="spring")
    assert (result.kind, result.segment, result.holdout) == ("send", "viewers", None)
    (arm,) = result.arms
    assert (arm.arm, arm.n, arm.revenue, arm.lift) == ("browse", 4, 12.5, None)
    # The refused person was aimed at (n) but never sent to.
    assert {k: arm.counts[k] for k in ("sent", "delivered", "clicked", "converted")} == {
        "sent": 3, "delivered": 3, "clicked": 1, "converted": 1,
    }  # fmt: skip


# -- misclassified segments ---------------------------------------------------------------------


def assignments(campaign: str, segment: str, arms: dict[str, tuple[int, int]], start: int):
    """campaign_assigned events for (arm -> (people, buyers)); holdout arm 'control'."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    events, i = [], start
    for arm, (n, buying) in arms.items():
        for j in range(n):
            user = f"u{i}"
            i += 1
            properties = {"arm": arm, "holdout": arm == "control", "segment": segment}
            events.append({"type": "campaign_assigned", "user_id": user, "campaign": campaign,
                           "ts": t0.isoformat(), "properties": properties})  # fmt: skip
            if j < buying:
                events.append({"type": "purchase", "user_id": user, "value": 30.0,
                               "ts": (t0 + timedelta(days=3)).isoformat()})  # fmt: skip
    return events


def test_a_segment_doing_no_better_is_flagged_and_a_responsive_one_is_not(db_url):
    engine = open_db(db_url)
    events = assignments("spring", "loyal", {"email": (400, 40), "control": (100, 2)}, 0)
    events += assignments("winback", "lapsed", {"email": (400, 8), "control": (100, 2)}, 1000)
    assert not ingest(engine, events).rejected
    as_of = datetime(2026, 5, 20, tzinfo=UTC)
    (alert,) = misclassified_segments(engine, as_of, timedelta(days=14))
    assert (alert.check, alert.subject, alert.day) == (
        "misclassified_segment", "lapsed", as_of.date()
    )  # fmt: skip
    # Worse than the other campaign's recipients (2% against 10%): critical.
    assert alert.severity == "critical"
    assert alert.message.startswith("segment lapsed: conversion 2.00% of 400 emailed members")
    assert "vs held out 2.00% of 100: +0.00 pt" in alert.message
    assert "vs other recipients 10.00% of 400: -8.00 pt" in alert.message
    against = {c["against"]: c for c in alert.details["comparisons"]}
    assert against["held out"]["low"] < 0 < against["held out"]["high"]
    assert against["other recipients"]["high"] < 0
    # Nothing assigned in the lookback: nothing to flag.
    assert misclassified_segments(engine, as_of + timedelta(days=60), timedelta(days=14)) == []
