"""Encryption at rest (issue #17 point 5), on the privacy tests' small demo shop
built with ``SEGFLOW_ENCRYPTION_KEY`` set:

- no byte of the SQLite file or its WAL holds any person's email, first or
  last name or phone, in any table (profiles, attributes, identities, identify
  events' traits, sync states, message subjects);
- people are still found by email (the blind index): lookups, a later event
  naming them by email, export (which gives the person the plaintext back),
  the sync to an ESP (which sends the plaintext), erasure by email;
- without the key, a sealed value is an error naming the missing key;
- the same on PostgreSQL, checked with SQL over the stored values.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import EVENTS, IDENTITIES, MESSAGES, PROFILES, SYNC_STATES
from core.ingestion import ingest
from core.personalize.context import read_person
from core.plugins import esp_connectors
from core.privacy import crypto
from core.privacy.erase import erase_and_send, send_deletions
from core.privacy.export import export_person
from core.profiles import find_profile_id, profile_summary
from core.sync import run_sync
from core.sync.client import Backoff
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.server import Faults, running
from tests.test_privacy import SECRET, WHO, build, target

KEY = crypto.new_key()
PHONE = "+44 20 7946 0958"


def add_phone(url: str) -> None:
    engine = open_db(url)
    ingest(engine, [{"type": "identify", "user_id": WHO, "traits": {"phone": PHONE},
                     "message_id": "encrypt-phone-1"}])  # fmt: skip
    engine.dispose()


def people(url: str) -> list[dict]:
    """Every person's email, names and phone, as the engine reads them back."""
    engine = open_db(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(PROFILES.c.email, PROFILES.c.attributes)).all()
    engine.dispose()
    return [{"email": email, **(attrs or {})} for email, attrs in rows]


