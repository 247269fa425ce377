"""Segment runs: memberships, changes, versions, incremental = full, CLI."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.cli import main
from core.db import models, open_db
from core.ingestion import ingest
from core.plugins import condition_kinds, events_ingested_hook
from core.segments.language import SegmentError
from core.segments.store import load_segment_files, run_segments
from plugins.demo.generator import generate
from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples" / "segments"
# The example segments use the rfm plugin's rfm_group condition.
KINDS = condition_kinds()
END = datetime(2026, 5, 1, tzinfo=UTC)
MEMBERSHIPS = models.Membership.__table__
SEGMENTS = models.SegmentDefinition.__table__
CHANGES = models.MembershipChange.__table__


def memberships(engine) -> dict[str, set[int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SEGMENTS.c.name, MEMBERSHIPS.c.profile_id).join(
                MEMBERSHIPS, MEMBERSHIPS.c.segment_id == SEGMENTS.c.id
            )
        ).all()
    out: dict[str, set[int]] = {}
    for name, pid in rows:
        out.setdefault(name, set()).add(pid)
    return out


@pytest.fixture(scope="module")
def store_events():
    return list(generate(150, seed=3, days=40, end=END))


def test_incremental_runs_give_the_same_memberships_as_full_runs(db_url, store_events, tmp_path):
    definitions = load_segment_files(EXAMPLES, KINDS)
    cut = END - timedelta(days=10)
    early = [e for e in store_events if e["ts"] <= cut.isoformat()]
    late = [e for e in store_events if e["ts"] > cut.isoformat()]
    incremental = open_db(db_url)
    ingest(incremental, early)
    first = run_segments(incremental, cut, kinds=KINDS, definitions=definitions)
    assert first.full and sum(first.sizes.values()) > 0
    for step, as_of in enumerate([cut + timedelta(days=3), END, END + timedelta(days=20)]):
        if step == 1:
            ingest(incremental, late)
        result = run_segments(incremental, as_of, kinds=KINDS, definitions=definitions)
        assert not result.full
        reference = open_db(f"sqlite:///{tmp_path}/full{step}.db")
        ingest(reference, early + (late if step >= 1 else []))
        run_segments(reference, as_of, kinds=KINDS, definitions=definitions, full=True)
        # Profile ids differ between databases; compare by user id.
        assert by_user(incremental) == by_user(reference), as_of
    # Twenty days on, windows have expired without new events: people left.
    assert sum(result.exited.values()) > 0


@pytest.mark.parametrize("path", ["batch", "realtime"])
def test_events_stored_ahead_of_a_run_count_when_a_later_run_reaches_them(db_url, tmp_path, path):
    """Events stored with a time after a run's as_of (clocks ahead, imports of
    tomorrow's file) come into view as as_of passes them with nothing new
    ingested: the incremental run must evaluate those people too."""
    from core.segments.realtime import evaluate_profiles

    folder = tmp_path / "segs"
    folder.mkdir()
    (folder / "s.yaml").write_text(
        "name: carts\nrule: {event: add_to_cart, within: 1h, count: '>= 2'}\n"
    )
    definitions = load_segment_files(folder, KINDS)
    engine = open_db(db_url)
    ingest(engine, [{"type": "page_view", "user_id": "ahead", "ts": END.isoformat()}])
    ahead = [
        {"type": "add_to_cart", "user_id": "ahead", "ts": (END + timedelta(minutes=m)).isoformat()}
        for m in (1, 5)
    ]
    ingest(engine, [*ahead, {"type": "page_view", "user_id": "other", "ts": END.isoformat()}])
    if path == "batch":
        run_segments(engine, END, kinds=KINDS, definitions=definitions)
    else:
        run_segments(engine, END - timedelta(days=1), kinds=KINDS, definitions=definitions)
        with engine.connect() as conn:
            pid = conn.execute(
                sa.select(models.Profile.__table__.c.id).where(
                    models.Profile.__table__.c.user_id == "ahead"
                )
            ).scalar_one()
        evaluate_profiles(engine, {pid}, END, kinds=KINDS)
    assert memberships(engine) == {}
    later = run_segments(engine, END + timedelta(minutes=15), kinds=KINDS)
    assert not later.full
    assert by_user(engine) == {"carts": {"ahead"}}
    # Once they are in view they are no next change any more: the run after
    # evaluates nobody who has not changed.
    assert run_segments(engine, END + timedelta(minutes=20), kinds=KINDS).evaluated == 0


def by_user(engine) -> dict[str, set[str]]:
    profiles = models.Profile.__table__
    with engine.connect() as conn:
        who = dict(conn.execute(sa.select(profiles.c.id, profiles.c.user_id)).all())
    return {name: {who[p] or f"#{p}" for p in ids} for name, ids in memberships(engine).items()}


def test_changes_are_recorded_and_versions_bump(fresh_sqlite, tmp_path):
    engine = open_db(fresh_sqlite())
    ingest(
        engine,
        [
            {"type": "purchase", "user_id": "a", "ts": "2026-04-01T10:00:00Z", "value": 600},
            {"type": "purchase", "user_id": "b", "ts": "2026-04-01T10:00:00Z", "value": 100},
        ],
    )
    folder = tmp_path / "segments"
    folder.mkdir()
    spec = folder / "spend.yaml"
    spec.write_text(
        "name: spenders\nrule: {event: purchase, sum: {property: value, op: '>= 500'}}\n"
    )
    r1 = run_segments(engine, END, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    assert (r1.sizes, r1.entered) == ({"spenders": 1}, {"spenders": 1})
    spec.write_text(
        "name: spenders\nrule: {event: purchase, sum: {property: value, op: '>= 50'}}\n"
    )
    r2 = run_segments(
        engine, END + timedelta(hours=1), kinds=KINDS, definitions=load_segment_files(folder, KINDS)
    )
    assert r2.entered == {"spenders": 1} and r2.sizes == {"spenders": 2}
    with engine.connect() as conn:
        version = conn.execute(sa.select(SEGMENTS.c.version)).scalar_one()
        changes = conn.execute(
            sa.select(CHANGES.c.change, CHANGES.c.version, CHANGES.c.at).order_by(CHANGES.c.id)
        ).all()
    assert version == 2
    assert [(c.change, c.version) for c in changes] == [("entered", 1), ("entered", 2)]
    assert changes[1].at == END + timedelta(hours=1)
    # Same definition again: no new version, nothing changes.
    r3 = run_segments(
        engine, END + timedelta(hours=2), kinds=KINDS, definitions=load_segment_files(folder, KINDS)
    )
    assert r3.entered == {"spenders": 0} and r3.evaluated == 0


def test_a_changed_definition_re_evaluates_the_segments_reading_it(fresh_sqlite, tmp_path):
    """A segment built on a changed one (``segment:``) changes with it, for
    everyone, though its own definition did not change and nobody has new events."""
    engine = open_db(fresh_sqlite())
    ingest(
        engine,
        [
            {"type": "purchase", "user_id": who, "ts": "2026-04-01T10:00:00Z", "value": value}
            for who, value in (("a", 600), ("b", 100))
        ],
    )
    folder = tmp_path / "segments"
    folder.mkdir()
    spec = folder / "spend.yaml"
    rules = """
