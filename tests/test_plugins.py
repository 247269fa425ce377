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
import typer  # at module level: typer resolves the test commands' annotations here

from core import hookspecs
from core.db import open_db
from core.ingestion import ingest
from core.plugins import (
    DEFAULT_PLUGINS,
    build_manager,
    event_sources,
    events_ingested_hook,
    profiles_loaded_hook,
)
from core.types import EventSource, RawRecord
from tests.conftest import PROJECT_ROOT

HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "segflow_spec")
)
DOCS = PROJECT_ROOT / "docs" / "hooks"


def test_there_are_hooks():
    """HOOKS, which the parametrised tests below run over, is exactly the set of
    hooks pluggy takes from core.hookspecs (none escapes the docs and test checks),
    and it holds the hooks the architecture promises."""
    pm = build_manager()
    specified = {name for name, caller in vars(pm.hook).items() if caller.spec is not None}
    assert set(HOOKS) == specified
    assert {
        "register_event_sources",
        "on_events_ingested",
        "on_segment_change",
        "register_conditions",
        "register_scoring_models",
        "register_commands",
        "register_settings",
    } <= specified
    for hook in HOOKS:
        spec = getattr(hookspecs, hook)
        params = list(inspect.signature(spec).parameters)
        # Hooks that contribute named things take a register callback.
        assert not hook.startswith("register_") or params in (["register"], ["cli"]), hook


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
    from core.ingestion import import_file
    from core.plugins import file_sources

    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    report = import_file(engine, path, sources=file_sources())
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
    hook = events_ingested_hook(engine)
    ingest(engine, records, batch_size=2, on_stored=hook)
    assert [len(b) for b in batches] == [2, 2, 1]  # after each committed batch
    ingest(engine, records, on_stored=hook)  # all duplicates: nothing new, no call
    assert len(batches) == 3
    ingest(engine, [{"type": "search", "user_id": "u1"}])  # no on_stored: no hook
    assert len(batches) == 3


def test_hook_on_profiles_loaded(register_plugin, tmp_path):
    """A bulk load calls on_profiles_loaded once at its end; a plugin that
    implements it gets no on_events_ingested for that load, one that does not
    keeps its calls per batch; outside bulk loads both get per-batch calls."""
    loaded, per_batch, others = [], [], []

    class Evaluator:
        @staticmethod
        def on_profiles_loaded(profile_ids, engine):
            with engine.connect() as conn:  # the load is committed by then
                stored = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
            loaded.append((set(profile_ids), stored))

        @staticmethod
        def on_events_ingested(events):
            per_batch.append(len(events))

    class Watcher:
        @staticmethod
        def on_events_ingested(events):
            others.append(len(events))

    register_plugin(Evaluator)
    register_plugin(Watcher)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    records = [
        {"type": "page_view", "user_id": f"u{i % 4}", "ts": 1_700_000_000 + i} for i in range(9)
    ]
    ingest(
        engine,
        records,
        batch_size=4,
        bulk=True,
        on_stored=events_ingested_hook(engine, bulk=True),
        on_loaded=profiles_loaded_hook(engine),
    )
    with engine.connect() as conn:
        profiles = set(conn.exec_driver_sql("SELECT id FROM profiles").scalars())
    assert loaded == [(profiles, 9)] and len(profiles) == 4
    assert per_batch == [] and others == [4, 4, 1]
    more = [{"type": "search", "user_id": "u9", "ts": 1_700_000_100 + i} for i in range(3)]
    ingest(engine, more, batch_size=2, on_stored=events_ingested_hook(engine))
    assert per_batch == [2, 1] and others == [4, 4, 1, 2, 1] and len(loaded) == 1
    # A load that stores nothing new (all duplicates) touches no profile: no call.
    ingest(engine, records, bulk=True, on_loaded=profiles_loaded_hook(engine))
    assert len(loaded) == 1