def secrets_of(everyone: list[dict]) -> set[str]:
    # Names shorter than five letters could turn up in base64 by chance.
    values = {p.get(k) for p in everyone for k in ("email", "first_name", "last_name", "phone")}
    return {v for v in values if isinstance(v, str) and len(v) >= 5}


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> Iterator[tuple[Path, dict, object]]:
    path = tmp_path_factory.mktemp("encrypt") / "shop.db"
    api = make_fake("mailchimp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(crypto.KEY_ENV, KEY)
        with running(api) as sync_url:
            who = build(f"sqlite:///{path}", sync_url)
        add_phone(f"sqlite:///{path}")
    yield path, who, api


@pytest.fixture
def shop(sealed, tmp_path, monkeypatch) -> tuple[str, dict, object]:
    path, who, api = sealed
    for suffix in ("", "-wal"):
        if (src := path.with_name(path.name + suffix)).exists():
            shutil.copy(src, tmp_path / f"segflow.db{suffix}")
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    return f"sqlite:///{tmp_path / 'segflow.db'}", who, api


def file_hits(url: str, values: set[str]) -> set[str]:
    path = Path(url.removeprefix("sqlite:///"))
    data = b"".join(
        f.read_bytes() for f in (path, path.with_name(path.name + "-wal")) if f.exists()
    )
    return {v for v in values if v.encode() in data}


def test_the_raw_sqlite_file_holds_no_email_name_or_phone(shop):
    url, who, api = shop
    everyone = people(url)
    values = secrets_of(everyone)
    # Read back through the key: the values are there to look for.
    assert who["email"] in values and PHONE in values
    assert sum(1 for p in everyone if p.get("first_name")) >= 10
    assert file_hits(url, values) == set()
    # The sync sent the address itself.
    assert who["email"] in api.members()


def test_stored_values_are_sealed_and_email_identities_are_blind_indexes(shop):
    url, who, _api = shop
    engine = open_db(url)
    with engine.connect() as conn:
        raw = conn.exec_driver_sql(
            "SELECT email, attributes FROM profiles WHERE email IS NOT NULL"
        ).all()
        kinds = conn.exec_driver_sql(
            "SELECT value, sealed FROM identities WHERE kind = 'email'"
        ).all()
        state = conn.exec_driver_sql("SELECT email FROM sync_states").scalars().all()
        subject = conn.exec_driver_sql("SELECT subject FROM messages").scalars().all()
        traits = (
            conn.exec_driver_sql("SELECT properties FROM events WHERE type = 'identify'")
            .scalars()
            .all()
        )
    engine.dispose()
    assert raw and all(crypto.is_sealed(email) for email, _ in raw)
    assert all(crypto.is_sealed(json.loads(a)["first_name"]) for _, a in raw if "first_name" in a)
    assert kinds and all(v.startswith(crypto.INDEX) and crypto.is_sealed(s) for v, s in kinds)
    assert state and all(crypto.is_sealed(v) for v in state)
    assert subject and all(crypto.is_sealed(v) for v in subject)
    emails = [json.loads(t).get("email") for t in traits]
    assert emails and all(crypto.is_sealed(e) for e in emails if e is not None)
    # Other traits stay readable (segments compare them in SQL).
    assert any("country" in json.loads(t) for t in traits)


def test_people_are_still_found_by_email_and_export_gives_the_plaintext(shop):
    url, who, _api = shop
    engine = open_db(url)
    with engine.connect() as conn:
        pid = find_profile_id(conn, WHO)
        assert find_profile_id(conn, who["email"].upper()) == pid
        assert read_person(conn, pid, None).email == who["email"]
        identities = conn.execute(
            sa.select(sa.func.count()).where(IDENTITIES.c.kind == "email")
        ).scalar()
    summary = profile_summary(engine, who["email"])
    assert summary["email"] == who["email"] and summary["attributes"]["phone"] == PHONE
    assert {"kind": "email", "value": who["email"]} in summary["identities"]
    # A later event naming them only by email lands on their profile, and the
    # address gets no second identity.
    ingest(engine, [{"type": "page_view", "email": who["email"], "message_id": "encrypt-late-1"}])
    with engine.connect() as conn:
        late = conn.execute(
            sa.select(EVENTS.c.profile_id).where(EVENTS.c.message_id == "encrypt-late-1")
        ).scalar()
        again = conn.execute(
            sa.select(sa.func.count()).where(IDENTITIES.c.kind == "email")
        ).scalar()
    assert late == pid and again == identities
    document = export_person(engine, who["email"])
    tables = document["tables"]
    assert [p["email"] for p in tables["profiles"] if p["id"] == pid] == [who["email"]]
    # The identity is found by its blind index; the address is beside it, opened.
    assert who["email"] in {i["sealed"] for i in tables["identities"] if i["kind"] == "email"}
    assert any(e["properties"].get("phone") == PHONE for e in tables["events"])
    assert [s["email"] for s in tables["sync_states"]] == [who["email"]]
    assert all(who["email"] in m["subject"] for m in tables["messages"])
    engine.dispose()


def test_erasure_by_email_leaves_nothing_and_its_pending_deletion_is_sealed(shop):
    url, who, _api = shop
    engine = open_db(url)
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        pair = (replace(target("mailchimp", sync_url), name="mc"), esp_connectors()["mailchimp"])
        run_sync(engine, *pair)
        assert who["email"] in api.members()
        api.faults = Faults(rate=1.0, kinds=("500",))
        report = erase_and_send(
            engine, who["email"], secret_key=SECRET, targets=[pair],
            backoff=Backoff(attempts=1, base=0.01),
        )  # fmt: skip
        assert report.deleted["profiles"] == 2 and report.pending
        with engine.connect() as conn:
            pending = conn.exec_driver_sql("SELECT email FROM privacy_deletions").scalars().all()
        assert len(pending) == 1 and crypto.is_sealed(pending[0])
        # Sent again: the connector gets the address itself.
        api.faults = Faults()
        assert send_deletions(engine, *pair)[0] == 1
        assert who["email"] in api.forgotten()
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    assert file_hits(url, {who["email"], PHONE}) == set()


def test_without_the_key_a_sealed_value_is_an_error_naming_it(shop, monkeypatch):
    url, who, _api = shop
    monkeypatch.delenv(crypto.KEY_ENV)
    engine = open_db(url)
    with pytest.raises(crypto.EncryptionKeyError, match="SEGFLOW_ENCRYPTION_KEY is not set"):
        profile_summary(engine, WHO)
    # With another key, it names the key the value needs.
    monkeypatch.setenv(crypto.KEY_ENV, crypto.new_key())
    with pytest.raises(crypto.EncryptionKeyError, match=crypto.Keyring(KEY).kid):
        profile_summary(engine, WHO)
    engine.dispose()


def test_on_postgresql_no_stored_value_holds_an_email_name_or_phone(postgres_url, monkeypatch):
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    api = make_fake("mailchimp")
    with running(api) as sync_url:
        who = build(postgres_url, sync_url)
    add_phone(postgres_url)
    values = secrets_of(people(postgres_url))
    assert who["email"] in values and PHONE in values
    engine = open_db(postgres_url)
    with engine.connect() as conn:
        stored = []
        for table in (PROFILES, IDENTITIES, EVENTS, SYNC_STATES, MESSAGES):
            rows = conn.exec_driver_sql(f"SELECT * FROM {table.name}").all()
            stored.append(json.dumps([list(r) for r in rows], default=str))
        assert find_profile_id(conn, who["email"]) == find_profile_id(conn, WHO)
    engine.dispose()
    text = "\n".join(stored)
    assert {v for v in values if v in text} == set()
    assert who["email"] in api.members()
    # Rotated on PostgreSQL too (JSONB compared as text for compare and set).
    from core.privacy.rotate import rotate_keys

    rotated(monkeypatch)
    report = rotate_keys(open_db(postgres_url))
    assert report.rewritten["profiles"] > PEOPLE_AT_LEAST and report.changed_meanwhile == 0
    monkeypatch.delenv(crypto.OLD_KEYS_ENV)
    after = state(postgres_url)
    assert after["key ids"] == [crypto.Keyring(NEW).kid]
    assert secrets_of(people(postgres_url)) == values
    engine = open_db(postgres_url)
    with engine.connect() as conn:
        assert find_profile_id(conn, who["email"]) == find_profile_id(conn, WHO)
    engine.dispose()


# -- key rotation ---------------------------------------------------------------

NEW = crypto.new_key()


def state(url: str) -> dict[str, list]:
    """Every sealed table as the engine reads it (opened), email identities'
    addresses and blind indexes (deterministic under a key), and the key ids
    of the stored values."""
    from core.privacy.rotate import SPECS

    engine = open_db(url)
    out: dict[str, list] = {}
    kids: set[str] = set()
    with engine.connect() as conn:
        for spec in SPECS:
            table = spec.table
            key = [table.c[k] for k in spec.key]
            rows = [dict(r) for r in conn.execute(sa.select(table).order_by(*key)).mappings()]
            out[table.name] = rows
            cols = ", ".join(spec.columns)
            for raw in conn.exec_driver_sql(f"SELECT {cols} FROM {table.name}"):
                for v in raw:
                    text = v if isinstance(v, str) else json.dumps(v)
                    for marker in (crypto.SEALED, crypto.INDEX):
                        for part in text.split(marker)[1:]:
                            kids.add(part[:8])
    engine.dispose()
    out["key ids"] = sorted(kids)
    return out


def rotated(monkeypatch) -> None:
    monkeypatch.setenv(crypto.KEY_ENV, NEW)
    monkeypatch.setenv(crypto.OLD_KEYS_ENV, KEY)


def test_rotate_key_rewrites_everything_and_the_old_key_is_no_longer_needed(shop, monkeypatch):
    from core.privacy.rotate import rotate_keys

    url, who, _api = shop
    before = state(url)
    assert before["key ids"] == [crypto.Keyring(KEY).kid]
    rotated(monkeypatch)
    report = rotate_keys(open_db(url))
    assert report.rewritten["profiles"] > PEOPLE_AT_LEAST
    assert report.rewritten["sync_states"] == len(before["sync_states"]) > 0
    assert report.rewritten["identities"] > PEOPLE_AT_LEAST and report.rewritten["events"] > 0
    monkeypatch.delenv(crypto.OLD_KEYS_ENV)
    after = state(url)
    assert after["key ids"] == [crypto.Keyring(NEW).kid]
    for name in before:
        if name != "key ids" and name != "identities":
            assert after[name] == before[name], name
    assert [{**r, "value": None} for r in after["identities"]] == [
        {**r, "value": None} for r in before["identities"]
    ]
    engine = open_db(url)
    with engine.connect() as conn:
        assert find_profile_id(conn, who["email"]) == find_profile_id(conn, WHO)
    engine.dispose()
    assert file_hits(url, secrets_of(people(url))) == set()
    # Run again: nothing is left to rewrite.
    assert sum(rotate_keys(open_db(url)).rewritten.values()) == 0


PEOPLE_AT_LEAST = 15


def test_rotate_key_encrypts_a_store_written_without_a_key(tmp_path, monkeypatch):
    from core.privacy.rotate import rotate_keys
    from plugins.demo.generator import generate
    from tests.helpers import DEMO_END

    monkeypatch.delenv(crypto.KEY_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    engine = open_db(url)
    ingest(engine, list(generate(20, seed=3, days=10, end=DEMO_END)))
    engine.dispose()
    values = secrets_of(people(url))
    assert len(values) > 20 and file_hits(url, values) == values
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    rotate_keys(open_db(url), chunk=7)
    assert file_hits(url, values) == set()
    assert secrets_of(people(url)) == values
    engine = open_db(url)
    with engine.connect() as conn:
        email = next(v for v in values if "@" in v)
        pid = find_profile_id(conn, email)
        assert profile_summary(engine, email)["email"] == email
        # A new event by that address finds the profile through the new index.
        ingest(engine, [{"type": "page_view", "email": email, "message_id": "after-1"}])
        got = conn.execute(
            sa.select(EVENTS.c.profile_id).where(EVENTS.c.message_id == "after-1")
        ).scalar()
    assert got == pid
    engine.dispose()


def test_a_killed_rotation_run_again_ends_as_an_uninterrupted_one(shop, tmp_path, monkeypatch, run):
    import signal
    import subprocess
    import sys

    from tests.helpers import child_env

    url, who, _api = shop
    other = tmp_path / "uninterrupted.db"
    shutil.copy(url.removeprefix("sqlite:///"), other)
    rotated(monkeypatch)
    from core.privacy.rotate import rotate_keys

    rotate_keys(open_db(f"sqlite:///{other}"), chunk=20)
    env = {**child_env("plugins.sync", "privacy.rotated:3"), crypto.KEY_ENV: NEW,
           crypto.OLD_KEYS_ENV: KEY}  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-m", "core.cli", "--db", url, "privacy", "rotate-key", "--chunk", "20"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Killed part way: values under both keys, all of them readable.
    assert state(url)["key ids"] == sorted([crypto.Keyring(KEY).kid, crypto.Keyring(NEW).kid])
    status, out, err = run("--db", url, "privacy", "rotate-key", "--chunk", "20")
    assert status == 0, err
    assert "the old keys are no longer needed" in out
    monkeypatch.delenv(crypto.OLD_KEYS_ENV)
    assert state(url) == state(f"sqlite:///{other}")


def test_rotate_key_without_a_key_says_what_it_needs(shop, monkeypatch, run):
    url, _who, _api = shop
    monkeypatch.delenv(crypto.KEY_ENV)
    status, _out, err = run("--db", url, "privacy", "rotate-key")
    assert status == 1
    assert "rotate-key needs the new key in SEGFLOW_ENCRYPTION_KEY" in err
    monkeypatch.setenv(crypto.KEY_ENV, "not base64!")
    status, _out, err = run("--db", url, "privacy", "rotate-key")
    assert status == 1 and "SEGFLOW_ENCRYPTION_KEY: not base64" in err


def test_settings_can_require_a_key(tmp_path, monkeypatch, run):
    (tmp_path / "segflow.toml").write_text('[privacy]\nencryption = "required"\n')
    monkeypatch.delenv(crypto.KEY_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'req.db'}"
    status, _out, err = run("--db", url, "privacy", "pending")
    assert status == 1 and 'encryption = "required"' in err and crypto.KEY_ENV in err
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    status, out, err = run("--db", url, "privacy", "pending")
    assert status == 0 and "no erasure is pending" in out, err


def test_a_value_written_while_the_rotation_runs_is_not_put_back(shop, monkeypatch):
    """Compare and set: a writer (ingestion) that changes a row between the
    rotation's read of a chunk and its write keeps its value."""
    import core.privacy.rotate as rotate

    url, _who, _api = shop
    rotated(monkeypatch)
    engine = open_db(url)
    with engine.connect() as conn:
        pid = (
            conn.execute(
                sa.select(PROFILES.c.id)
                .where(PROFILES.c.email.is_not(None))
                .order_by(PROFILES.c.id)
            )
            .scalars()
            .first()
        )
    plan = rotate._plan

    def plan_then_write(conn, spec, rows, ring, report):
        work = plan(conn, spec, rows, ring, report)
        if spec.table is PROFILES and any(r["id"] == pid for r in rows):
            with open_db(url).begin() as other:
                other.execute(
                    PROFILES.update()
                    .where(PROFILES.c.id == pid)
                    .values(attributes={"first_name": "Meanwhile"})
                )
        return work

    monkeypatch.setattr(rotate, "_plan", plan_then_write)
    report = rotate.rotate_keys(engine, chunk=50, vacuum=False)
    assert report.changed_meanwhile == 1
    with engine.connect() as conn:
        attrs = conn.execute(sa.select(PROFILES.c.attributes).where(PROFILES.c.id == pid)).scalar()
        raw = conn.exec_driver_sql(f"SELECT attributes FROM profiles WHERE id = {pid}").scalar()
    assert attrs == {"first_name": "Meanwhile"}
    assert json.loads(raw)["first_name"].startswith(f"enc1:{crypto.Keyring(NEW).kid}:")
    engine.dispose()
