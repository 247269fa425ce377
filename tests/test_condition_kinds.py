"""The condition-kind registry: built-in and plugin kinds go through it alike,
and the evaluators know no kind by name (they dispatch through the kind)."""

from __future__ import annotations

import ast
import types
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core import ConditionKind
from core.db import open_db
from core.ingestion import ingest
from core.segments.batch import evaluate_sql
from core.segments.data import load_profile_data
from core.segments.evaluate import evaluate
from core.segments.explain import explain
from core.segments.kinds import BUILTIN_KIND_MODULES, ConditionKinds
from core.segments.language import SegmentError, parse_segment
from core.segments.sql import Compiler
from tests.conftest import PROJECT_ROOT

AS_OF = datetime(2026, 6, 1, 12, tzinfo=UTC)
BUILTIN = {"event", "last", "first", "sequence", "attribute", "consent", "score", "segment"}


def _never(*_):
    return False


def test_the_registry_lists_the_built_in_kinds():
    kinds = ConditionKinds()
    assert set(kinds) == kinds.builtin == BUILTIN
    assert all(kinds[name].name == name for name in kinds)


def test_plugin_kinds_join_the_built_ins_in_one_registry(register_plugin):
    from core.plugins import condition_kinds

    class Paths:
        @staticmethod
        def register_conditions(register):
            register(ConditionKind("visited_path", "", _never, lambda p, ctx: sa.false()))

    register_plugin(Paths)
    kinds = condition_kinds()
    # The default plugins' kinds (rfm_group) and the test's, beside the built-ins.
    assert set(kinds) - {"visited_path", "rfm_group"} == kinds.builtin == BUILTIN
    assert {"visited_path", "rfm_group"} <= set(kinds)


@pytest.mark.parametrize("name", ["all", "not", "sequence"])
def test_a_plugin_cannot_take_a_built_in_or_combinator_name(name):
    kinds = ConditionKinds()
    with pytest.raises(ValueError, match=f"condition kind '{name}' is built in"):
        kinds.register(ConditionKind(name, "", _never, lambda p, ctx: sa.false()))


def test_two_plugins_cannot_register_one_name():
    kinds = ConditionKinds()
    kind = ConditionKind("visited_path", "", _never, lambda p, ctx: sa.false())
    kinds.register(kind)
    with pytest.raises(ValueError, match="'visited_path' is registered twice"):
        kinds.register(kind)


def test_a_kind_needs_a_batch_form():
    with pytest.raises(ValueError, match="needs a sql or a features form"):
        ConditionKind("nothing", "", _never)


# -- a kind module added the way the built-ins are -------------------------------------


def _min_spend_module() -> types.ModuleType:
    """``{min_spend: N}``: purchases in the last 7 days sum to at least N.

    Written like a built-in kind module: a features form over the shared
    compiler, a Python form, next_change_at and explain figures.
    """
    window = timedelta(days=7)
    types_ = ("purchase",)

    def validate(params):
        if isinstance(params, bool) or not isinstance(params, int | float):
            raise ValueError("min_spend needs a number")
        return float(params)

    def recent(profile, as_of):
        return [
            e
            for e in profile.events
            if e.type == "purchase" and as_of - window < e.ts <= as_of and e.value is not None
        ]

    def python(n, profile, as_of):
        return sum(e.value for e in recent(profile, as_of)) >= n

    def next_change_at(n, profile, as_of):
        events = recent(profile, as_of)
        return min(e.ts for e in events) + window if events else None

    def features(n, request):
        key = request.measure("sum", "value", types_, window, ())
        request.changes_at(request.time(False, types_, window, ()), window)
        return lambda cols: sa.func.coalesce(cols[key], 0) >= n

    def figures(n, profile, as_of):
        events = recent(profile, as_of)
        return {"spent": sum(e.value for e in events)}, events

    def register_conditions(register):
        register(
            ConditionKind(
                "min_spend",
                "spent at least N in the last 7 days",
                python,
                validate=validate,
                features=features,
                next_change_at=next_change_at,
                figures=figures,
            )
        )

    module = types.ModuleType("min_spend")
    module.register_conditions = register_conditions
    return module


def test_a_kind_module_works_in_sql_python_and_explain(fresh_sqlite):
    kinds = ConditionKinds([*BUILTIN_KIND_MODULES, _min_spend_module()])
    assert "min_spend" in kinds.builtin
    engine = open_db(fresh_sqlite())
    day = timedelta(days=1)
    ingest(
        engine,
        [
            {"type": "purchase", "user_id": "a", "value": 60, "ts": (AS_OF - 2 * day).isoformat()},
            {"type": "purchase", "user_id": "a", "value": 50, "ts": (AS_OF - day).isoformat()},
            {"type": "purchase", "user_id": "b", "value": 200, "ts": (AS_OF - 9 * day).isoformat()},
            {"type": "purchase", "user_id": "c", "value": 30, "ts": (AS_OF - day).isoformat()},
        ],
    )
    rule = {"all": [{"min_spend": 100}, {"event": "purchase", "within": "7d"}]}
    segment = parse_segment({"name": "big", "rule": rule}, kinds=kinds)
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT user_id, id FROM profiles")).all())
        batch = evaluate_sql(conn, {"big": segment}, AS_OF)
        data = {u: load_profile_data(conn, pid, AS_OF) for u, pid in ids.items()}
    outcomes = {u: evaluate(segment.rule, d, AS_OF) for u, d in data.items()}
    assert batch.members["big"] == {ids["a"]}
    assert {u for u, o in outcomes.items() if o.member} == {"a"}
    # The oldest purchase in the window leaves it first: the same time both ways.
    assert batch.next_change_at[ids["a"]] == outcomes["a"].next_change_at == AS_OF + 5 * day
    report = explain(segment.rule, data["a"], AS_OF)
    node = report["rule"]["children"][0]
    assert node["kind"] == "min_spend" and node["params"] == {"min_spend": 100.0}
    assert node["value"] is True
    assert node["figures"] == {"spent": 110.0} and len(node["events"]) == 2
    with pytest.raises(SegmentError, match=r"rule.all\[0\].min_spend: min_spend needs a number"):
        parse_segment({"name": "big", "rule": {"all": [{"min_spend": "lots"}]}}, kinds=kinds)


def test_a_kind_modules_features_are_shared_with_the_built_ins():
    kinds = ConditionKinds([*BUILTIN_KIND_MODULES, _min_spend_module()])
    same = {"event": "purchase", "within": "7d", "sum": {"property": "value", "op": ">= 100"}}
    compiler = Compiler(AS_OF)
    for rule in ({"min_spend": 100}, same, {"min_spend": 5}):
        compiler.compile(parse_segment({"name": "s", "rule": rule}, kinds=kinds).rule)
    # One sum of purchase values over 7 days and one oldest-purchase time, for all three.
    assert len(compiler.f.event) == 2 and len(compiler.f.changes) == 1


# -- structure --------------------------------------------------------------------------


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("module", ["sql", "evaluate", "explain"])
def test_evaluators_know_no_built_in_kind(module):
    imported = _imports(PROJECT_ROOT / "core" / "segments" / f"{module}.py")
    assert not {m for m in imported if m.startswith("core.segments.kinds")}


def test_domain_code_never_fetches_the_plugin_manager():
    files = [
        *(PROJECT_ROOT / "core" / "segments").rglob("*.py"),
        *(PROJECT_ROOT / "core" / "ingestion").rglob("*.py"),
        PROJECT_ROOT / "core/scoring.py",
    ]
    fetching = [str(f) for f in files if "core.plugins" in _imports(f)]
    assert fetching == []