def test_builtin_plugins_register_like_external_ones(monkeypatch):
    """Built-in plugins come in as entry points of the "segflow" group through the
    one loader installed plugins use; each module exposes its hooks only as
    hookimpls and imports nothing of core but its public API (core, core.http)."""
    import core.plugins as manager

    loaded = []
    real_load = manager._load
    monkeypatch.setattr(manager, "_load", lambda pm, ep: (loaded.append(ep), real_load(pm, ep)))
    pm = build_manager()
    assert [ep.name for ep in loaded[: len(DEFAULT_PLUGINS)]] == list(DEFAULT_PLUGINS)
    assert all(
        ep.group == "segflow" and ep.value == ep.name for ep in loaded[: len(DEFAULT_PLUGINS)]
    )
    # Nothing was registered any other way.
    assert [name for name, _ in pm.list_name_plugin()] == [ep.name for ep in loaded]
    assert {"jsonl", "csv"} <= set(event_sources(pm))
    public = re.compile(r"^\s*(?:from|import) (core(?:\.\w+)*)\b", re.M)
    for name in DEFAULT_PLUGINS:
        module = pm.get_plugin(name)
        impls = {n for n, f in vars(module).items() if callable(f) and hasattr(f, "segflow_impl")}
        assert impls, f"{name} implements no hook"
        assert impls == {c.name for c in pm.get_hookcallers(module)}, name
        # A function named like a hook but not marked would silently never be called.
        assert {n for n in vars(module) if n in HOOKS} == impls, name
        files = [Path(module.__file__)]
        if Path(module.__file__).name == "__init__.py":
            files = sorted(Path(module.__file__).parent.glob("*.py"))
        for path in files:
            imported = set(public.findall(path.read_text()))
            assert imported <= {"core", "core.http"}, f"{path} imports {imported}"


