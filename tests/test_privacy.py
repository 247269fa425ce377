"""Access and erasure of one person (core.privacy), on a small demo shop with
every kind of person data: events, a merged anonymous profile, consent,
segments and their history, scores, a workflow run and its action, a
message and a sync state.

- the export holds exactly the person's rows of every table, read back
  independently (every table of the schema is either a person table or
  named as holding no one's data);
- after an erasure no table, and no byte of the SQLite file or its WAL,
  holds their email or ids; the audit record names only a keyed hash; late
  events that name them are dropped as rejected;
- the deletion reaches the Mailchimp, Klaviyo and HubSpot fakes over HTTP,
  stays pending through injected faults and is confirmed by the next sync run;
- ``segflow privacy erase`` killed with SIGKILL after its commit, or after a
  connector deleted but before that was recorded, ends as an uninterrupted
  erasure once run again;
- the same export and erasure on PostgreSQL, the CLI and the API routes.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from sqlmodel import SQLModel

from core.automation.engine import enter, run_tick
from core.automation.language import default_registry, parse_workflow
from core.consents import set_consent
from core.db import open_db
from core.db.tables import AUDIT, PRIVACY_DELETIONS, PROFILES, SUPPRESSIONS
from core.ingestion import ingest
from core.personalize.messages import record
from core.plugins import condition_kinds, esp_connectors, scoring_models
from core.privacy.erase import erase_and_send, erase_person
from core.privacy.export import export_person
from core.privacy.person import NOT_PERSONAL, find_person
from core.privacy.suppress import REASON
from core.profiles import ProfileNotFound
from core.scoring import load_score_files, run_scores
from core.segments.store import load_segment_files, run_segments
from core.sync import run_sync
from core.sync.client import Backoff
from core.types import Entry, SyncTarget
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.server import Faults, running
from tests.conftest import PROJECT_ROOT
from tests.helpers import DEMO_END, segflow_child, serving

SECRET = "privacy-test-secret-key-0123456789"
WHO = "u000007"
ANON = "anon-erase-7"
PEOPLE = 20
WORKFLOW = """
name: privacy_welcome
trigger: {event: signed_up}
steps:
  - send: {template: welcome, via: outbox}
"""
KEY_ENV = "FAKE_ESP_API_KEY"
# What `segflow privacy erase` with a Mailchimp connector needs (it starts faster).
CHILD_PLUGINS = "plugins.sync,plugins.esp.mailchimp"
KINDS = {
    "mailchimp": ("0123456789abcdef0123456789abcdef-us21", "tag", {"audience_id": "a1b2c3d4e5"}),
    "klaviyo": ("pk_test", "list", {}),
    "hubspot": ("pat-na1-11111111-2222-4333-8444-555555555555", "list", {}),
}
# Person tables the demo person has rows in (evaluation_state and
# bulk_load_moves hold rows only for some people, or during a load).
EXPECTED_FILLED = {
    "profiles", "identities", "events", "consents", "scores", "memberships",
    "membership_changes", "messages", "workflow_states", "workflow_history",
    "workflow_actions", "sync_states", "audit_log",
}  # fmt: skip


def demo_events() -> list[list[dict]]:
    """The demo shop's events, then the person's anonymous visit, then their
    login: three loads, so the visit's profile exists before the login merges it."""
    from plugins.demo.generator import generate

    events = list(generate(PEOPLE, seed=7, days=30, end=DEMO_END))
    at = DEMO_END - timedelta(days=2)
    # An anonymous visit that the person's login then merges into their profile.
    visit = {
        "type": "page_view",
        "anonymous_id": ANON,
        "ts": at.isoformat(),
        "url": "https://shop.example.com/",
        "message_id": "privacy-anon-1",
    }
    login = {
        "type": "signed_up",
        "user_id": WHO,
        "anonymous_id": ANON,
        "ts": (at + timedelta(minutes=1)).isoformat(),
        "message_id": "privacy-login-1",
    }
    return [events, [visit], [login]]  # fmt: skip


def target(kind: str, url: str) -> SyncTarget:
    key, membership, options = KINDS[kind]
    return SyncTarget(
        name=f"{kind}_erase", kind=kind, base_url=url, api_key=key, segments=("recent_visitors",),
        membership=membership, options=options,
    )  # fmt: skip


