"""The architecture rules of ARCHITECTURE.md, enforced: import-linter contracts
(pyproject.toml) over the real import graph, and what `import core` loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

from tests.contracts import PublicApiContract

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every configured contract ran (a contract dropped from the config would not).
    assert "Contracts: 6 kept, 0 broken." in done.stdout, done.stdout


def _graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        for name in (importer, imported):
            graph.add_module(name)
        graph.add_import(
            importer=importer, imported=imported, line_number=3, line_contents="import x"
        )
    return graph


def _public_api_check(graph: grimp.ImportGraph):
    contract = PublicApiContract(
        name="plugins use the public API",
        session_options={},
        contract_options={
            "source_modules": ["plugins"],
            "internal_package": "core",
            "public_modules": ["core", "core.types"],
        },
    )
    return contract.check(graph, verbose=False)


def test_public_api_contract_refuses_an_internal_import() -> None:
    graph = _graph(
        ("plugins", "plugins.good"),
        ("plugins.good", "core"),
        ("plugins.good", "core.types"),
        ("plugins.sneaky", "core.segments.sql"),
        ("plugins.sneaky", "sqlalchemy"),
    )
    check = _public_api_check(graph)
    assert not check.kept
    assert [(i["importer"], i["imported"]) for i in check.metadata["illegal"]] == [
        ("plugins.sneaky", "core.segments.sql")
    ]


def test_public_api_contract_keeps_public_imports() -> None:
    graph = _graph(
        ("plugins", "plugins.good"), ("plugins.good", "core"), ("plugins.good", "core.types")
    )
    assert _public_api_check(graph).kept


def test_import_core_loads_no_shell() -> None:
    code = (
        "import sys, core; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'marimo', 'fastapi'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
