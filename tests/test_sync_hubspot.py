"""The HubSpot connector against the HubSpot fake over HTTP: the remote state
equals segflow's after syncs with faults and no segment event is stored twice
(HubSpot de-duplicates on uuid), batch upserts of at most 100 inputs with a
207 mapped back per record (a refused record fails alone and is retried next
run), consent in the segflow-owned property (never subscribed without it, a
withdrawal unsubscribes), lists cleared for a contact whose state was lost,
the rate headers followed on the default tier, and a dry run sending nothing."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import timedelta

import httpx
import sqlalchemy as sa

from core.consents import set_consent
from core.db import open_db
from core.db.tables import SYNC_STATES
from core.plugins import DEFAULT_PLUGINS, condition_kinds, esp_connectors
from core.profiles import update_attributes
from core.segments.store import load_segment_files, run_segments
from core.sync import run_sync, verify_sync
from core.sync.engine import plan_sync
from core.types import SyncTarget
from plugins.esp import hubspot
from plugins.esp.fakes.hubspot import ACCESS_TOKEN, PORTAL_ID, HubSpotApi
from plugins.esp.fakes.server import Faults, running
from tests.helpers import people, segflow_child, sync_until_settled
from tests.test_sync_engine import NOW, resegment, store

KEY_ENV = "FAKE_ESP_API_KEY"
GOLD = "- name: gold\n  description: g\n  rule: {attribute: tier, op: '==', value: gold}\n"


def target(url: str, **changes) -> SyncTarget:
    fields = {
        "name": "hs",
        "kind": "hubspot",
        "base_url": url,
        "api_key": ACCESS_TOKEN,
        "segments": ("gold", "silver"),
        "membership": "list",
        "properties": {"first_name": "attributes.first_name"},
    }
    return SyncTarget(**(fields | changes))


def wanted(engine, t: SyncTarget) -> dict[str, dict]:
    """What segflow wants remotely, in the fake's snapshot shape (properties as
    the HubSpot properties the connector maps them to)."""
    with engine.connect() as conn:
        plan = plan_sync(conn, t)
    return {
        w.person.email: {
            "subscribed": w.person.subscribed,
            "segments": sorted(w.segments),
            "properties": {
                hubspot.property_name(k): str(v)
                for k, v in w.person.properties.items()
                if v not in (None, "")
            },
        }
        for w in plan.wanted.values()
    }


def requests(api, method: str, suffix: str = "") -> int:
    return sum(1 for m, path, _ in api.log if m == method and path.endswith(suffix))


def gold_people(engine, tmp_path, count: int, *, consent: bool = True) -> list[int]:
    ids = people(engine, count, consent=consent)
    with engine.begin() as conn:
        for i, pid in enumerate(ids):
            update_attributes(conn, pid, {"tier": "gold", "first_name": f"G{i}"})
    (tmp_path / "segments").mkdir(exist_ok=True)
    (tmp_path / "segments" / "t.yaml").write_text(GOLD)
    kinds = condition_kinds()
    run_segments(engine, NOW, kinds=kinds,
                 definitions=load_segment_files(tmp_path / "segments", kinds))  # fmt: skip
    return ids


def test_the_remote_state_is_segflows_and_no_event_is_stored_twice_after_faults(db_url, tmp_path):
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    api = HubSpotApi(tier="fast")
    connector = esp_connectors()["hubspot"]
    with running(api) as url:
        t = target(url)
        run_sync(engine, t, connector)  # the first run starts the events' cursor
        # Moves that make entries and exits: gold -> silver, silver -> none, none -> gold.
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
        assert run_sync(engine, t, connector).sent == 0  # nothing left, nothing resent
        snap = api.snapshot()
        assert verify_sync(engine, t, connector).ok
    assert any(isinstance(what, str) for _m, _p, what in api.log), "no fault was met"
    assert snap["people"] == wanted(engine, t)
    per_id = Counter(uid for _e, _n, uid in snap["events"])
    assert per_id and set(per_id.values()) == {1}, per_id
    pe = f"pe{PORTAL_ID}_"
    assert sorted((email, name) for email, name, _ in snap["events"]) == sorted(
        [
            ("p0@example.com", pe + "exited_segment_gold"),
            ("p0@example.com", pe + "entered_segment_silver"),
            ("p1@example.com", pe + "exited_segment_silver"),
            ("p2@example.com", pe + "entered_segment_gold"),
        ]
    )
    assert api.list_members("segflow: gold") == {
        "p2@example.com", "p3@example.com", "p6@example.com", "p9@example.com"
    }  # fmt: skip
    # HubSpot refuses occurrences of undefined events: the sync defined each one it sent.
    sent = {name.removeprefix(pe) for _e, name, _u in snap["events"]}
    assert {
        name: sorted(p["name"] for p in d["properties"]) for name, d in api.definitions.items()
    } == {name: ["change", "segment"] for name in sent}


def test_upserts_go_in_batches_of_100_and_a_refused_record_fails_alone(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    n = hubspot.BATCH + 30
    ids = gold_people(engine, tmp_path, n)
    with engine.begin() as conn:
        for i, pid in enumerate(ids):
            update_attributes(conn, pid, {"age": "old" if i == 7 else str(20 + i % 50)})
    api = HubSpotApi(tier="fast")
    connector = esp_connectors()["hubspot"]
    with running(api) as url:
        mapped = {"first_name": "attributes.first_name", "age": "attributes.age"}
        t = target(url, segments=("gold",), properties=mapped)
        _number_property(url, "age")
        first = run_sync(engine, t, connector)
        assert requests(api, "POST", "/batch/upsert") == 2
        assert first.failed and sum(first.failed.values()) == 1, first.failed
        (reason,) = first.failed
        assert "age" in reason and "old" in reason
        assert first.upserted == n - 1 and first.added == n - 1
        assert "p7@example.com" not in api.profiles()
        assert api.profile("p8@example.com")["age"] == "28"
        # The one refused is sent again next run, alone, once its value is fixed.
        with engine.begin() as conn:
            update_attributes(conn, ids[7], {"age": "70"})
        again = run_sync(engine, t, connector)
        assert again.upserted == 1 and again.added == 1 and not again.failed
        assert requests(api, "POST", "/batch/upsert") == 3
        assert api.profile("p7@example.com")["age"] == "70"
        assert len(api.list_members("segflow: gold")) == n
        assert verify_sync(engine, t, connector).ok


def _number_property(url: str, name: str) -> None:
    r = httpx.post(
        url + "/crm/v3/properties/contacts",
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        json={"name": name, "label": name, "type": "number", "fieldType": "number",
              "groupName": "contactinformation"},
    )  # fmt: skip
    assert r.status_code == 201, r.text


def test_consent_is_never_invented_and_a_withdrawal_unsubscribes(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    gold_people(engine, tmp_path, 4, consent=False)
    set_consent(engine, "p0", "email", True, "test")
    set_consent(engine, "p1", "email", True, "test")
    api = HubSpotApi(tier="fast")
    connector = esp_connectors()["hubspot"]
    with running(api) as url:
        t = target(url, segments=("gold",))
        run_sync(engine, t, connector)
        consent = {e: p.get(hubspot.CONSENT) for e, p in api.profiles().items()}
        assert consent == {
            "p0@example.com": "subscribed",
            "p1@example.com": "subscribed",
            "p2@example.com": "none",
            "p3@example.com": "none",
        }
        # HubSpot's own opt-out is read-only through the CRM API: never written.
        assert not any("hs_email_optout" in p for p in api.profiles().values())
        set_consent(engine, "p1", "email", False, "test")
        report = run_sync(engine, t, connector)
        assert report.upserted == 1
        assert api.profile("p1@example.com")[hubspot.CONSENT] == "unsubscribed"
        assert api.profile("p2@example.com")[hubspot.CONSENT] == "none"
        assert api.snapshot()["people"]["p1@example.com"]["subscribed"] is False
        assert verify_sync(engine, t, connector).ok


def test_a_contact_whose_state_was_lost_is_taken_out_of_lists_it_left(sqlite_url, tmp_path):
    ids = store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    api = HubSpotApi(tier="fast")
    connector = esp_connectors()["hubspot"]
    with running(api) as url:
        t = target(url)
        run_sync(engine, t, connector)
        assert "p0@example.com" in api.list_members("segflow: gold")
        # segflow forgets what it synced (a restored database) while p0 moves to silver.
        with engine.begin() as conn:
            conn.execute(SYNC_STATES.delete())
            update_attributes(conn, ids[0], {"tier": "silver"})
        resegment(sqlite_url, NOW + timedelta(minutes=5))
        report = run_sync(engine, t, connector)
        assert report.upserted == 8 and not report.failed and not report.retry
        assert api.snapshot()["people"]["p0@example.com"]["segments"] == ["silver"]
        assert verify_sync(engine, t, connector).ok


def test_an_add_for_a_contact_deleted_remotely_fails_as_contact_missing(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    api = HubSpotApi(tier="fast")
    connector = esp_connectors()["hubspot"]
    with running(api) as url:
        t = target(url, segments=("gold",))
        run_sync(engine, t, connector)
        cid = api.contact_id("p0@example.com")
        r = httpx.delete(f"{url}/crm/v3/objects/contacts/{cid}",
                         headers={"Authorization": f"Bearer {ACCESS_TOKEN}"})  # fmt: skip
        assert r.status_code == 204
        with engine.begin() as conn:
            conn.execute(
                SYNC_STATES.update()
                .where(SYNC_STATES.c.email == "p0@example.com")
                .values(segments=[])
            )
        report = run_sync(engine, t, connector)
        assert report.failed == {"contact missing": 1}, report.model_dump()
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(SYNC_STATES.c.segments).where(SYNC_STATES.c.email == "p0@example.com")
            ).one()
        assert row.segments == []


def test_the_rate_headers_are_followed_on_the_default_tier(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    connector = esp_connectors()["hubspot"]
    # The documented starter window, with few records: nothing is refused.
    api = HubSpotApi()
    assert api.tier == "starter"
    with running(api) as url:
        report = run_sync(engine, target(url), connector)
        assert report.upserted == 8 and report.throttled == 0
        assert not any(what == 429 for _m, _p, what in api.log)
    # A window smaller than the run: the client pauses on Remaining 0 and any
    # request refused meanwhile is retried, ending in the same state.
    engine.dispose()
    other = tmp_path / "other"
    other.mkdir()
    url2 = f"sqlite:///{other}/segflow.db"
    store(url2, other)
    engine = open_db(url2)
    api = HubSpotApi(limit=4, interval=0.5)
    with running(api) as url:
        t = target(url)
        report = run_sync(engine, t, connector)
        refused = sum(1 for _m, _p, what in api.log if what == 429)
        assert not report.failed and not report.retry, report.model_dump()
        # More requests than one window holds were answered, and every refusal
        # was met (and retried) by the client.
        assert len(api.log) - refused > 4 and refused == report.throttled
        assert verify_sync(engine, t, connector).ok


def test_rate_state_reads_hubspots_headers():
    headers = {
        "X-HubSpot-RateLimit-Remaining": "0",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    }
    assert hubspot.rate_state(httpx.Response(200, headers=headers)) == (0, 10.0)
    assert hubspot.rate_state(httpx.Response(200)) is None
    assert hubspot.property_name("First_Name") == "firstname"
    assert hubspot.property_name("Plan Tier") == "plan_tier"
    assert hubspot.property_name("2fa") == "segflow_2fa"
    assert hubspot.event_name(7, "Exited segment big spenders") == "pe7_exited_segment_big_spenders"


def test_a_dry_run_from_the_cli_sends_nothing(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    api = HubSpotApi(tier="fast")
    with running(api) as url:
        (tmp_path / "segflow.toml").write_text(
            "[[segflow.connectors]]\n"
            f'name = "hs"\nkind = "hubspot"\nbase_url = "{url}"\n'
            f'api_key_env = "{KEY_ENV}"\nsegments = ["gold", "silver"]\n'
        )
        os.environ[KEY_ENV] = ACCESS_TOKEN
        try:
            dry = segflow_child(sqlite_url, "sync", "run", "--dry-run", cwd=tmp_path,
                                plugins=",".join(DEFAULT_PLUGINS))  # fmt: skip
        finally:
            del os.environ[KEY_ENV]
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run" in dry.stdout and ACCESS_TOKEN not in dry.stdout + dry.stderr
    assert api.log == [] and api.profiles() == {} and api.lists == {}


def test_an_event_batch_refused_whole_is_sent_one_by_one(tmp_path):
    """One bad event refuses the batch; each alone shows which, the rest are stored."""
    from datetime import UTC, datetime

    from core.sync.client import SyncClient
    from core.types import SyncEvent, SyncPerson

    async def send(url: str):
        t = target(url, segments=())
        client = SyncClient(t.base_url, hubspot.LIMITS, headers=hubspot.auth_headers(t))
        async with client, hubspot.open_session(t, client) as session:
            evs = [
                SyncEvent(f"u{i}", "Entered segment gold",
                          SyncPerson(i, "bad address" if i == 1 else f"e{i}@example.com"),
                          datetime.now(UTC))
                for i in range(3)
            ]  # fmt: skip
            return await hubspot.events(session, evs)

    api = HubSpotApi(tier="fast")
    with running(api) as url:
        results = asyncio.run(send(url))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "invalid" in (results[1].reason or "").lower()
    assert sorted(uid for _e, _n, uid in api.snapshot()["events"]) == ["u0", "u2"]