def build(url: str, sync_url: str) -> dict:
    """The demo shop with every kind of person data; the person's identifiers."""
    engine = open_db(url)
    for load in demo_events():
        ingest(engine, load)
    set_consent(engine, WHO, "email", True, "test")
    kinds = condition_kinds()
    definitions = load_segment_files(PROJECT_ROOT / "examples" / "segments", kinds)
    run_segments(engine, DEMO_END - timedelta(days=1), kinds=kinds, definitions=definitions)
    run_segments(engine, DEMO_END, kinds=kinds)
    scores = load_score_files(PROJECT_ROOT / "examples" / "scores", scoring_models())
    run_scores(engine, scores, DEMO_END)
    wf = parse_workflow(yaml.safe_load(WORKFLOW), default_registry())
    run_tick(engine, as_of=DEMO_END, definitions={wf.name: wf})
    with engine.connect() as conn:
        person = find_person(conn, WHO)
        email = conn.execute(
            sa.select(PROFILES.c.email).where(PROFILES.c.id == person.profile_ids[0])
        ).scalar_one()
    pid = person.profile_ids[0]
    enter(engine, {wf.name: [Entry(pid, DEMO_END)]}, as_of=DEMO_END)
    record(engine, [{"profile_id": pid, "template": "welcome", "version": "v1",
                     "subject": f"Welcome {email}", "idempotency_key": f"privacy:{pid}",
                     "status": "sent", "via": "outbox"}])  # fmt: skip
    run_sync(engine, target("mailchimp", sync_url), esp_connectors()["mailchimp"])
    engine.dispose()
    return {"email": email, "user_id": WHO, "anonymous_id": ANON, "profile_ids": person}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Iterator[tuple[Path, dict, object]]:
    """The shop built once (SQLite, checkpointed into one file) and the
    Mailchimp fake its person was synced to; tests work on copies."""
    path = tmp_path_factory.mktemp("privacy") / "shop.db"
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        who = build(f"sqlite:///{path}", sync_url)
    engine = open_db(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    yield path, who, api


@pytest.fixture
def shop_copy(shop, tmp_path) -> tuple[str, dict]:
    path, who, _api = shop
    copy = tmp_path / "segflow.db"
    shutil.copy(path, copy)
    return f"sqlite:///{copy}", who


def person_rows(conn, pids: set[int], runs: set[int]) -> dict[str, list[dict]]:
    """Every table's rows that belong to the person, found by reading each table
    whole and looking at its columns (not through core.privacy.person)."""
    out = {}
    for table in SQLModel.metadata.sorted_tables:
        if table.name in NOT_PERSONAL:
            continue
        rows = []
        for row in conn.execute(sa.select(table)).mappings():
            row = dict(row)
            if (
                row.get("profile_id") in pids
                or (table.name == "profiles" and row["id"] in pids)
                or (table.name == "workflow_history" and row["run_id"] in runs)
                or (table.name == "audit_log" and row["target"] in {str(p) for p in pids})
                or row.get("from_profile") in pids
                or row.get("to_profile") in pids
            ):
                rows.append(row)
        key = [c.name for c in table.primary_key.columns]
        out[table.name] = sorted(rows, key=lambda r: [r[k] for k in key])
    return out


def identifiers_in(text: str, who: dict) -> list[str]:
    return [v for v in (who["email"], who["user_id"], who["anonymous_id"]) if v in text]


def test_every_table_is_a_person_table_or_named_as_holding_no_ones_data(shop_copy):
    url, _who = shop_copy
    document = export_person(open_db(url), WHO)
    tables = {t.name for t in SQLModel.metadata.sorted_tables}
    assert set(document["tables"]) | set(NOT_PERSONAL) == tables
    assert not set(document["tables"]) & set(NOT_PERSONAL)
    assert set(NOT_PERSONAL) <= tables, "a table named in NOT_PERSONAL no longer exists"


def test_the_export_holds_exactly_the_persons_rows_of_every_table(shop_copy):
    url, who = shop_copy
    engine = open_db(url)
    document = export_person(engine, WHO)
    # By email too: the same person, the same document.
    assert export_person(engine, who["email"])["tables"] == document["tables"]
    with engine.connect() as conn:
        person = find_person(conn, WHO)
        expected = person_rows(conn, set(person.profile_ids), set(person.run_ids))
    assert len(person.profile_ids) == 2, "the anonymous profile was not merged"
    assert set(document["tables"]) == set(expected)
    for name, rows in expected.items():
        # Through JSON, as a client reads it: datetimes as ISO text.
        want = json.loads(json.dumps(rows, default=lambda v: v.isoformat()))
        assert document["tables"][name] == want, name
    filled = {name for name, rows in document["tables"].items() if rows}
    assert filled >= EXPECTED_FILLED, EXPECTED_FILLED - filled
    assert document["subject"] == {"user_id": WHO, "profile_ids": list(person.profile_ids)}
    assert "recent_visitors" in document["segments"].values()
    assert {str(r["segment_id"]) for r in document["tables"]["memberships"]} <= set(
        document["segments"]
    )
    text = json.dumps(document)
    assert identifiers_in(text, who) == [who["email"], WHO, ANON]
    with pytest.raises(ProfileNotFound):
        export_person(engine, "nobody-at-all")


def _scan(url: str, who: dict) -> dict[str, list[str]]:
    """Each table holding any of the person's identifiers, with which."""
    found = {}
    engine = open_db(url)
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            text = json.dumps([list(r) for r in conn.execute(sa.select(table))], default=str)
            if hits := identifiers_in(text, who):
                found[table.name] = hits
    engine.dispose()
    return found


def _file_hits(url: str, who: dict) -> dict[str, list[str]]:
    path = Path(url.removeprefix("sqlite:///"))
    out = {}
    for f in (path, path.with_name(path.name + "-wal")):
        data = f.read_bytes() if f.exists() else b""
        hits = [v for v in (who["email"], who["user_id"], who["anonymous_id"])
                if v.encode() in data]  # fmt: skip
        if hits:
            out[f.name] = hits
    return out


def test_erasure_leaves_no_trace_in_any_table_nor_the_files_and_late_events_are_dropped(
    shop_copy, monkeypatch
):
    url, who = shop_copy
    assert _scan(url, who) and _file_hits(url, who), "the person is not in the shop to start with"
    engine = open_db(url)
    with engine.connect() as conn:
        others = conn.execute(sa.select(sa.func.count()).select_from(PROFILES)).scalar_one()
    report = erase_person(engine, WHO, secret_key=SECRET)
    assert report.deleted["events"] > 10 and report.deleted["profiles"] == 2
    assert report.suppressed == 3 and not report.pending
    engine.dispose()
    assert _scan(url, who) == {}
    assert _file_hits(url, who) == {}

    engine = open_db(url)
    with engine.connect() as conn:
        audit = conn.execute(sa.select(AUDIT).where(AUDIT.c.action == "privacy.erase")).one()
        left = conn.execute(sa.select(sa.func.count()).select_from(PROFILES)).scalar_one()
        hashes = conn.execute(sa.select(sa.func.count()).select_from(SUPPRESSIONS)).scalar_one()
    assert left == others - 2 and hashes == 3
    assert audit.target == report.subject and audit.details["deleted"] == report.deleted
    assert identifiers_in(json.dumps(audit._asdict(), default=str), who) == []

    # Late events naming them by any identifier are rejected, not stored.
    monkeypatch.setenv("SEGFLOW_SECRET_KEY", SECRET)
    late = ingest(engine, [
        {"type": "page_view", "user_id": WHO, "message_id": "late-1"},
        {"type": "page_view", "anonymous_id": ANON, "message_id": "late-2"},
        {"type": "identify", "user_id": "someone-new", "traits": {"email": who["email"].upper()},
         "message_id": "late-3"},
        {"type": "page_view", "user_id": "u000003", "message_id": "late-4"},
    ])  # fmt: skip
    assert late.accepted == 1
    assert [r.reason for r in late.rejected] == [REASON] * 3
    assert [r.location for r in late.rejected] == ["message late-1", "message late-2",
                                                   "message late-3"]  # fmt: skip
    with pytest.raises(ProfileNotFound), engine.connect() as conn:
        find_person(conn, WHO)
    # Erasing again: nothing is there, and it says so.
    again = erase_person(engine, who["email"], secret_key=SECRET)
    assert again.already_erased and again.subject == report.subject
    with pytest.raises(ProfileNotFound):
        erase_person(engine, "never-known", secret_key=SECRET)


def test_the_deletion_reaches_every_connector_and_stays_pending_through_faults(shop_copy):
    url, who = shop_copy
    engine = open_db(url)
    apis = {kind: make_fake(kind, "fast" if kind != "mailchimp" else None) for kind in KINDS}
    with running(apis["mailchimp"]) as mc, running(apis["klaviyo"]) as kl, \
            running(apis["hubspot"]) as hs:  # fmt: skip
        targets = {k: target(k, u) for k, u in (("mailchimp", mc), ("klaviyo", kl),
                                                 ("hubspot", hs))}  # fmt: skip
        pairs = [(t, esp_connectors()[k]) for k, t in targets.items()]
        with engine.begin() as conn:  # synced to the shop's own fake, not these
            conn.exec_driver_sql("DELETE FROM sync_states")
        for t, connector in pairs:
            run_sync(engine, t, connector)  # the person is there remotely
        assert apis["klaviyo"].profile_by_email(who["email"]) is not None
        assert who["email"] in apis["hubspot"].profiles()
        assert who["email"] in apis["mailchimp"].members()
        # Klaviyo fails every request while the erasure runs.
        apis["klaviyo"].faults = Faults(rate=1.0, kinds=("500",))
        report = erase_and_send(
            engine, WHO, secret_key=SECRET, targets=pairs,
            backoff=Backoff(attempts=2, base=0.01),
        )  # fmt: skip
        assert report.confirmed == {"mailchimp_erase": 1, "hubspot_erase": 1}
        assert list(report.pending) == ["klaviyo_erase"]
        assert "500" in next(iter(report.pending["klaviyo_erase"]))
        assert apis["klaviyo"].profile_by_email(who["email"]) is not None
        apis["klaviyo"].faults = Faults()
        # The next sync run of that target sends it again, and it is confirmed.
        again = run_sync(engine, targets["klaviyo"], esp_connectors()["klaviyo"])
        assert again.erased == 1 and not again.retry
        assert apis["klaviyo"].profile_by_email(who["email"]) is None
        assert who["email"] in apis["klaviyo"].deleted
        assert who["email"] in apis["hubspot"].erased()
        assert who["email"] not in apis["hubspot"].profiles()
        assert who["email"] in apis["mailchimp"].forgotten()
        assert run_sync(engine, targets["klaviyo"], esp_connectors()["klaviyo"]).erased == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(PRIVACY_DELETIONS)).scalar() == 0
    engine.dispose()
    # Confirmed everywhere: the pending rows, and the address with them, are gone.
    assert _scan(url, who) == {}