- name: regulars
  rule: {segment: spenders}
- name: vip
  rule: {all: [{segment: regulars}, {event: purchase}]}
- name: spenders
  rule: {event: purchase, sum: {property: value, op: '>= LIMIT'}}
"""
    spec.write_text(rules.replace("LIMIT", "500"))
    run_segments(engine, END, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    assert by_user(engine) == {"spenders": {"a"}, "regulars": {"a"}, "vip": {"a"}}

    spec.write_text(rules.replace("LIMIT", "50"))
    again = run_segments(engine, END, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    assert not again.full and again.evaluated == 0
    assert by_user(engine) == {name: {"a", "b"} for name in ("spenders", "regulars", "vip")}
    assert again.entered == {"spenders": 1, "regulars": 1, "vip": 1}


def test_merged_profiles_leave_and_the_survivor_is_evaluated(fresh_sqlite, tmp_path):
    engine = open_db(fresh_sqlite())
    ingest(engine, [{"type": "add_to_cart", "anonymous_id": "anon", "ts": "2026-04-30T10:00:00Z"}])
    ingest(engine, [{"type": "page_view", "user_id": "u", "ts": "2026-04-30T11:00:00Z"}])
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "carts.yaml").write_text("name: carts\nrule: {event: add_to_cart}\n")
    run_segments(engine, END, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    before = memberships(engine)["carts"]
    # Without real time, so the run is what notices the merge.
    ingest(engine, [{"type": "identify", "user_id": "u", "anonymous_id": "anon"}])
    result = run_segments(
        engine,
        END + timedelta(minutes=1),
        kinds=KINDS,
        definitions=load_segment_files(folder, KINDS),
    )
    after = memberships(engine)["carts"]
    assert len(before) == len(after) == 1 and before != after
    assert result.exited == {"carts": 1} and result.entered == {"carts": 1}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "name: x\nrule: {event: purchase, within: 2 days}\n",
            "x.yaml: segment 'x': rule.within: '2 days' is not a duration",
        ),
        (
            "name: x\nrule: {all: [{event: a}, {not: {event: b, count: '=> 2'}}]}\n",
            "x.yaml: segment 'x': rule.all[1].not.count",
        ),
        ("name: x\nrule: {event: a, where: {url: {like: '%'}}}\n", "rule.where"),
        ("name: x\nrule: {segment: x}\n", "cycle: x -> x"),
        ("name: x\nrule: {segment: nope}\n", "unknown segment 'nope'"),
        ("name: X\nrule: {event: a}\n", "must be snake_case"),
        ("name: x\nrule: [oops\n", "not valid YAML"),
    ],
)
def test_bad_definitions_name_file_segment_and_path(tmp_path, content, message):
    (tmp_path / "x.yaml").write_text(content)
    with pytest.raises(SegmentError) as info:
        defs = load_segment_files(tmp_path, KINDS)
        from core.segments.language import check_references

        check_references({n: d.segment for n, d in defs.items()})
    assert message in str(info.value)


def test_cli_run_members_list_history(tmp_path, monkeypatch, capsys, store_events):
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/cli.db"
    ingest(open_db(db), store_events)
    shutil.copytree(EXAMPLES, tmp_path / "segments")
    assert main(["--db", db, "segments", "run", "--as-of", END.isoformat(), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["full"] is True and run["evaluated"] > 150
    size = run["segments"]["engaged_readers"]["size"]
    assert main(["--db", db, "segments", "members", "engaged_readers", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert len(ids) == size and all(isinstance(i, str) for i in ids)
    # As of a past time, evaluated on the fly, nothing saved.
    past = (END - timedelta(days=20)).isoformat()
    assert (
        main(["--db", db, "segments", "members", "engaged_readers", "--as-of", past, "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out) != ids
    assert main(["--db", db, "segments", "list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["engaged_readers"]["size"] == size and listed["high_intent"]["version"] == 1
    assert main(["--db", db, "segments", "history", "engaged_readers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"as_of": END.isoformat(), "size": size, "version": 1}
    ]
    assert main(["--db", db, "segments", "members", "nope"]) == 1
    assert "no segment named 'nope'" in capsys.readouterr().err


def test_realtime_evaluation_follows_ingestion(fresh_sqlite, tmp_path):
    from core.segments.realtime import evaluate_profiles

    engine = open_db(fresh_sqlite())
    folder = tmp_path / "rt"
    folder.mkdir()
    (folder / "s.yaml").write_text("name: fresh_carts\nrule: {event: add_to_cart, within: 1h}\n")
    now = datetime.now(UTC)
    ingest(engine, [{"type": "page_view", "user_id": "u1", "ts": now.isoformat()}])
    run_segments(engine, now, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    assert memberships(engine) == {}
    # The built-in plugin re-evaluates u1 as soon as the batch is committed.
    ingest(
        engine,
        [{"type": "add_to_cart", "user_id": "u1", "ts": now.isoformat()}],
        on_stored=events_ingested_hook(engine),
    )
    assert len(memberships(engine)["fresh_carts"]) == 1
    with engine.connect() as conn:
        change = conn.execute(sa.select(CHANGES.c.change)).scalars().all()
    assert change == ["entered"]
    # Without real time (bulk loads), nothing moves until the next run.
    ingest(engine, [{"type": "add_to_cart", "user_id": "u2", "ts": now.isoformat()}])
    assert len(memberships(engine)["fresh_carts"]) == 1
    # An hour later the window has passed: re-evaluating u1 records the exit,
    # the same answer the SQL path gives for many profiles at once.
    later = now + timedelta(hours=1, seconds=1)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(models.Profile.__table__.c.id)).scalars().all()
    changes = evaluate_profiles(engine, set(ids), later, kinds=KINDS)
    assert [(c.segment, c.change) for c in changes] == [("fresh_carts", "exited")]


def test_cli_explain_preview_backfill_and_segment_tests(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/x.db"
    t = END - timedelta(hours=3)
    ingest(
        open_db(db),
        [
            {
                "type": "product_view",
                "user_id": "ann",
                "ts": t.isoformat(),
                "product_id": f"P{i}",
                "message_id": f"v{i}",
            }
            for i in range(4)
        ]
        + [{"type": "add_to_cart", "user_id": "ann", "ts": t.isoformat(), "product_id": "P1"}],
    )
    shutil.copytree(EXAMPLES, tmp_path / "segments")
    assert main(["--db", db, "segments", "run", "--as-of", END.isoformat()]) == 0
    capsys.readouterr()

    assert (
        main(
            [
                "--db",
                db,
                "segments",
                "explain",
                "high_intent",
                "ann",
                "--as-of",
                END.isoformat(),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["member"] is True and report["rule"]["kind"] == "all"
    views = report["rule"]["children"][0]
    assert views["figures"]["count"] == 4 and views["figures"]["test"] == "count >= 3"
    assert {e["message_id"] for e in views["events"]} == {"v0", "v1", "v2", "v3"}
    purchase = report["rule"]["children"][2]["children"][0]
    assert purchase["value"] is False and purchase["figures"]["count"] == 0
    # Two days later the views have left the 48h window.
    assert report["next_change_at"] == (t + timedelta(hours=48)).isoformat()
    assert main(["--db", db, "segments", "explain", "high_intent", "ann"]) == 0
    assert "OUT" in capsys.readouterr().out  # as of now, long after

    preview = tmp_path / "preview.yaml"
    preview.write_text("name: viewers\nrule: {event: product_view, count: '>= 4'}\n")
    assert (
        main(
            ["--db", db, "segments", "preview", str(preview), "--as-of", END.isoformat(), "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"viewers": {"size": 1, "sample": ["ann"]}}
    assert main(["--db", db, "segments", "list", "--json"]) == 0
    assert "viewers" not in {r["name"] for r in json.loads(capsys.readouterr().out)}

    start = (END - timedelta(days=2)).isoformat()
    assert (
        main(
            [
                "--db",
                db,
                "segments",
                "backfill",
                "--from",
                start,
                "--to",
                END.isoformat(),
                "--every",
                "1d",
                "--json",
            ]
        )
        == 0
    )
    series = json.loads(capsys.readouterr().out)
    assert [s["sizes"]["high_intent"] for s in series] == [0, 0, 1]
    assert main(["--db", db, "segments", "history", "high_intent", "--json"]) == 0
    assert [h["size"] for h in json.loads(capsys.readouterr().out)] == [0, 0, 1]

    tests = sum(len(f.segment.tests) for f in load_segment_files(EXAMPLES, KINDS).values())
    assert main(["segments", "test", "--dir", str(tmp_path / "segments")]) == 0
    assert f"{tests} passed, 0 failed" in capsys.readouterr().out
    broken = tmp_path / "segments" / "high_intent.yaml"
    broken.write_text(broken.read_text().replace('count: ">= 3"', 'count: ">= 4"'))
    assert main(["segments", "test", "--dir", str(tmp_path / "segments")]) == 1
    captured = capsys.readouterr()
    assert f"{tests - 1} passed, 1 failed" in captured.out
    assert (
        "FAILED" in captured.err
        and "browsed and added, did not buy - expected in, got out" in captured.err
    )


def test_rules_compile_for_other_dialects():
    from sqlalchemy.dialects import mysql

    from core.segments.language import parse_segment
    from core.segments.sql import Compiler

    rule = parse_segment(
        {
            "name": "s",
            "rule": {
                "all": [
                    {
                        "event": "purchase",
                        "within": "7d",
                        "sum": {"property": "price", "op": ">= 10"},
                        "where": {"cat": "a", "url": {"contains": "x"}},
                    },
                    {"attribute": "tier", "op": "==", "value": "gold"},
                ]
            },
        },
        kinds=KINDS,
    ).rule
    compiler = Compiler(END)
    stmt, _ = compiler.query({"s": compiler.compile(rule)})
    text = str(stmt.compile(dialect=mysql.dialect()))
    assert "JSON_EXTRACT" in text.upper() and "GROUP BY" in text


def test_identical_conditions_share_one_feature_and_one_scan():
    from core.segments.language import parse_segment
    from core.segments.sql import Compiler

    views = {"event": "product_view", "within": "48h", "count": ">= 3"}
    segments = {
        "a": parse_segment({"name": "a", "rule": views}, kinds=KINDS).rule,
        "b": parse_segment(
            {"name": "b", "rule": {"all": [views, {"not": {"event": "buy"}}]}}, kinds=KINDS
        ).rule,
        "c": parse_segment(
            {
                "name": "c",
                "rule": {
                    "any": [
                        {"event": "product_view", "within": "48h", "count": ">= 5"},
                        {"event": "buy"},
                    ]
                },
            },
            kinds=KINDS,
        ).rule,
    }
    compiler = Compiler(END)
    compiled = {n: compiler.compile(r) for n, r in segments.items()}
    # product_view in 48h is one count feature for all three segments; buy is one more;
    # the window's oldest event (for next_change_at) is one time feature.
    assert len(compiler.f.event) == 3
    stmt, _ = compiler.query(compiled)
    sql = str(stmt.compile())
    assert sql.count("FROM events") == 1


def test_realtime_retires_the_profiles_merged_into_the_evaluated_one(db_url, tmp_path):
    from core.segments.realtime import evaluate_profiles

    engine = open_db(db_url)
    ingest(engine, [{"type": "add_to_cart", "anonymous_id": "anon", "ts": "2026-04-30T10:00:00Z"}])
    ingest(engine, [{"type": "add_to_cart", "anonymous_id": "other", "ts": "2026-04-30T10:00:00Z"}])
    ingest(engine, [{"type": "page_view", "user_id": "u", "ts": "2026-04-30T11:00:00Z"}])
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "carts.yaml").write_text("name: carts\nrule: {event: add_to_cart}\n")
    run_segments(engine, END, kinds=KINDS, definitions=load_segment_files(folder, KINDS))
    profiles = models.Profile.__table__
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(profiles.c.user_id, profiles.c.id)).all())
    ingest(engine, [{"type": "identify", "user_id": "u", "anonymous_id": "anon"}])
    with engine.connect() as conn:
        merged = conn.execute(
            sa.select(profiles.c.id).where(profiles.c.merged_into.is_not(None))
        ).scalar_one()
    changes = evaluate_profiles(engine, {ids["u"]}, END + timedelta(minutes=1), kinds=KINDS)
    # The merged profile leaves, the survivor (with its events now) enters;
    # the unrelated member stays.
    assert sorted((c.profile_id, c.change) for c in changes) == sorted(
        [(merged, "exited"), (ids["u"], "entered")]
    )
    assert len(memberships(engine)["carts"]) == 2
