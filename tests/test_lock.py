"""Reproducible installs: the environment the tests run in is the lock file's."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: {line!r} is not pinned with =="
            pins[_canonical(name)] = version
    return pins


def test_installed_versions_are_the_locked_ones() -> None:
    wrong = {
        name: (version, importlib.metadata.version(name))
        for name, version in _locked().items()
        if importlib.metadata.version(name) != version
    }
    assert not wrong, f"installed versions differ from {LOCK.name} (locked, installed): {wrong}"


def test_every_dependency_is_locked() -> None:
    # A dependency added to pyproject.toml without `make lock` would install unpinned.
    requires = importlib.metadata.requires("segflow") or []
    names = {_canonical(re.split(r"[ \[<>=!~;]", r, maxsplit=1)[0]) for r in requires}
    missing = sorted(names - set(_locked()))
    assert not missing, f"not in {LOCK.name}: {missing}; run make lock"
