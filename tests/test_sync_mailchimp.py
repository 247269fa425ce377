"""The Mailchimp connector against the Mailchimp fake over HTTP: the remote
state equals segflow's after syncs with faults and no segment event is posted
twice (Mailchimp has no idempotency key), /batches above BATCH_ABOVE records
with per-operation results, a refused record fails alone and is retried next
run, consent (never subscribed without it, a withdrawal unsubscribes), the
10-connection cap met with 429s that are retried, and a dry run sending nothing."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import timedelta

from core.db import open_db
from core.plugins import DEFAULT_PLUGINS, esp_connectors
from core.profiles import update_attributes
from core.sync import run_sync, verify_sync
from core.sync.client import SyncClient
from core.sync.engine import plan_sync
from core.types import SyncPerson, SyncTarget
from plugins.esp import mailchimp
from plugins.esp.fakes.mailchimp import API_KEY, DEFAULT_LIST_ID, MailchimpApi
from plugins.esp.fakes.server import Faults, running
from tests.helpers import people, segflow_child, sync_until_settled
from tests.test_sync_engine import NOW, resegment, store

KEY_ENV = "FAKE_ESP_API_KEY"


def target(url: str, **changes) -> SyncTarget:
    fields = {
        "name": "mc",
        "kind": "mailchimp",
        "base_url": url,
        "api_key": API_KEY,
        "segments": ("gold", "silver"),
        "membership": "tag",
        "properties": {"first_name": "attributes.first_name"},
        "options": {"audience_id": DEFAULT_LIST_ID},
    }
    return SyncTarget(**(fields | changes))


def wanted(engine, t: SyncTarget) -> dict[str, dict]:
    """What segflow wants remotely, in the fake's snapshot shape (properties as
    the merge fields the connector maps them to)."""
    with engine.connect() as conn:
        plan = plan_sync(conn, t)
    out = {}
    for w in plan.wanted.values():
        p = w.person
        props = {mailchimp.merge_tag(k): v for k, v in p.properties.items() if v not in (None, "")}
        out[p.email] = {
            "subscribed": p.subscribed if p.subscribed is not None else None,
            "segments": sorted(w.segments),
            "properties": props,
        }
    return out


def requests(api, method: str, suffix: str = "") -> int:
    return sum(1 for m, path, _ in api.log if m == method and path.endswith(suffix))


def test_the_remote_state_is_segflows_and_no_event_is_posted_twice_after_faults(db_url, tmp_path):
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    api = MailchimpApi()
    connector = esp_connectors()["mailchimp"]
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
        # And again with nothing to do: nothing is resent.
        assert run_sync(engine, t, connector).sent == 0
        snap = api.snapshot()
        assert verify_sync(engine, t, connector).ok
    assert any(isinstance(what, str) for _m, _p, what in api.log), "no fault was met"
    assert snap["people"] == wanted(engine, t)
    per_id = Counter(uid for _e, _n, uid in snap["events"])
    assert per_id and set(per_id.values()) == {1}, per_id
    got = sorted((email, name) for email, name, _ in snap["events"])
    assert got == sorted(
        [
            ("p0@example.com", "exited_segment_gold"),
            ("p0@example.com", "entered_segment_silver"),
            ("p1@example.com", "exited_segment_silver"),
            ("p2@example.com", "entered_segment_gold"),
        ]
    )


async def _upsert_directly(url: str, persons: list[SyncPerson]):
    t = target(url)
    client = SyncClient(t.base_url, mailchimp.LIMITS, headers=mailchimp.auth_headers(t))
    async with client, mailchimp.open_session(t, client) as session:
        session.poll = 0.01
        return await mailchimp.upsert(session, persons)


def test_big_calls_go_through_batches_and_map_each_operation_back():
    n = mailchimp.BATCH_ABOVE + 50
    persons = [
        SyncPerson(i, f"b{i}@example.com", properties={"first_name": f"B{i}"}, subscribed=True)
        for i in range(n)
    ]
    bad = n // 2
    persons[bad] = SyncPerson(bad, "not-an-address", subscribed=True)
    api = MailchimpApi()
    with running(api) as url:
        results = asyncio.run(_upsert_directly(url, persons))
        assert requests(api, "POST", "/batches") == 1 and requests(api, "PUT") == 0
        small = asyncio.run(_upsert_directly(url, persons[:5]))
        assert requests(api, "POST", "/batches") == 1 and requests(api, "PUT") == 5
    assert [r.status for r in small] == ["ok"] * 5
    assert results[bad].status == "failed" and "email" in (results[bad].reason or "").lower()
    assert [r.status for i, r in enumerate(results) if i != bad] == ["ok"] * (n - 1)
    members = api.members()
    assert len(members) == n - 1 and members["b1@example.com"]["merge_fields"]["FNAME"] == "B1"
    # A run's calls stay within what one call carries; above that the engine splits them.
    assert mailchimp.LIMITS.profiles_per_call > mailchimp.BATCH_ABOVE
    assert mailchimp.LIMITS.concurrency <= 10


async def _delete_directly(url: str, persons: list[SyncPerson]):
    t = target(url)
    client = SyncClient(t.base_url, mailchimp.LIMITS, headers=mailchimp.auth_headers(t))
    async with client, mailchimp.open_session(t, client) as session:
        return await mailchimp.delete(session, persons)


def test_erasure_deletes_for_good_and_twice_is_still_done():
    persons = [SyncPerson(i, f"e{i}@example.com", subscribed=True) for i in range(3)]
    api = MailchimpApi()
    with running(api) as url:
        asyncio.run(_upsert_directly(url, persons))
        first = asyncio.run(_delete_directly(url, persons[:2]))
        again = asyncio.run(_delete_directly(url, persons[:2]))
    assert [r.status for r in first + again] == ["ok"] * 4
    assert set(api.members()) == {"e2@example.com"}
    assert api.forgotten() == {"e0@example.com", "e1@example.com"}


def test_a_refused_record_fails_alone_and_is_retried_next_run(sqlite_url, tmp_path):
    ids = store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    with engine.begin() as conn:
        for i, pid in enumerate(ids):
            update_attributes(conn, pid, {"age": "old" if i == 0 else str(20 + i)})
    api = MailchimpApi()
    connector = esp_connectors()["mailchimp"]
    with running(api) as url:
        t = target(url, properties={"first_name": "attributes.first_name", "age": "attributes.age"})
        asyncio.run(_number_field(url, "AGE"))
        first = run_sync(engine, t, connector)
        assert first.failed and sum(first.failed.values()) == 1, first.failed
        (reason,) = first.failed
        assert "AGE" in reason and "number" in reason
        assert first.upserted == 7 and "p0@example.com" not in api.members()
        with engine.begin() as conn:
            update_attributes(conn, ids[0], {"age": "70"})
        again = run_sync(engine, t, connector)
        assert again.upserted == 1 and not again.failed
        assert api.members()["p0@example.com"]["merge_fields"]["AGE"] == "70"
        assert verify_sync(engine, t, connector).ok


async def _number_field(url: str, tag: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"apikey {API_KEY}"}) as c:
        r = await c.post(f"/3.0/lists/{DEFAULT_LIST_ID}/merge-fields",
                         json={"tag": tag, "name": tag, "type": "number"})  # fmt: skip
        assert r.status_code == 200, r.text


def test_consent_is_never_invented_and_a_withdrawal_unsubscribes(sqlite_url, tmp_path):
    from core.consents import set_consent

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
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, run_segments

    kinds = condition_kinds()
    run_segments(engine, NOW, kinds=kinds,
                 definitions=load_segment_files(tmp_path / "segments", kinds))  # fmt: skip
    api = MailchimpApi()
    connector = esp_connectors()["mailchimp"]
    with running(api) as url:
        t = target(url, segments=("gold",))
        run_sync(engine, t, connector)
        status = {e: m["status"] for e, m in api.members().items()}
        assert status == {
            "p0@example.com": "subscribed",
            "p1@example.com": "subscribed",
            "p2@example.com": "transactional",
            "p3@example.com": "transactional",
        }
        set_consent(engine, "p1", "email", False, "test")
        run_sync(engine, t, connector)
        assert api.members()["p1@example.com"]["status"] == "unsubscribed"
        assert api.members()["p2@example.com"]["status"] == "transactional"
        assert api.snapshot()["people"]["p1@example.com"]["subscribed"] is False
        assert verify_sync(engine, t, connector).ok


def test_the_connection_cap_is_met_with_429s_that_are_retried(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    engine = open_db(sqlite_url)
    connector = esp_connectors()["mailchimp"]
    # Within the documented 10 connections nothing is refused ...
    api = MailchimpApi(latency=0.02)
    with running(api) as url:
        t = target(url)
        report = run_sync(engine, t, connector)
        assert requests(api, "PUT") == 8 and report.throttled == 0
        assert not any(what == 429 for _m, _p, what in api.log)
    # ... and a key whose other clients hold most of the slots gets 429s, retried.
    engine.dispose()
    other = tmp_path / "other"
    other.mkdir()
    store(f"sqlite:///{other}/segflow.db", other)
    engine = open_db(f"sqlite:///{other}/segflow.db")
    api = MailchimpApi(max_connections=2, latency=0.02)
    with running(api) as url:
        t = target(url)
        report = run_sync(engine, t, connector)
        while report.retry:
            report = run_sync(engine, t, connector)
        assert any(what == 429 for _m, _p, what in api.log)
        assert verify_sync(engine, t, connector).ok


def test_a_dry_run_from_the_cli_sends_nothing(sqlite_url, tmp_path):
    store(sqlite_url, tmp_path)
    api = MailchimpApi()
    with running(api) as url:
        (tmp_path / "segflow.toml").write_text(
            "[[segflow.connectors]]\n"
            f'name = "mc"\nkind = "mailchimp"\nbase_url = "{url}"\n'
            f'api_key_env = "{KEY_ENV}"\nsegments = ["gold", "silver"]\n'
            f'options = {{audience_id = "{DEFAULT_LIST_ID}"}}\n'
        )
        os.environ[KEY_ENV] = API_KEY
        try:
            dry = segflow_child(sqlite_url, "sync", "run", "--dry-run", cwd=tmp_path,
                                plugins=",".join(DEFAULT_PLUGINS))  # fmt: skip
        finally:
            del os.environ[KEY_ENV]
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run" in dry.stdout and API_KEY not in dry.stdout + dry.stderr
    assert api.log == [] and api.members() == {}


def test_the_data_centre_comes_from_the_key_unless_base_url_is_given():
    t = target(mailchimp.DEFAULT_BASE_URL)
    assert mailchimp.base_of(t) == "https://us21.api.mailchimp.com/3.0"
    assert mailchimp.base_of(target("http://127.0.0.1:9")) == "http://127.0.0.1:9/3.0"
    assert mailchimp.base_of(target("http://127.0.0.1:9/3.0/")) == "http://127.0.0.1:9/3.0"
    assert mailchimp.event_name("Entered segment big_spenders") == "entered_segment_big_spenders"
