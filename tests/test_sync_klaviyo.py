"""The Klaviyo connector against the Klaviyo fake over HTTP: the remote state
equals segflow's after syncs with faults and no segment event is stored twice,
calls split at Klaviyo's documented sizes, a refused record fails alone and is
retried next run, consent (never subscribed without it, a withdrawal
unsubscribes), the rate limits honoured on the default tier, and a dry run
sending nothing."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from core import SyncFailure
from core.db import open_db
from core.db.tables import PROFILES
from core.plugins import DEFAULT_PLUGINS, esp_connectors
from core.profiles import update_attributes
from core.sync import run_sync, verify_sync
from core.sync.client import SyncClient
from core.sync.engine import plan_sync
from core.types import SyncEvent, SyncPerson, SyncTarget
from plugins.esp import klaviyo
from plugins.esp.fakes.klaviyo import KlaviyoApi, make_api
from plugins.esp.fakes.server import Faults, running
from tests.helpers import people, segflow_child, sync_until_settled
from tests.test_sync_engine import NOW, resegment, store

KEY = "pk_test"
KEY_ENV = "FAKE_ESP_API_KEY"


def target(url: str, **changes) -> SyncTarget:
    fields = {
        "name": "kl",
        "kind": "klaviyo",
        "base_url": url,
        "api_key": KEY,
        "segments": ("gold", "silver"),
        "membership": "list",
        "properties": {"first_name": "attributes.first_name"},
    }
    return SyncTarget(**(fields | changes))


def wanted(engine, t: SyncTarget) -> dict[str, dict]:
    """What segflow wants remotely, in the fake's snapshot shape."""
    with engine.connect() as conn:
        plan = plan_sync(conn, t)
    return {
        w.person.email: {
            "subscribed": w.person.subscribed,
            "segments": sorted(w.segments),
            "properties": {k: v for k, v in w.person.properties.items() if v is not None},
        }
        for w in plan.wanted.values()
    }


def requests(api, method: str, path: str) -> int:
    return sum(1 for m, p, _ in api.log if m == method and p.rstrip("/") == path)


def test_the_remote_state_is_segflows_and_no_event_is_stored_twice_after_faults(db_url, tmp_path):
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    api = make_api("fast")
    connector = esp_connectors()["klaviyo"]
    with running(api) as url:
        t = target(url)
        run_sync(engine, t, connector)  # the first run starts the events' cursor
        with engine.begin() as conn:
            update_attributes(conn, ids[0], {"tier": "silver"})
            update_attributes(conn, ids[1], {"tier": "none"})
            update_attributes(conn, ids[2], {"tier": "gold"})
        resegment(db_url, NOW + timedelta(minutes=5))
        # Drops after the request took effect are what would duplicate events.
        api.faults = Faults(
            rate=0.5, seed=3, kinds=("drop_after", "drop_after", "500", "drop", "429")
        )
        sync_until_settled(engine, t, connector, first=2)
        api.faults = Faults()
        assert run_sync(engine, t, connector).sent == 0
        snap = api.snapshot()
        assert verify_sync(engine, t, connector).ok
    assert "drop_after" in {what for _m, _p, what in api.log}, "no drop was met"
    assert snap["people"] == wanted(engine, t)
    per_id = Counter(uid for _e, _n, uid in snap["events"])
    assert per_id and set(per_id.values()) == {1}, per_id
    assert sorted((email, name) for email, name, _ in snap["events"]) == [
        ("p0@example.com", "Entered segment silver"),
        ("p0@example.com", "Exited segment gold"),
        ("p1@example.com", "Exited segment silver"),
        ("p2@example.com", "Entered segment gold"),
    ]
    # One list per segment, found again by name on every run.
    assert sorted(n for n in api.state()["lists"]) == ["segflow: gold", "segflow: silver"]


async def _session_call(url: str, call):
    t = target(url, segments=("gold",))
    client = SyncClient(t.base_url, klaviyo.LIMITS, headers=klaviyo.auth_headers(t))
    async with client, klaviyo.open_session(t, client) as session:
        session.poll = 0.01
        return await call(session)