def _settings_file(folder: Path, sync_url: str) -> None:
    (folder / "segflow.toml").write_text(
        f'secret_key = "{SECRET}"\n'
        "[[connectors]]\n"
        'name = "mc"\nkind = "mailchimp"\n'
        f'base_url = "{sync_url}"\napi_key_env = "{KEY_ENV}"\nsegments = ["recent_visitors"]\n'
        'membership = "tag"\noptions = {audience_id = "a1b2c3d4e5"}\n'
    )


# What differs between two runs of the same thing: times, and a sync run's durations.
TIMES = {"at", "created_at", "updated_at", "started_at", "finished_at", "counts"}


def _state(url: str) -> dict:
    """Every table's rows, without the times an erasure writes."""
    engine = open_db(url)
    out = {}
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            columns = [c for c in table.c if c.name not in TIMES]
            out[table.name] = sorted(map(tuple, conn.execute(sa.select(*columns))), key=str)
    engine.dispose()
    return out


def _erasable_copy(shop, folder: Path, api, sync_url: str) -> str:
    folder.mkdir(exist_ok=True)
    shutil.copy(shop[0], folder / "segflow.db")
    url = f"sqlite:///{folder / 'segflow.db'}"
    build_api_member(api, sync_url, url)
    _settings_file(folder, sync_url)
    return url


