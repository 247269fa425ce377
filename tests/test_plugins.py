"""The plugin system: every hook documented and tested; loading and restriction."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import hookspecs
from core.db import open_db
from core.ingest import ingest
from core.plugins import DEFAULT_PLUGINS, build_manager, event_sources
from core.types import EventSource, RawRecord
from tests.conftest import PROJECT_ROOT

HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "segflow_spec")
)
DOCS = PROJECT_ROOT / "docs" / "hooks"


def test_there_are_hooks():
    assert {"register_event_sources", "on_events_ingested"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring_and_a_docs_page(hook):
    spec = getattr(hookspecs, hook)
    assert inspect.getdoc(spec), f"hookspec {hook} has no docstring"
    page = DOCS / f"{hook}.md"
    assert page.is_file(), f"docs/hooks/{hook}.md is missing"
    text = page.read_text()
    args = ", ".join(inspect.signature(spec).parameters)
    assert text.startswith(f"# {hook}({args})"), f"{page} must start with '# {hook}({args})'"
    assert "```python" in text and "@hookimpl" in text, f"{page} needs an example"
    assert f"hooks/{hook}.md" in (PROJECT_ROOT / "docs" / "plugins.md").read_text()


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    names = {n for n, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    assert f"test_hook_{hook}" in names, f"add test_hook_{hook} to tests/test_plugins.py"


def test_hook_register_event_sources(register_plugin, tmp_path):
    def read_lines(path, options):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            user, kind = line.split()
            yield RawRecord(f"{path}:{n}", {"type": kind, "user_id": user})

    class WordsSource:
        @staticmethod
        def register_event_sources(register):
            register(EventSource("words", "user and type per line", (".words",), read_lines))

    register_plugin(WordsSource)
    assert "words" in event_sources()
    path = tmp_path / "a.words"
    path.write_text("u1 page_view\nu2 search\n")
    from core.ingest import import_file

    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    report = import_file(engine, path)
    assert (report.accepted, report.by_type) == (2, {"page_view": 1, "search": 1})


def test_duplicate_source_names_are_an_error(register_plugin):
    class Again:
        @staticmethod
        def register_event_sources(register):
            register(EventSource("csv", "a second csv"))

    register_plugin(Again)
    with pytest.raises(ValueError, match="event source 'csv' is registered twice"):
        event_sources()


def test_hook_on_events_ingested(register_plugin, tmp_path):
    batches = []

    class Watcher:
        @staticmethod
        def on_events_ingested(events):
            batches.append([(e.type, e.profile_id, e.ts.isoformat()) for e in events])

    register_plugin(Watcher)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    records = [{"type": "page_view", "user_id": "u1", "ts": 1_700_000_000 + i} for i in range(5)]
    ingest(engine, records, batch_size=2)
    assert [len(b) for b in batches] == [2, 2, 1]  # after each committed batch
    ingest(engine, records)  # all duplicates: nothing new, no call
    assert len(batches) == 3
    ingest(engine, [{"type": "search", "user_id": "u1"}], notify=False)
    assert len(batches) == 3


def test_builtin_plugins_register_like_external_ones():
    pm = build_manager()
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert {"jsonl", "csv"} <= set(event_sources(pm))


def _fake_distribution(root: Path) -> Path:
    """An installed third-party plugin: a module plus dist-info with an entry point."""
    (root / "segflow_hello.py").write_text(
        textwrap.dedent(
            """
            from core import EventSource, hookimpl

            @hookimpl
            def register_event_sources(register):
                register(EventSource("hello", "says hello", (".hello",)))
            """
        )
    )
    info = root / "segflow_hello-1.2.3.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segflow-hello\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[segflow]\nhello = segflow_hello\n")
    return root


def _plugins_json(tmp_path: Path, **env: str) -> list[dict]:
    environ = {**os.environ, "PYTHONPATH": f"{_fake_distribution(tmp_path)}:{PROJECT_ROOT}", **env}
    if "SEGFLOW_LOAD_PLUGINS" not in env:
        environ.pop("SEGFLOW_LOAD_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        check=True,
    ).stdout
    return json.loads(out)


def test_entry_point_plugins_are_loaded_and_listed(tmp_path):
    rows = {r["name"]: r for r in _plugins_json(tmp_path)}
    assert rows["hello"]["version"] == "1.2.3"
    assert rows["hello"]["hooks"] == ["register_event_sources"]
    assert rows["plugins.sources.files"]["builtin"] is True


def test_segflow_load_plugins_restricts_loading(tmp_path):
    rows = _plugins_json(tmp_path, SEGFLOW_LOAD_PLUGINS="hello")
    assert [r["name"] for r in rows] == ["hello"]
    assert _plugins_json(tmp_path, SEGFLOW_LOAD_PLUGINS="") == []


def test_docs_index_lists_only_real_hooks():
    listed = set(re.findall(r"hooks/(\w+)\.md", (PROJECT_ROOT / "docs" / "plugins.md").read_text()))
    assert listed == set(HOOKS)


def test_hook_on_segment_change(register_plugin, tmp_path):
    from core.plugins import condition_kinds, segment_change_hook
    from core.segments.store import load_segment_files, run_segments

    seen = []

    class Listener:
        @staticmethod
        def on_segment_change(changes):
            seen.extend((c.segment, c.change, c.version) for c in changes)

    register_plugin(Listener)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    ingest(engine, [{"type": "search", "user_id": "u1", "ts": "2026-01-01T00:00:00Z"}])
    (tmp_path / "s.yaml").write_text("name: searchers\nrule: {event: search, within: 1d}\n")
    from datetime import UTC, datetime

    kinds = condition_kinds()
    for as_of in (datetime(2026, 1, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)):
        run_segments(
            engine,
            as_of,
            kinds=kinds,
            definitions=load_segment_files(tmp_path, kinds),
            on_change=segment_change_hook(engine),
        )
    assert seen == [("searchers", "entered", 1), ("searchers", "exited", 1)]


def test_hook_register_conditions(register_plugin, tmp_path):
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from core import ConditionKind
    from core.plugins import condition_kinds
    from core.segments.batch import evaluate_sql
    from core.segments.data import load_profile_data
    from core.segments.evaluate import evaluate
    from core.segments.language import SegmentError, parse_segment

    def validate(params):
        if not isinstance(params, str) or not params.startswith("/"):
            raise ValueError("visited_path needs a path starting with /")
        return params

    def python(path, profile, as_of):
        return any(
            e.type == "page_view" and e.url == path and e.ts <= as_of for e in profile.events
        )

    def sql(path, ctx):
        e = ctx.events
        return sa.exists().where(
            e.c.profile_id == ctx.profile_id,
            e.c.type == "page_view",
            e.c.url == path,
            e.c.ts <= ctx.as_of,
        )

    class Paths:
        @staticmethod
        def register_conditions(register):
            register(ConditionKind("visited_path", "viewed this path", python, sql, validate))

    register_plugin(Paths)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    ingest(
        engine,
        [
            {"type": "page_view", "user_id": "a", "url": "/pricing", "ts": "2026-01-01T00:00:00Z"},
            {"type": "page_view", "user_id": "b", "url": "/blog", "ts": "2026-01-01T00:00:00Z"},
            {"type": "page_view", "user_id": "c", "url": "/pricing", "ts": "2026-03-01T00:00:00Z"},
        ],
    )
    kinds = condition_kinds()
    segment = parse_segment(
        {"name": "p", "rule": {"all": [{"visited_path": "/pricing"}]}}, kinds=kinds
    )
    as_of = datetime(2026, 2, 1, tzinfo=UTC)
    with engine.connect() as conn:
        in_sql = evaluate_sql(conn, {"p": segment}, as_of).members["p"]
        in_python = {
            pid
            for pid in (1, 2, 3)
            if evaluate(segment.rule, load_profile_data(conn, pid, as_of), as_of).member
        }
    assert in_sql == in_python == {1}
    with pytest.raises(
        SegmentError, match=r"rule.any\[0\].visited_path: visited_path needs a path"
    ):
        parse_segment({"name": "p", "rule": {"any": [{"visited_path": "pricing"}]}}, kinds=kinds)


def test_condition_kinds_cannot_shadow_built_ins(register_plugin):
    from core import ConditionKind
    from core.plugins import condition_kinds

    class Shadow:
        @staticmethod
        def register_conditions(register):
            register(ConditionKind("event", "no", lambda *a: True, lambda *a: None))

    register_plugin(Shadow)
    with pytest.raises(ValueError, match="'event' is built in"):
        condition_kinds()


def test_hook_register_scoring_models(register_plugin, tmp_path):
    from datetime import UTC, datetime

    from core import ScoreValue, ScoringModel
    from core.plugins import scoring_models
    from core.scoring import latest_scores, parse_definition, run_scores

    def score_all(conn, params, as_of, name):
        import sqlalchemy as sa

        from core.db.tables import EVENTS

        rows = conn.execute(
            sa.select(EVENTS.c.profile_id, sa.func.count())
            .where(EVENTS.c.ts <= as_of)
            .group_by(EVENTS.c.profile_id)
        )
        return {name: {pid: ScoreValue(n * params["weight"], {"events": n}) for pid, n in rows}}

    def validate(params):
        if not isinstance(params.get("weight"), int | float):
            raise ValueError("weight must be a number")
        return params

    class Activity:
        @staticmethod
        def register_scoring_models(register):
            register(ScoringModel("activity", "events times a weight", score_all, validate))

    register_plugin(Activity)
    assert {"points", "activity"} <= set(scoring_models())
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    ingest(engine, [{"type": "x", "user_id": "u", "ts": 1_700_000_000 + i} for i in range(3)])
    models = scoring_models()
    definition = parse_definition(
        {"name": "act", "model": "activity", "params": {"weight": 2}}, models=models
    )
    assert run_scores(engine, {"act": definition}, datetime(2030, 1, 1, tzinfo=UTC)) == {"act": 1}
    with engine.connect() as conn:
        (row,) = latest_scores(conn, 1)
    assert (row["score"], row["value"], row["components"]) == ("act", 6.0, {"events": 3})
    with pytest.raises(ValueError, match="weight must be a number"):
        parse_definition({"name": "act", "model": "activity", "params": {}}, models=models)
