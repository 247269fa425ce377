"""The audit log of admin actions (core.audit, `segflow audit`, docs/audit.md).

Every admin action, run through its real command or route on the test shop,
writes exactly one record naming who, what, on what and when, holding no
one's email or user id; a failed action writes none.
"""

from __future__ import annotations

import getpass
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from core.audit import ACTIONS, current_actor, list_records, record
from core.db import open_db
from core.db.tables import AUDIT, IDENTITIES
from core.privacy.suppress import keyed_hash
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.mailchimp import API_KEY, DEFAULT_LIST_ID
from plugins.esp.fakes.server import running
from tests.helpers import serving
from tests.shop import build_shop

SECRET = "audit-test-secret-key-0123456789"
TEAM = "ops-team"
WORKFLOW = """
name: tent_followup
trigger: {segment_entered: tent_viewers}
steps:
  - wait: 1d
"""
SEGMENT = "name: all_buyers\nrule: {event: purchase, within: 365d}\n"


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audit-shop")
    shop = build_shop(f"sqlite:///{folder}/shop.db", folder)
    shop.engine.dispose()
    return folder / "shop.db"


@pytest.fixture(scope="module")
def mailchimp() -> Iterator[str]:
    with running(make_fake("mailchimp")) as base_url:
        yield base_url