def test_calls_split_at_the_documented_sizes_and_a_refused_record_fails_alone(monkeypatch):
    # With one refused: one more than a membership or subscription call takes.
    n = klaviyo.MEMBER_IDS + 2
    persons = [
        SyncPerson(i, f"b{i}@example.com", properties={"first_name": f"B{i}"}, subscribed=True)
        for i in range(n)
    ]
    bad = n // 2
    persons[bad] = SyncPerson(bad, "b-bad@nowhere", subscribed=True)
    api = make_api("fast")
    with running(api) as url:
        results = asyncio.run(_session_call(url, lambda s: klaviyo.upsert(s, persons)))
        assert requests(api, "POST", "/api/profile-bulk-import-jobs") == 1
        assert requests(api, "POST", "/api/profile-subscription-bulk-create-jobs") == 2
        # The ids read back a page of emails at a time.
        pages = -(-(n - 1) // klaviyo.PROFILE_PAGE)
        assert requests(api, "GET", "/api/profiles") == pages
        assert results[bad].status == "failed" and "email" in (results[bad].reason or "")
        good = [r for i, r in enumerate(results) if i != bad]
        assert {r.status for r in good} == {"ok"}
        assert good[0].remote_id == api.profile_by_email("b0@example.com")["id"]
        members = [
            SyncPerson(p.profile_id, p.email, remote_id=r.remote_id)
            for p, r in zip(persons, results, strict=True)
            if r.status == "ok"
        ]
        # A stale id (the profile erased in Klaviyo since) fails alone.
        members[3] = SyncPerson(3, "b3@example.com", remote_id="01KNOSUCHPROFILE")
        added = asyncio.run(_session_call(url, lambda s: klaviyo.add(s, "gold", members)))
        list_id = api.list_id("segflow: gold")
        assert requests(api, "POST", f"/api/lists/{list_id}/relationships/profiles") >= 2
        assert added[3].status == "failed" and "01KNOSUCHPROFILE" in (added[3].reason or "")
        assert [r.status for i, r in enumerate(added) if i != 3] == ["ok"] * (len(members) - 1)
        assert len(api.list_members(list_id)) == len(members) - 1
        events = [
            SyncEvent(f"u{i}", "Entered segment gold", p, datetime.now(UTC))
            for i, p in enumerate(members)
        ]
        sent = asyncio.run(_session_call(url, lambda s: klaviyo.events(s, events)))
        assert requests(api, "POST", "/api/event-bulk-create-jobs") == 2
        assert {r.status for r in sent} == {"ok"} and len(api.snapshot()["events"]) == n - 1
        # Above the profiles a job takes, the import is split in jobs.
        monkeypatch.setattr(klaviyo, "IMPORT_PROFILES", 400)
        asyncio.run(_session_call(url, lambda s: klaviyo.upsert(s, persons)))
        assert requests(api, "POST", "/api/profile-bulk-import-jobs") == 1 + 3
    assert klaviyo.LIMITS.profiles_per_call == 10_000
    assert klaviyo.LIMITS.members_per_call == klaviyo.MEMBER_IDS == 1_000


def test_a_refused_record_fails_alone_and_is_retried_next_run(sqlite_url, tmp_path):
    ids = store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    with engine.begin() as conn:
        conn.execute(PROFILES.update().where(PROFILES.c.id == ids[0]).values(email="p0@nowhere"))
    api = make_api("fast")
    connector = esp_connectors()["klaviyo"]
    with running(api) as url:
        t = target(url)
        first = run_sync(engine, t, connector)
        assert sum(first.failed.values()) == 1, first.failed
        (reason,) = first.failed
        assert "email" in reason and "p0@nowhere" in reason
        assert first.upserted == 7 and api.profile_by_email("p0@nowhere") is None
        # The refused one is not held as a member either; the others are.
        assert first.added == 7
        with engine.begin() as conn:
            conn.execute(
                PROFILES.update().where(PROFILES.c.id == ids[0]).values(email="p0@example.com")
            )
        again = run_sync(engine, t, connector)
        assert again.upserted == 1 and again.added == 1 and not again.failed
        assert "p0@example.com" in api.list_members(api.list_id("segflow: gold"))
        assert verify_sync(engine, t, connector).ok


def test_consent_is_never_invented_and_a_withdrawal_unsubscribes(sqlite_url, tmp_path):
    from core.consents import set_consent
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, run_segments

    engine = open_db(sqlite_url)
    ids = people(engine, 4, consent=False)
    set_consent(engine, "p0", "email", True, "test")
    set_consent(engine, "p1", "email", True, "test")
    with engine.begin() as conn:
        for pid in ids:
            update_attributes(conn, pid, {"tier": "gold", "first_name": "X"})
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "t.yaml").write_text(
        "- name: gold\n  description: g\n  rule: {attribute: tier, op: '==', value: gold}\n"
    )
    kinds = condition_kinds()
    run_segments(engine, NOW, kinds=kinds,
                 definitions=load_segment_files(tmp_path / "segments", kinds))  # fmt: skip
    api = make_api("fast")
    connector = esp_connectors()["klaviyo"]
    with running(api) as url:
        t = target(url, segments=("gold",))
        run_sync(engine, t, connector)
        consent = {f"p{i}@example.com": api.consent(f"p{i}@example.com") for i in range(4)}
        assert consent == {
            "p0@example.com": "SUBSCRIBED",
            "p1@example.com": "SUBSCRIBED",
            "p2@example.com": "NEVER_SUBSCRIBED",
            "p3@example.com": "NEVER_SUBSCRIBED",
        }
        assert len(api.list_members(api.list_id("segflow: gold"))) == 4
        set_consent(engine, "p1", "email", False, "test")
        run_sync(engine, t, connector)
        assert api.consent("p1@example.com") == "UNSUBSCRIBED"
        assert api.consent("p2@example.com") == "NEVER_SUBSCRIBED"
        assert api.snapshot()["people"]["p1@example.com"]["subscribed"] is False
        assert verify_sync(engine, t, connector).ok


