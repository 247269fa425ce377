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
from core.monitoring.campaigns import campaign_results, misclassified_segments
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