@dataclass
class Project:
    url: str
    folder: Path
    run: Callable[..., tuple[int, str, str]]
    engine: Any = field(init=False)

    def __post_init__(self) -> None:
        self.engine = open_db(self.url)

    def new_records(self, after: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(AUDIT).where(AUDIT.c.id > after).order_by(AUDIT.c.id))
            return [dict(r._mapping) for r in rows]

    def last_id(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(AUDIT.c.id), 0))).scalar()

    def people_ids(self) -> set[str]:
        """Every email, user id and anonymous id the shop knows."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(IDENTITIES.c.value)).scalars())


@pytest.fixture
def project(shop_file, mailchimp, tmp_path, run, monkeypatch) -> Project:
    shutil.copy(shop_file, tmp_path / "shop.db")
    (tmp_path / "segflow.toml").write_text(
        f'[segflow]\nsecret_key = "{SECRET}"\n\n'
        "[[segflow.connectors]]\n"
        f'name = "mc"\nkind = "mailchimp"\nbase_url = "{mailchimp}"\n'
        'api_key_env = "MC_AUDIT_KEY"\nsegments = ["cart_abandoners"]\n'
        f'options = {{audience_id = "{DEFAULT_LIST_ID}"}}\n'
    )
    (tmp_path / "segs").mkdir()
    (tmp_path / "segs" / "all_buyers.yaml").write_text(SEGMENT)
    (tmp_path / "wfs").mkdir()
    (tmp_path / "wfs" / "tent_followup.yaml").write_text(WORKFLOW)
    monkeypatch.setenv("MC_AUDIT_KEY", API_KEY)
    monkeypatch.setenv("SEGFLOW_ACTOR", TEAM)
    monkeypatch.delenv("SEGFLOW_SECRET_KEY", raising=False)
    url = f"sqlite:///{tmp_path}/shop.db"

    def cli(*args: str) -> tuple[int, str, str]:
        return run("--db", url, *args)

    return Project(url, tmp_path, cli)


def _key(project: Project) -> None:
    from core.keys import create_key

    create_key(project.engine, "ops", ["admin"], actor="setup")


def _hash(user_id: str) -> str:
    return keyed_hash(SECRET, "user_id", user_id)


# (command line, action, target, setup): each admin action as an operator runs it.
ACTS = {
    "key-create": (["keys", "create", "--name", "ops", "--scopes", "admin"], "key.create", "ops",
                   None),
    "key-rotate": (["keys", "rotate", "ops"], "key.rotate", "ops", _key),
    "key-revoke": (["keys", "revoke", "ops"], "key.revoke", "ops", _key),
    "export": (["privacy", "export", "u_ada"], "privacy.export", _hash("u_ada"), None),
    "erase": (["privacy", "erase", "u_bob", "--no-vacuum"], "privacy.erase", _hash("u_bob"),
              None),
    "segment-define": (["segments", "run", "--dir", "segs"], "segment.define", "all_buyers",
                       None),
    "workflow-define": (["workflows", "run-tick", "--dir", "wfs", "--no-perform"],
                        "workflow.define", "tent_followup", None),
    "send": (["send", "cart_abandonment", "--segment", "cart_abandoners", "--campaign", "spring"],
             "campaign.send", "spring", None),
    "sync": (["sync", "run"], "sync.run", "mc", None),
}  # fmt: skip


# Part of each record's details: what was done.
DETAILS = {
    "key-create": {"scopes": ["admin"]},
    "segment-define": {"version": 1, "file": "all_buyers.yaml"},
    "workflow-define": {"version": 1, "migrated": 0},
    "send": {"template": "cart_abandonment", "segment": "cart_abandoners", "via": "outbox",
             "members": 1},
    "sync": {"kind": "mailchimp", "segments": None, "reconcile": False},
}  # fmt: skip


@pytest.mark.parametrize("case", list(ACTS))
def test_every_admin_action_writes_one_record_naming_who_what_and_when(project, case, monkeypatch):
    args, action, target, setup = ACTS[case]
    if setup is not None:
        setup(project)
    if case == "key-create":  # no SEGFLOW_ACTOR: the OS user
        monkeypatch.delenv("SEGFLOW_ACTOR")
    if case == "send":  # the tracking links are signed with it
        monkeypatch.setenv("SEGFLOW_SECRET_KEY", SECRET)
    secrets = project.people_ids()
    assert "ada@example.com" in secrets and "u_ada" in secrets
    before, started = project.last_id(), datetime.now(UTC)
    status, out, err = project.run(*args)
    assert status == 0, err
    (row,) = project.new_records(before)
    assert (row["action"], row["target"]) == (action, target)
    assert row["actor"] == (getpass.getuser() if case == "key-create" else TEAM)
    assert started - timedelta(seconds=1) <= row["at"] <= datetime.now(UTC)
    assert row["details"] | DETAILS.get(case, {}) == row["details"], row["details"]
    if case == "export":  # the rows it counts are the rows it gave out
        tables = json.loads(out)["tables"]
        assert row["details"]["rows"] == {t: len(rows) for t, rows in tables.items() if rows}
        assert row["details"]["rows"]["events"] > 0
    text = json.dumps({k: v for k, v in row.items() if k != "at"}, default=str).lower()
    assert not [s for s in secrets if s.lower() in text], text
    assert "@" not in text
    assert action in ACTIONS


def test_a_schema_upgrade_is_recorded_once_and_a_no_op_is_not(tmp_path, run, monkeypatch):
    from core.db import head_revision, make_engine, upgrade

    monkeypatch.setenv("SEGFLOW_ACTOR", TEAM)
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(make_engine(url), "0014")
    for _ in range(2):  # the second finds nothing to do
        status, _, err = run("--db", url, "db", "upgrade")
        assert status == 0, err
    with make_engine(url).connect() as conn:
        rows = conn.execute(sa.select(AUDIT).where(AUDIT.c.action == "db.upgrade")).all()
    assert [(r.actor, r.target, r.details) for r in rows] == [
        (TEAM, head_revision(), {"from": "0014", "to": head_revision()})
    ]


FAILS = {
    "bad-scope": ["keys", "create", "--name", "ops", "--scopes", "root"],
    "rotate-unknown": ["keys", "rotate", "nobody"],
    "export-unknown": ["privacy", "export", "nobody-at-all"],
    "send-unknown-segment": ["send", "cart_abandonment", "--segment", "nope"],
    "bad-definition": ["segments", "run", "--dir", "bad"],
}


@pytest.mark.parametrize("case", list(FAILS))
def test_a_failed_admin_action_leaves_no_record(project, case):
    (project.folder / "bad").mkdir()
    (project.folder / "bad" / "x.yaml").write_text("name: x\nrule: {event: view, within: 3q}\n")
    before = project.last_id()
    status, _, err = project.run(*FAILS[case])
    assert status != 0 and "Traceback" not in err
    assert project.new_records(before) == []


def test_segflow_audit_lists_newest_first_and_filters(project):
    engine = project.engine
    old = datetime.now(UTC) - timedelta(days=3)
    with engine.begin() as conn:
        record(conn, "alice", "key.create", "old-key", {"scopes": ["admin"]}, at=old)
    assert project.run("keys", "create", "--name", "k1", "--scopes", "admin")[0] == 0
    assert project.run("keys", "revoke", "k1")[0] == 0

    def audit(*args: str) -> list[dict[str, Any]]:
        status, out, err = project.run("audit", "--json", *args)
        assert status == 0, err
        return json.loads(out)

    every = audit()
    # Admin records only: the shop's definitions, not its consent records.
    assert [(r["actor"], r["action"], r["target"]) for r in every] == [
        (TEAM, "key.revoke", "k1"),
        (TEAM, "key.create", "k1"),
        *[(getpass.getuser(), "segment.define", name)
          for name in ("buyers", "tent_viewers", "cart_abandoners")],
        ("alice", "key.create", "old-key"),
    ]  # fmt: skip
    assert [r["target"] for r in audit("--since", "1d")][:2] == ["k1", "k1"]
    assert "old-key" not in {r["target"] for r in audit("--since", "1d")}
    since = (old + timedelta(seconds=1)).isoformat()
    assert len(audit("--since", since)) == 5
    assert [r["target"] for r in audit("--actor", "alice")] == ["old-key"]
    assert [r["actor"] for r in audit("--actor", "ops-*")] == [TEAM, TEAM]
    assert [r["action"] for r in audit("--action", "key.create")] == ["key.create"] * 2
    assert [r["action"] for r in audit("--action", "key.*", "--limit", "1")] == ["key.revoke"]
    consents = audit("--action", "consent.*")
    assert consents and {r["action"] for r in consents} == {"consent.grant"}
    status, out, _ = project.run("audit")
    assert status == 0 and "key.revoke" in out and "alice" in out and "old-key" in out
    status, _, err = project.run("audit", "--since", "yesterday")
    assert status == 2 and "--since 'yesterday'" in err and "\n" not in err.strip()


def test_api_admin_actions_name_the_key(project):
    from core.api import create_app
    from core.config import Settings
    from core.keys import create_key

    engine = project.engine
    app = create_app(engine, Settings(database_url=project.url, secret_key=SECRET))
    _, key = create_key(engine, "dpo-desk", ["admin"])
    before = project.last_id()
    auth = {"Authorization": f"Bearer {key}"}
    with serving(app) as base, httpx.Client(base_url=base, headers=auth) as client:
        assert client.get("/v1/privacy/export/u_ada").status_code == 200
        assert client.get("/v1/privacy/export/nobody").status_code == 404
        assert client.post("/v1/privacy/erase/u_ada").status_code == 200
    rows = project.new_records(before)
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        ("key:dpo-desk", "privacy.export", _hash("u_ada")),
        ("key:dpo-desk", "privacy.erase", _hash("u_ada")),
    ]
    assert "ada" not in json.dumps([r["details"] for r in rows]).lower()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_record_writes_in_the_callers_transaction_and_refuses_emails(backend, request):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    engine = open_db(url)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record(conn, "alice", "key.create", "lost", {})
        raise RuntimeError("the change failed")
    with pytest.raises(ValueError, match=r"details\.who holds an email"), engine.begin() as conn:
        record(conn, "alice", "privacy.export", "x", {"who": "Ada@Example.com"})
    for bad in ("Key Create", "reset", "consent.grant"):
        with pytest.raises(ValueError, match="area.verb"), engine.begin() as conn:
            record(conn, "alice", bad, "x")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as conn:
        record(conn, "alice", "key.create", "a", {"scopes": ["admin"]}, at=at)
        record(conn, None, "key.revoke", "a", at=at + timedelta(hours=1))
    (newest, oldest) = list_records(engine)
    assert (newest.action, newest.actor, newest.at) == ("key.revoke", current_actor(),
                                                        at + timedelta(hours=1))  # fmt: skip
    assert (oldest.target, oldest.details, oldest.at) == ("a", {"scopes": ["admin"]}, at)
    assert [r.action for r in list_records(engine, since=at + timedelta(minutes=1))] == [
        "key.revoke"
    ]
    assert list_records(engine, actor="bob") == []
    # A plugin's own admin action, through the public API, is listed with the others.
    import core

    with engine.begin() as conn:
        core.record_audit(conn, core.key_actor("ops"), "myplugin.reset", "cache")
    assert [(r.actor, r.action) for r in list_records(engine, limit=1)] == [
        ("key:ops", "myplugin.reset")
    ]
    engine.dispose()


def test_the_actor_is_segflow_actor_else_the_os_user():
    assert current_actor({"SEGFLOW_ACTOR": " deploy-bot "}) == "deploy-bot"
    assert current_actor({}) == getpass.getuser()


def test_an_admin_record_is_not_erased_with_a_person_it_looks_like(project):
    with project.engine.connect() as conn:
        bob = conn.execute(sa.text("SELECT id FROM profiles WHERE user_id = 'u_bob'")).scalar()
    assert project.run("keys", "create", "--name", str(bob), "--scopes", "admin")[0] == 0
    exported = json.loads(project.run("privacy", "export", "u_bob")[1])
    assert {r["action"] for r in exported["tables"]["audit_log"]} <= {
        "consent.grant", "consent.withdraw", "profile.merge"
    }  # fmt: skip
    assert project.run("privacy", "erase", "u_bob", "--no-vacuum")[0] == 0
    kept = list_records(project.engine, action="key.create")
    assert [r.target for r in kept] == [str(bob)]
    with project.engine.connect() as conn:
        left = conn.execute(sa.select(AUDIT.c.action).where(AUDIT.c.target == str(bob))).all()
    assert [a for (a,) in left] == ["key.create"]