@pytest.fixture(scope="module")
def uninterrupted(shop, tmp_path_factory) -> dict:
    """The state an erasure sent to one connector ends in, uninterrupted (in
    process: what the command calls)."""
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        url = _erasable_copy(shop, tmp_path_factory.mktemp("reference") / "db", api, sync_url)
        t = replace(target("mailchimp", sync_url), name="mc")
        report = erase_and_send(
            open_db(url), WHO, secret_key=SECRET, targets=[(t, esp_connectors()["mailchimp"])]
        )
    assert report.confirmed == {"mc": 1} and not report.pending
    return _state(url)


@pytest.mark.parametrize("crash_at", ["privacy.erased:1", "privacy.sent:1"])
def test_a_killed_erasure_run_again_ends_as_an_uninterrupted_one(
    shop, uninterrupted, tmp_path, monkeypatch, run, crash_at
):
    who = shop[1]
    monkeypatch.setenv(KEY_ENV, KINDS["mailchimp"][0])
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        url = _erasable_copy(shop, tmp_path, api, sync_url)
        first = segflow_child(
            url, "privacy", "erase", WHO, cwd=tmp_path, plugins=CHILD_PLUGINS, crash_at=crash_at
        )
        assert first.returncode == -signal.SIGKILL, first.stderr
        # Run again (in this process: the kill is what needed a child).
        status, out, err = run("--db", url, "privacy", "erase", WHO)
        assert status == 0, err
        assert "already erased" in out and "mc: deleted (1)" in out
        assert who["email"] in api.forgotten()
    assert _state(url) == uninterrupted
    assert _scan(url, who) == {}