def test_the_default_tier_is_kept_to_and_429s_past_it_are_retried(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    connector = esp_connectors()["klaviyo"]
    # At Klaviyo's documented limits, following them: nothing refused.
    api = make_api("default")
    with running(api) as url:
        report = run_sync(engine, target(url), connector)
        assert report.upserted == 8 and report.added == 8 and report.throttled == 0
        assert not any(what == 429 for _m, _p, what in api.log)
    # A key whose windows are mostly used by its other clients: the live
    # headers pause the connector, 429s past them are retried, and the end
    # state is the same.
    engine.dispose()
    other = tmp_path / "other"
    other.mkdir()
    store(f"sqlite:///{other}/segflow.db", other)
    engine = open_db(f"sqlite:///{other}/segflow.db")
    tight = {group: (3, 6) for group in ("profiles", "lists", "jobs", "events")}
    api = KlaviyoApi(limits=tight, steady_seconds=2.0)
    with running(api) as url:
        t = target(url)
        report = run_sync(engine, t, connector)
        while report.retry:
            report = run_sync(engine, t, connector)
        assert any(what == 429 for _m, _p, what in api.log)
        assert verify_sync(engine, t, connector).ok


def test_a_dry_run_from_the_cli_sends_nothing(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    api = make_api("fast")
    with running(api) as url:
        (tmp_path / "segflow.toml").write_text(
            "[[segflow.connectors]]\n"
            f'name = "kl"\nkind = "klaviyo"\nbase_url = "{url}"\n'
            f'api_key_env = "{KEY_ENV}"\nsegments = ["gold", "silver"]\n'
            'options = {list_prefix = "segflow: "}\n'
        )
        os.environ[KEY_ENV] = KEY
        try:
            dry = segflow_child(sqlite_url, "sync", "run", "--dry-run", cwd=tmp_path,
                                plugins=",".join(DEFAULT_PLUGINS))  # fmt: skip
        finally:
            del os.environ[KEY_ENV]
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run" in dry.stdout and KEY not in dry.stdout + dry.stderr
    assert api.log == [] and api.snapshot()["people"] == {}


def test_an_import_job_that_does_not_complete_leaves_its_records_to_the_next_run():
    persons = [SyncPerson(i, f"j{i}@example.com", subscribed=True) for i in range(3)]
    api = make_api("fast", job_polls=10_000)

    async def slow(session):
        session.job_timeout = 0.05
        return await klaviyo.upsert(session, persons)

    with running(api) as url, pytest.raises(SyncFailure, match="still processing"):
        asyncio.run(_session_call(url, slow))
    # Not subscribed yet: consent follows a completed import only.
    assert api.consent("j0@example.com") != "SUBSCRIBED"
