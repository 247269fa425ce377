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
from dataclasses import replace
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
    t = target(url, segments=("gold", "silver"))
    client = SyncClient(t.base_url, klaviyo.LIMITS, headers=klaviyo.auth_headers(t))
    async with client, klaviyo.open_session(t, client) as session:
        session.poll = 0.01
        return await call(session)


def test_calls_split_at_the_documented_sizes_and_a_refused_record_fails_alone(monkeypatch):
    # With one refused: one more than a subscription call takes.
    n = klaviyo.SUBSCRIPTION_PROFILES + 2
    # Everyone joins gold, every third silver too; the last joins nothing.
    persons = [
        SyncPerson(i, f"b{i}@example.com", properties={"first_name": f"B{i}"}, subscribed=True,
                   add_to=frozenset({"gold"} | ({"silver"} if i % 3 == 0 else set())))
        for i in range(n - 1)
    ] + [SyncPerson(n - 1, "b-last@example.com", subscribed=True)]  # fmt: skip
    bad = n // 2
    persons[bad] = SyncPerson(bad, "b-bad@nowhere", subscribed=True, add_to=frozenset({"gold"}))
    api = make_api("fast")
    with running(api) as url:
        results = asyncio.run(_session_call(url, lambda s: klaviyo.upsert(s, persons)))
        # A job a list (gold, silver) and one for those joining none; no ids read back.
        assert requests(api, "POST", "/api/profile-bulk-import-jobs") == 3
        # Consent for the imported only: the refused address is not subscribed.
        assert requests(api, "POST", "/api/profile-subscription-bulk-create-jobs") == 2
        assert requests(api, "GET", "/api/profiles") == 0
        assert results[bad].status == "failed" and "email" in (results[bad].reason or "")
        assert {r.status for i, r in enumerate(results) if i != bad} == {"ok"}
        gold, silver = api.list_id("segflow: gold"), api.list_id("segflow: silver")
        assert len(api.list_members(gold)) == n - 2
        assert len(api.list_members(silver)) == len(range(0, n - 1, 3)) - (bad % 3 == 0)
        assert api.consent("b5@example.com") == "SUBSCRIBED"
        assert api.profile_by_email("b5@example.com")["first_name"] == "B5"
        # An add (someone not upserted in the run) is an import of the addresses
        # into the list, which leaves the rest of the profile as it was.
        joined = asyncio.run(_session_call(url, lambda s: klaviyo.add(s, "silver", persons[1:3])))
        assert [r.status for r in joined] == ["ok", "ok"]
        assert {"b1@example.com", "b2@example.com"} <= set(api.list_members(silver))
        assert api.profile_by_email("b1@example.com")["first_name"] == "B1"
        # A removal looks up the ids it does not know, a page of emails at a time.
        leaving = [replace(p, add_to=frozenset()) for p in persons[:150]]
        before = requests(api, "GET", "/api/profiles")
        out = asyncio.run(_session_call(url, lambda s: klaviyo.remove(s, "gold", leaving)))
        assert {r.status for r in out} == {"ok"}
        assert requests(api, "GET", "/api/profiles") - before == 2
        assert len(api.list_members(gold)) == n - 2 - 150
        events = [
            SyncEvent(f"u{i}", "Entered segment gold", p, datetime.now(UTC))
            for i, p in enumerate(persons)
            if i != bad
        ]
        sent = asyncio.run(_session_call(url, lambda s: klaviyo.events(s, events)))
        assert requests(api, "POST", "/api/event-bulk-create-jobs") == 2
        assert {r.status for r in sent} == {"ok"} and len(api.snapshot()["events"]) == n - 1
        # Above the profiles a job takes, the import is split in jobs.
        monkeypatch.setattr(klaviyo, "IMPORT_PROFILES", 400)
        plain = [replace(p, add_to=frozenset()) for p in persons]
        asyncio.run(_session_call(url, lambda s: klaviyo.upsert(s, plain)))
        assert requests(api, "POST", "/api/profile-bulk-import-jobs") == 3 + 1 + 3
    assert klaviyo.LIMITS.profiles_per_call == 100_000
    assert klaviyo.LIMITS.members_per_call == 10_000
    assert klaviyo.MEMBER_IDS == 1_000 and klaviyo.SYNC.adds_on_upsert


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