def build_api_member(api, sync_url: str, url: str) -> None:
    """The person as a member of this fresh fake (the shop was synced to another)."""
    engine = open_db(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM sync_states")
    run_sync(engine, target("mailchimp", sync_url), esp_connectors()["mailchimp"])
    engine.dispose()


def test_export_and_erasure_on_postgresql(postgres_url):
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        who = build(postgres_url, sync_url)
    engine = open_db(postgres_url)
    document = export_person(engine, WHO)
    with engine.connect() as conn:
        person = find_person(conn, WHO)
        expected = person_rows(conn, set(person.profile_ids), set(person.run_ids))
    for name, rows in expected.items():
        want = json.loads(json.dumps(rows, default=lambda v: v.isoformat()))
        assert document["tables"][name] == want, name
    report = erase_person(engine, WHO, secret_key=SECRET)
    assert report.deleted["profiles"] == 2
    engine.dispose()
    assert _scan(postgres_url, who) == {}


def test_the_cli_exports_and_erases_and_names_an_unknown_person(
    shop_copy, run, tmp_path, monkeypatch
):
    url, who = shop_copy
    (tmp_path / "segflow.toml").write_text(f'secret_key = "{SECRET}"\n')
    status, out, _ = run("--db", url, "privacy", "export", WHO)
    assert status == 0 and json.loads(out)["subject"]["user_id"] == WHO
    status, out, err = run("--db", url, "privacy", "export", "nobody-at-all")
    assert status == 1 and err.strip().startswith("error: no profile") and "\n" not in err.strip()
    status, out, err = run("--db", url, "privacy", "erase", WHO, "--json", "--no-vacuum")
    assert status == 0, err
    assert json.loads(out)["deleted"]["profiles"] == 2
    status, out, _ = run("--db", url, "privacy", "erase", WHO)
    assert status == 0 and "already erased" in out
    status, out, _ = run("--db", url, "privacy", "pending")
    assert status == 0 and out.strip() == "no erasure is pending at any connector"
    # A connector whose key is not set: the deletion is recorded, pending, with why.
    _settings_file(tmp_path, "http://127.0.0.1:9")
    monkeypatch.delenv(KEY_ENV, raising=False)
    status, out, err = run("--db", url, "privacy", "erase", "u000003")
    assert status == 0, err
    why = f"connector 'mc': the environment variable {KEY_ENV} is not set"
    assert f"mc: pending, sent again by `segflow sync run` (1 {why})" in " ".join(out.split())
    status, out, _ = run("--db", url, "privacy", "pending", "--json")
    assert status == 0 and json.loads(out) == {"mc": {why: 1}}
    (tmp_path / "segflow.toml").write_text("")
    status, _, err = run("--db", url, "privacy", "erase", "u000004")
    assert status == 1 and "secret key" in err and "\n" not in err.strip()


@pytest.fixture
def api_server(shop_copy) -> Iterator[tuple[str, object, dict]]:
    from core.api import create_app
    from core.config import Settings
    from core.keys import create_key

    url, who = shop_copy
    engine = open_db(url)
    app = create_app(engine, Settings(database_url=url, secret_key=SECRET))
    with serving(app) as base:
        keys = {
            scope: create_key(engine, scope, [scope])[1] for scope in ("admin", "profiles:read")
        }
        yield base, who, keys


def test_the_api_routes_need_the_admin_scope_and_export_then_erase(api_server):
    base, who, keys = api_server
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with httpx.Client(base_url=base) as client:
        assert client.get(f"/v1/privacy/export/{WHO}").status_code == 401
        weak = {"Authorization": f"Bearer {keys['profiles:read']}"}
        assert client.get(f"/v1/privacy/export/{WHO}", headers=weak).status_code == 403
        assert client.post(f"/v1/privacy/erase/{WHO}", headers=weak).status_code == 403
        exported = client.get(f"/v1/privacy/export/{WHO}", headers=admin)
        assert exported.status_code == 200
        assert exported.json()["tables"]["profiles"][0]["email"] == who["email"]
        erased = client.post(f"/v1/privacy/erase/{WHO}", headers=admin)
        assert erased.status_code == 200 and erased.json()["deleted"]["profiles"] == 2
        gone = client.get(f"/v1/privacy/export/{WHO}", headers=admin)
        assert gone.status_code == 404 and gone.json()["field"] == "user_id"