def test_a_plugin_hookimpl_that_names_no_hook_is_refused(tmp_path, monkeypatch):
    import importlib.metadata

    import pluggy

    (tmp_path / "segflow_typo.py").write_text(
        "from core import hookimpl\n\n@hookimpl\ndef register_comands(cli):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("typo", "segflow_typo", "segflow")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep])
    with pytest.raises(pluggy.PluginValidationError, match="register_comands"):
        build_manager()


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


def test_hook_register_commands(register_plugin, tmp_path, monkeypatch, capsys):
    from core import UsageError
    from core.cli import main

    def count(ctx: typer.Context, kind: str) -> None:
        """How many events of a type."""
        if not kind.islower():
            raise UsageError(f"{kind!r}: event types are lower case")
        from core import count_events

        total = count_events(ctx.obj.engine())
        typer.echo(f"{kind}: {total} events in {ctx.obj.settings.database_url}")

    class Counter:
        @staticmethod
        def register_commands(cli):
            app = typer.Typer()
            app.command("count")(count)
            cli.add_command(typer.main.get_command(app), "count")
            # A command inside a core group, as `scores fit` does.
            cli.commands["segments"].add_command(typer.main.get_command(app), "count")

    register_plugin(Counter)
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/db.sqlite"
    ingest(open_db(db), [{"type": "search", "user_id": "u1", "ts": "2026-01-01T00:00:00Z"}])
    assert main(["--db", db, "count", "search"]) == 0
    assert capsys.readouterr().out.strip() == f"search: 1 events in {db}"
    assert main(["--db", db, "segments", "count", "search"]) == 0
    assert "search: 1 events" in capsys.readouterr().out
    assert main(["--db", db, "count", "Search"]) == 2
    assert capsys.readouterr().err.strip() == "error: 'Search': event types are lower case"


def test_a_plugin_command_cannot_replace_another(register_plugin, capsys):
    from core.cli import main

    class Thief:
        @staticmethod
        def register_commands(cli):
            app = typer.Typer()
            app.command("import")(lambda: None)
            cli.add_command(typer.main.get_command(app), "import")

    register_plugin(Thief)
    assert main(["plugins"]) == 1
    assert "the command segflow 'import' is defined twice" in capsys.readouterr().err


def test_hook_register_settings(register_plugin, tmp_path, monkeypatch):
    from pydantic import BaseModel, ConfigDict, Field

    from core.config import ConfigError, Settings, load_settings

    class Feed(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str
        every: float = Field(default=60.0, gt=0)

    class Mood(BaseModel):
        model_config = ConfigDict(extra="forbid")
        word: str = "hello"

    class Feeds:
        @staticmethod
        def register_settings(register):
            register("sources.feed", list[Feed])
            register("mood", Mood)

    register_plugin(Feeds)
    config = tmp_path / "segflow.toml"
    monkeypatch.setenv("SEGFLOW_CONFIG", str(config))
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    config.write_text(
        '[segflow]\nbatch_size = 10\n\n[[segflow.sources.feed]]\nname = "a"\nevery = 5\n'
        '\n[[segflow.sources.feed]]\nname = "b"\n'
    )
    settings = load_settings()
    assert settings.batch_size == 10
    assert settings.plugin("sources.feed") == [Feed(name="a", every=5), Feed(name="b")]
    assert settings.plugin("mood") == Mood()  # not in the file: the defaults
    assert Settings().plugin("sources.feed") == []
    # A bad value names the file, the section and the key; so does an unknown key.
    config.write_text('[[sources.feed]]\nname = "a"\n\n[[sources.feed]]\nname = "b"\nevery = 0\n')
    with pytest.raises(ConfigError) as bad:
        load_settings()
    assert str(bad.value) == f"{config}: [sources.feed] 1.every: Input should be greater than 0"
    config.write_text('[mood]\nwrd = "hi"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{config}: [mood] wrd: unknown key")):
        load_settings()
    config.write_text('[sources.fed]\nname = "a"\n')
    with pytest.raises(ConfigError) as unknown:
        load_settings()
    assert str(unknown.value).startswith(f"{config}: field 'sources.fed': unknown setting")
    assert "[sources.feed]" in str(unknown.value)
    with pytest.raises(ConfigError, match=r"no plugin registered the settings section \[nope\]"):
        Settings().plugin("nope")


def test_two_plugins_cannot_claim_one_settings_section(register_plugin):
    from pydantic import BaseModel

    from core.plugins import settings_sections

    class A:
        @staticmethod
        def register_settings(register):
            register("sources", BaseModel)

    register_plugin(A)
    # "sources" would swallow the built-in [sources.poll] and [sources.stream].
    with pytest.raises(ValueError, match="overlap"):
        settings_sections()


def _greeter_distribution(root: Path) -> Path:
    """A third-party plugin with a command and a settings section, installed as a
    distribution (dist-info with an entry point) on the path."""
    (root / "segflow_greeter.py").write_text(
        textwrap.dedent(
            '''
            from typing import Annotated

            import typer
            from pydantic import BaseModel, ConfigDict, Field

            from core import hookimpl


            class Greeting(BaseModel):
                model_config = ConfigDict(extra="forbid")
                word: str = "hello"
                times: int = Field(default=1, ge=1)


            def greet(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
                """Greet someone as [greeter] says."""
                config = ctx.obj.settings.plugin("greeter")
                for _ in range(config.times):
                    ctx.obj.out.print(f"{config.word} {name}")


            @hookimpl
            def register_settings(register):
                register("greeter", Greeting)


            @hookimpl
            def register_commands(cli):
                app = typer.Typer()
                app.command("greet")(greet)
                cli.add_command(typer.main.get_command(app), "greet")
            '''
        )
    )
    info = root / "segflow_greeter-0.3.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segflow-greeter\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[segflow]\ngreeter = segflow_greeter\n")
    return root


def test_a_third_party_plugin_adds_a_command_that_reads_its_settings(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{_greeter_distribution(site)}:{PROJECT_ROOT}"}
    for name in ("SEGFLOW_LOAD_PLUGINS", "SEGFLOW_CONFIG", "SEGFLOW_DATABASE_URL", "SEGFLOW_DEBUG"):
        env.pop(name, None)

    def segflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "core.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )

    config = tmp_path / "segflow.toml"
    config.write_text(
        '[segflow]\ndatabase_url = "sqlite:///x.db"\n\n[segflow.greeter]\nword = "hi"\ntimes = 2\n'
    )
    done = segflow("greet", "Ada")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi Ada\nhi Ada\n", "")
    listed = {r["name"]: r for r in json.loads(segflow("plugins", "--json").stdout)}
    assert listed["greeter"]["version"] == "0.3.0"
    assert listed["greeter"]["hooks"] == ["register_commands", "register_settings"]
    # With a [segflow] table the section belongs inside it; outside it is not ignored.
    config.write_text('[segflow]\ndatabase_url = "sqlite:///x.db"\n\n[greeter]\nword = "hi"\n')
    outside = segflow("greet", "Ada")
    assert outside.returncode == 1
    assert outside.stderr.startswith("error: segflow.toml: [greeter] is outside [segflow]")
    config.write_text('[greeter]\nword = "hi"\ntimes = "often"\n')
    bad = segflow("greet", "Ada")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "error: segflow.toml: [greeter] times: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    config.write_text("[greeter]\ntimes = 0\n")
    assert "segflow.toml: [greeter] times: Input should be greater than or equal to 1" in (
        segflow("greet", "Ada").stderr
    )
    # Without the plugin its section is unknown, and named.
    env["SEGFLOW_LOAD_PLUGINS"] = "plugins.sources.files"
    gone = segflow("plugins")
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: segflow.toml: field 'greeter': unknown setting")


def test_the_public_api_is_complete_and_cheap_to_import():
    """Every name core exports resolves; the TYPE_CHECKING imports, _LAZY and
    __all__ agree; and `import core` (or a plugin's `from core import hookimpl`)
    loads neither the engine nor Prefect, marimo or FastAPI."""
    import core

    eager = {n for n in core.__all__ if n in vars(core)}
    assert set(core.__all__) == eager | set(core._LAZY)
    for name in core.__all__:
        assert getattr(core, name) is not None, name
    probe = (
        "import sys, core\n"
        "from core import EventSource, hookimpl\n"
        "print(sorted(m for m in ('fastapi', 'prefect', 'marimo', 'core.ingestion', 'core.cli')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert loaded.strip() == "[]"


# Run a command in a fresh interpreter and report what it imported.
_IMPORTED_AFTER = """
import json, sys
from core.cli import main
status = main(sys.argv[1:])
print(json.dumps([status, sorted(sys.modules)]))
"""
# What no command needs before its own work starts.
_HEAVY = ("sqlalchemy", "alembic", "sqlmodel", "numpy", "scipy", "pandas", "fastapi", "httpx")


def test_a_core_command_starts_without_importing_plugins_or_the_engine(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{_greeter_distribution(site)}:{PROJECT_ROOT}"}
    for name in ("SEGFLOW_LOAD_PLUGINS", "SEGFLOW_CONFIG", "SEGFLOW_DATABASE_URL", "SEGFLOW_DEBUG"):
        env.pop(name, None)

    def imported(*args: str) -> tuple[int, set[str], str]:
        done = subprocess.run(
            [sys.executable, "-c", _IMPORTED_AFTER, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        )
        status, modules = json.loads(done.stdout.splitlines()[-1])
        return status, set(modules), done.stdout

    status, modules, _ = imported("segments", "run", "--help")
    assert status == 0
    plugin_modules = {m for m in modules if m.startswith(("plugins", "segflow_greeter"))}
    assert plugin_modules == set()
    assert {m.partition(".")[0] for m in modules} & set(_HEAVY) == set()
    # A plugin's command is still found: its plugin loads when the name is not the core's.
    status, modules, out = imported("greet", "--help")
    assert status == 0 and "Greet someone" in out and "segflow_greeter" in modules
    # So is a plugin's command inside a core group (scores fit, from predictive).
    status, modules, out = imported("scores", "fit", "--help")
    assert status == 0 and "plugins.scoring.predictive" in modules


def test_hook_register_esp_connectors(register_plugin, tmp_path):
    """A plugin's connector delivers through the same path as the built-in ones:
    its session opened once per run, each message recorded, sent once."""
    import contextlib

    import sqlalchemy as sa

    from core.consents import set_consent
    from core.db.tables import MESSAGES
    from core.personalize.delivery import deliver
    from core.plugins import esp_connectors
    from core.types import EspConnector, RenderedEmail

    opened: list[list] = []

    @contextlib.contextmanager
    def open_postbox(settings):
        delivered: list = []
        opened.append(delivered)
        yield delivered

    def send(email, message, delivered):
        delivered.append((email.to, str(message["Message-ID"])))
        return f"pb-{len(delivered)}"

    class Postbox:
        @staticmethod
        def register_esp_connectors(register):
            register(
                EspConnector(
                    "postbox",
                    "a list in memory",
                    send=send,
                    sender=lambda settings: "Shop <news@shop.example>",
                    open=open_postbox,
                )
            )

    register_plugin(Postbox)
    connector = esp_connectors()["postbox"]
    assert {"smtp", "outbox", "postbox"} <= set(esp_connectors())
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    ingest(engine, [{"type": "identify", "user_id": "u1", "traits": {"email": "u1@x.io"}}])
    set_consent(engine, "u1", "email", True, "signup")
    email = RenderedEmail(1, "u1@x.io", "welcome", "1", "Hi", "<p>Hi</p>", "Hi", {}, "w:1")
    assert deliver(engine, [email], via=connector, settings=None).sent == 1
    assert deliver(engine, [email], via=connector, settings=None).earlier == {"sent": 1}
    assert [len(run) for run in opened] == [1, 0]
    assert opened[0][0][0] == "u1@x.io" and opened[0][0][1].endswith("@shop.example>")
    with engine.connect() as conn:
        row = conn.execute(sa.select(MESSAGES.c.status, MESSAGES.c.provider_id)).one()
    assert tuple(row) == ("sent", "pb-1")

    class Clash:
        @staticmethod
        def register_esp_connectors(register):
            register(EspConnector("smtp", "another smtp"))

    register_plugin(Clash)
    with pytest.raises(ValueError, match="ESP connector 'smtp' is registered twice"):
        esp_connectors()


def _email_probe(tmp_path, text: str):
    """A database with one person and a template folder holding ``probe``."""
    from core.config import Settings

    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    ingest(
        engine,
        [{"type": "identify", "user_id": "u1", "email": "u1@example.com",
          "traits": {"first_name": "Ada", "tier": "gold"}}],
    )  # fmt: skip
    (tmp_path / "probe.html.j2").write_text("{# subject: probe #}\n<p>probe</p>")
    (tmp_path / "probe.txt.j2").write_text(text)
    settings = Settings(
        secret_key="a-test-secret-of-enough-length", email={"templates": [tmp_path]}
    )
    return engine, settings


def test_hook_template_context(register_plugin, tmp_path):
    from core.personalize import render_email
    from core.personalize.errors import TemplateError

    seen = []

    class Loyalty:
        @staticmethod
        def template_context(profile, message):
            seen.append((profile["user_id"], message.template, message.preview, message.key))
            return {"loyalty": {"tier": profile["attributes"]["tier"].upper(), "points": 120}}

    register_plugin(Loyalty)
    engine, settings = _email_probe(tmp_path, "{{ loyalty.tier }} {{ loyalty.points }}")
    email = render_email(engine, "probe", 1, settings=settings, message_key="k1")
    assert email.text == "GOLD 120"
    preview = render_email(engine, "probe", 1, settings=settings, tracking=False)
    assert preview.text == "GOLD 120"
    assert seen == [("u1", "probe", False, "k1"), ("u1", "probe", True, preview.idempotency_key)]

    class Greedy:
        @staticmethod
        def template_context(profile, message):
            return {"cart": []}

    register_plugin(Greedy)
    with pytest.raises(TemplateError, match="'cart' is already in the context"):
        render_email(engine, "probe", 1, settings=settings)


def test_hook_template_filters(register_plugin, tmp_path):
    from core.personalize import render_email
    from core.personalize.errors import TemplateError

    class Shouting:
        @staticmethod
        def template_filters(register):
            register("shout", lambda value, mark="!": f"{str(value).upper()}{mark}")

    register_plugin(Shouting)
    engine, settings = _email_probe(
        tmp_path, "{{ profile.first_name|shout }} {{ 'hi'|shout('?') }}"
    )
    assert render_email(engine, "probe", 1, settings=settings).text == "ADA! HI?"
    # collected once: the fresh lambda of each hook call does not recompile the templates
    from core.personalize.render import templates_for

    compiled = templates_for(settings).get("probe")
    render_email(engine, "probe", 1, settings=settings)
    assert templates_for(settings).get("probe") is compiled

    class Usurper:
        @staticmethod
        def template_filters(register):
            register("money", lambda value: "free")

    register_plugin(Usurper)
    with pytest.raises(TemplateError, match="template filter 'money' is built in"):
        render_email(engine, "probe", 1, settings=settings)


def test_hook_register_recommenders(register_plugin, tmp_path):
    """A plugin's recommender is refreshed and served through core; the core
    drops what the plugin returns that the person bought, that is out of stock
    or not in the catalogue, whatever the plugin does."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    import core
    from core import EVENTS, PRODUCT_POPULARITY, Recommender, RecommenderTables

    def refresh(conn, as_of):
        popular = (
            sa.select(EVENTS.c.product_id, sa.func.count())
            .where(
                EVENTS.c.type == "purchase",
                EVENTS.c.product_id.is_not(None),
                EVENTS.c.ts <= as_of,
                EVENTS.c.ts > as_of - timedelta(days=30),
            )
            .group_by(EVENTS.c.product_id)
        )
        return RecommenderTables(popular=popular)

    def recommend(conn, history, k, as_of):
        rows = conn.execute(
            sa.select(PRODUCT_POPULARITY.c.product_id, PRODUCT_POPULARITY.c.score)
            .where(PRODUCT_POPULARITY.c.recommender == "trending")
            .order_by(PRODUCT_POPULARITY.c.score.desc(), PRODUCT_POPULARITY.c.product_id)
        )
        return list(rows)  # bought or out of stock: the core's to drop

    class Trending:
        @staticmethod
        def register_recommenders(register):
            register(Recommender("trending", "most bought lately", recommend, refresh))

    register_plugin(Trending)
    assert {"related", "trending"} <= set(core.recommenders())
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    # Sales: a 5, b 4, c 3 (out of stock), d 2, e 1 (not in the catalogue);
    # old sales of f fall outside the 30 days.
    sales = {"a": 5, "b": 4, "c": 3, "d": 2, "e": 1, "f": 9}
    events = []
    for product, n in sales.items():
        days = 60 if product == "f" else 1
        for i in range(n):
            ts = (now - timedelta(days=days, minutes=i)).isoformat()
            events.append({"type": "purchase", "user_id": f"{product}{i}", "product_id": product})
            events[-1]["ts"] = ts
    events.append({"type": "purchase", "user_id": "me", "product_id": "a", "ts": now.isoformat()})
    assert ingest(engine, events).ok
    core.load_products(engine, [{"id": p, "in_stock": p != "c"} for p in "abcdf"])
    (done,) = core.refresh_recommendations(engine, now, names=["trending"])
    assert (done["related"], done["popular"]) == (0, 5)
    with engine.connect() as conn:
        me = conn.execute(sa.select(EVENTS.c.profile_id).where(EVENTS.c.ts == now)).scalar_one()
        picks = core.recommend(conn, me, k=2, as_of=now, recommender="trending")
        assert [p["id"] for p in picks] == ["b", "d"]
        assert [p["score"] for p in picks] == [4.0, 2.0]
        assert set(picks[0]) == {*core.PRODUCTS.c.keys(), "score"} - {"updated_at"}
        # Before the purchase, a was not bought yet.
        earlier = now - timedelta(seconds=1)
        assert [
            p["id"] for p in core.recommend(conn, me, k=9, as_of=earlier, recommender="trending")
        ] == ["a", "b", "d"]
    with engine.connect() as conn, pytest.raises(ValueError, match="unknown recommender 'nope'"):
        core.recommend(conn, me, recommender="nope")

    class Twice:
        @staticmethod
        def register_recommenders(register):
            register(Recommender("trending", "again", recommend))

    register_plugin(Twice)
    with pytest.raises(ValueError, match="recommender 'trending' is registered twice"):
        core.recommenders()


def test_hook_register_triggers(register_plugin, tmp_path):
    """A plugin's trigger starts runs from the events it picks, with the key it gives."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from core import Entry, Trigger
    from core.automation import run_tick
    from core.automation.language import default_registry, parse_workflow
    from core.db.tables import WORKFLOW_STATES
    from core.plugins import events_ingested_hook

    def on_events(campaign, events):
        return [
            Entry(e.profile_id, e.ts, e.event.campaign)
            for e in events
            if e.type == "email_click" and e.event.campaign.startswith(campaign)
        ]

    class Clicks:
        @staticmethod
        def register_triggers(register):
            register(Trigger("clicked", "clicked a campaign", str, on_events=on_events))

    register_plugin(Clicks)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    wf = parse_workflow(
        {"name": "clickers", "trigger": {"clicked": "spring"}, "reentry": "always",
         "steps": [{"wait": "1d"}]},
        default_registry(),
    )  # fmt: skip
    run_tick(engine, definitions={"clickers": wf})
    now = datetime.now(UTC).isoformat()
    ingest(
        engine,
        [
            {"type": "email_click", "user_id": "u1", "ts": now, "campaign": "spring_a"},
            {"type": "email_click", "user_id": "u1", "ts": now, "campaign": "autumn"},
            {"type": "email_click", "user_id": "u1", "ts": now, "campaign": "spring_b"},
        ],
        on_stored=events_ingested_hook(engine),
    )
    with engine.connect() as conn:
        keys = conn.execute(sa.select(WORKFLOW_STATES.c.entry_key)).scalars().all()
    assert sorted(keys) == ["spring_a", "spring_b"]


def test_hook_register_actions(register_plugin, tmp_path):
    """A plugin's action is validated at load, recorded when reached, performed
    once, and a workflow naming an unknown action is refused with its name."""
    from datetime import UTC, datetime

    from core import Action, ActionResult, Entry
    from core.automation import perform_pending, run_tick
    from core.automation.engine import enter
    from core.automation.language import WorkflowError, default_registry, parse_workflow

    performed = []

    def validate(value):
        if not isinstance(value, dict) or "channel" not in value:
            raise ValueError("needs a channel")
        return value

    def perform(call):
        performed.append((call.key, call.params["channel"], call.profile_id))
        return ActionResult()

    class Chat:
        @staticmethod
        def register_actions(register):
            register(Action("notify_chat", "post to chat", validate, perform))

    definition = {"name": "chatty", "trigger": {"segment_entered": "vip"},
                  "steps": [{"notify_chat": {"channel": "#sales"}}]}  # fmt: skip
    with pytest.raises(WorkflowError, match="no loaded plugin registers an action named"):
        parse_workflow(definition, default_registry())
    register_plugin(Chat)
    with pytest.raises(WorkflowError, match=r"steps\[0\]\.notify_chat: needs a channel"):
        parse_workflow({**definition, "steps": [{"notify_chat": {}}]}, default_registry())
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    run_tick(engine, definitions={"chatty": parse_workflow(definition, default_registry())})
    ingest(engine, [{"type": "identify", "user_id": "u1"}])
    now = datetime.now(UTC)
    enter(engine, {"chatty": [Entry(1, now)]}, as_of=now)
    perform_pending(engine, None)
    perform_pending(engine, None)
    assert performed == [("wf:chatty:1:steps[0]", "#sales", 1)]


def test_hook_register_monitor_checks(register_plugin, tmp_path):
    """A plugin's check runs with the built-in ones: what it returns opens an
    alert once, stays open while it fires and is resolved when it stops; a
    check returning another check's alerts fails alone, its alerts untouched."""
    from datetime import date

    from core import Alert, MonitorCheck, open_alerts, run_checks
    from core.config import Settings
    from core.plugins import monitor_checks

    firing = {"now": True}

    def run(engine, settings, day, now):
        if not firing["now"]:
            return []
        return [Alert("quiet_shop", "shop", "warning", "no orders today", day, {"orders": 0})]

    def wrong(engine, settings, day, now):
        return [Alert("quiet_shop", "shop", "warning", "not mine", day)]

    class Quiet:
        @staticmethod
        def register_monitor_checks(register):
            register(MonitorCheck("quiet_shop", "no orders today", run))
            register(MonitorCheck("confused", "returns another check's alerts", wrong))

    register_plugin(Quiet)
    checks = monitor_checks()
    built_in = {"segment_drift", "source_freshness", "data_quality", "misclassified_segment"}
    assert {"quiet_shop", "confused"} | built_in <= set(checks)
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    day = date(2026, 11, 30)
    first = run_checks(engine, Settings(), day)
    assert "returned an alert of check 'quiet_shop'" in first.errors["confused"]
    again = run_checks(engine, Settings(), day)
    (alert,) = open_alerts(engine)
    assert (alert["check"], alert["subject"], alert["message"]) == (
        "quiet_shop",
        "shop",
        "no orders today",
    )
    assert first.opened["quiet_shop"] == [alert["id"]] and again.updated["quiet_shop"] == [
        alert["id"]
    ]
    firing["now"] = False
    assert run_checks(engine, Settings(), day).resolved["quiet_shop"] == [alert["id"]]
    assert open_alerts(engine) == []