def first_sync_with_events(engine, api, connector):
    """A first sync against ``api`` in which every segment entry is an event,
    verified equal afterwards: (its report, the target)."""
    from core.sync.engine import _save_cursor

    with running(api) as url:
        t = target(url, events=True)
        _save_cursor(engine, t, 0)
        report = run_sync(engine, t, connector)
        assert verify_sync(engine, t, connector).ok
    return report, t


def test_joiners_are_imported_into_lists_and_events_follow_each_upsert_call(sqlite_url, tmp_path):
    ids = store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    api = make_api("fast")
    sync = klaviyo.SYNC
    # Calls of a few people each, so the run has several, one at a time.
    small = replace(
        sync.limits, profiles_per_call=len(ids) // 4, events_per_call=2, upserts_at_once=1
    )
    connector = replace(esp_connectors()["klaviyo"], sync=replace(sync, limits=small))
    report, t = first_sync_with_events(engine, api, connector)
    assert report.upserted == report.people == len(ids) * 2 // 3 and not report.retry
    assert report.added == report.people
    assert api.snapshot()["people"] == wanted(engine, t)
    paths = [(m, p.rstrip("/")) for m, p, _what in api.log]
    # No member calls and no profile ids read back while syncing (verify reads after).
    syncing = paths[: paths.index(("GET", "/api/lists"), 1)]
    assert not [p for m, p in syncing if "relationships" in p or p == "/api/profiles"]
    imports = [
        n for n, (m, p) in enumerate(syncing) if (m, p) == ("POST", "/api/profile-bulk-import-jobs")
    ]
    events = [n for n, (m, p) in enumerate(syncing) if p == "/api/event-bulk-create-jobs"]
    assert len(events) == report.events // 2 + report.events % 2
    # The first call's events went before the last call's imports.
    assert events[0] < imports[-1]


class _FirstConsentThrottled(KlaviyoApi):
    """Klaviyo's fake, answering the first subscription job 429 (Retry-After: 1)."""

    throttled = False

    def limit(self, request):
        if not self.throttled and request.path.startswith("/api/profile-subscription-bulk"):
            self.throttled = True
            return self.too_many(request)
        return super().limit(request)


def test_a_consent_job_waiting_for_its_retry_after_holds_up_no_other_peoples_events(
    sqlite_url, tmp_path, monkeypatch
):
    ids = store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    # One upsert call, its people's consent in several jobs.
    monkeypatch.setattr(klaviyo, "SUBSCRIPTION_PROFILES", 2)
    api = _FirstConsentThrottled(job_polls=0)
    sync = klaviyo.SYNC
    connector = replace(
        esp_connectors()["klaviyo"],
        sync=replace(sync, limits=replace(sync.limits, events_per_call=1)),
    )
    report, _t = first_sync_with_events(engine, api, connector)
    assert report.upserted == report.people == len(ids) * 2 // 3 and not report.retry
    assert report.throttled == 1 and report.events == report.people
    log = [(p.rstrip("/"), what) for _m, p, what in api.log]
    consent = [n for n, (p, _w) in enumerate(log) if p.startswith("/api/profile-subscription")]
    events = [n for n, (p, _w) in enumerate(log) if p == "/api/event-bulk-create-jobs"]
    assert log[consent[0]][1] == 429 and len(consent) == -(-report.people // 2) + 1
    # While the throttled job waited its second, the other jobs' people were
    # answered and their events went: before its resend, the call's last request.
    assert len([n for n in events if n < consent[-1]]) >= report.events - 2
