"""The sync engine with each real connector, against its fake over HTTP, on
SQLite and PostgreSQL: only what changed is sent, consent and leaving a
segment are synced, segment events are not duplicated, injected faults end
in the same remote state, and a `segflow sync run` killed with SIGKILL
between a batch's answer and its state write ends, once run again, as an
uninterrupted run does. The remote state is read back by the connector
(``verify_sync``) and, independently, from the fake's own state."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import SYNC_STATES
from core.plugins import DEFAULT_PLUGINS, esp_connectors
from core.profiles import update_attributes
from core.segments.store import run_segments
from core.sync import run_sync, verify_sync
from core.types import SyncTarget
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.server import Faults, running
from tests.helpers import people, segflow_child, sync_until_settled

NOW = datetime.now(UTC).replace(microsecond=0)
# Not SEGFLOW_*: child processes get none of those from the test.
KEY_ENV = "FAKE_ESP_API_KEY"
SEGMENTS = """
- name: gold
  description: gold tier
  rule: {attribute: tier, op: "==", value: gold}
- name: silver
  description: silver tier
  rule: {attribute: tier, op: "==", value: silver}
"""
# Per connector: the fake's tier for functional tests, how membership is expressed.
KINDS = {
    "mailchimp": {
        "tier": "default",
        "membership": "tag",
        "key": "0123456789abcdef0123456789abcdef-us21",
        "options": {"audience_id": "a1b2c3d4e5"},
    },
    "klaviyo": {
        "tier": "fast",
        "membership": "list",
        "key": "pk_test",
        "options": {"list_prefix": "segflow: "},
    },
    "hubspot": {
        "tier": "fast",
        "membership": "list",
        "key": "pat-na1-11111111-2222-4333-8444-555555555555",
        "options": {"list_prefix": "segflow: "},
    },
}
PEOPLE = 12


def event_ids(kind: str, api) -> list[str]:
    """The unique ids of the segment events the fake holds, one per event stored."""
    if kind == "mailchimp":
        return [e["properties"].get("unique_id") for e in api.all_events()]
    if kind in ("klaviyo", "hubspot"):
        return [uid for _email, _name, uid in api.snapshot()["events"]]
    raise AssertionError(f"no event reader for {kind}")


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> str:
    if request.param not in esp_connectors() or esp_connectors()[request.param].sync is None:
        pytest.fail(f"no {request.param} connector with a sync API is registered")
    return request.param


def store(url: str, tmp_path: Path) -> list[int]:
    """PEOPLE people with email consent, a third gold, a third silver, a first name."""
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files

    engine = open_db(url)
    ids = people(engine, PEOPLE)
    with engine.begin() as conn:
        for i, pid in enumerate(ids):
            tier = ("gold", "silver", "none")[i % 3]
            update_attributes(conn, pid, {"tier": tier, "first_name": f"P{i}"})
    (tmp_path / "segments").mkdir(exist_ok=True)
    (tmp_path / "segments" / "tiers.yaml").write_text(SEGMENTS)
    kinds = condition_kinds()
    run_segments(engine, NOW, kinds=kinds,
                 definitions=load_segment_files(tmp_path / "segments", kinds))  # fmt: skip
    engine.dispose()
    return ids


def target(kind: str, url: str, **changes) -> SyncTarget:
    fields = {
        "name": f"{kind}_test",
        "kind": kind,
        "base_url": url,
        "api_key": KINDS[kind]["key"],
        "segments": ("gold", "silver"),
        "membership": KINDS[kind]["membership"],
        "options": KINDS[kind]["options"],
        "properties": {"first_name": "attributes.first_name"},
    }
    return SyncTarget(**(fields | changes))


def resegment(url: str, as_of: datetime) -> None:
    from core.plugins import condition_kinds

    engine = open_db(url)
    run_segments(engine, as_of, kinds=condition_kinds())
    engine.dispose()


def writes(api) -> int:
    return sum(1 for method, _path, _what in api.log if method != "GET")


@pytest.mark.parametrize("read_by", ["lookups", "one scan"])
def test_a_first_sync_then_only_what_changed(db_url, tmp_path, kind, read_by, monkeypatch):
    import core.consents
    import core.sync.engine

    if read_by == "one scan":  # profiles and consents read in one pass, as for big stores
        monkeypatch.setattr(core.sync.engine, "SCAN_ABOVE", 0)
        monkeypatch.setattr(core.consents, "SCAN_ABOVE", 0)
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    api = make_fake(kind, KINDS[kind]["tier"])
    connector = esp_connectors()[kind]
    with running(api) as url:
        t = target(kind, url)
        first = run_sync(engine, t, connector)
        assert first.people == 8 and first.upserted == 8  # gold and silver, 4 each
        assert first.added == 8 and first.removed == 0 and not first.failed and not first.retry
        assert verify_sync(engine, t, connector).ok

        before = writes(api)
        again = run_sync(engine, t, connector)
        assert again.sent == 0 and again.unchanged == 8
        assert writes(api) == before  # nothing written remotely

        # One person's first name changes, one moves from gold to silver, one
        # withdraws consent, one leaves both segments.
        gold, silver = ids[0], ids[1]
        with engine.begin() as conn:
            update_attributes(conn, ids[3], {"first_name": "Renamed"})
            update_attributes(conn, gold, {"tier": "silver"})
            update_attributes(conn, silver, {"tier": "none"})
        from core.consents import set_consent

        set_consent(engine, "p6", "email", False, "test")
        resegment(db_url, NOW + timedelta(minutes=5))
        changed = run_sync(engine, t, connector)
        # upserts: the renamed one, the withdrawn one; the mover's and the
        # leaver's fields did not change, only their memberships.
        assert changed.upserted == 2
        assert changed.added == 1 and changed.removed == 2
        report = verify_sync(engine, t, connector)
        assert report.ok, report.differences
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(SYNC_STATES.c.profile_id, SYNC_STATES.c.segments).where(
                    SYNC_STATES.c.connector == t.name
                )
            ).all()
        )
    assert states[gold] == ["silver"] and states[silver] == []
    assert states[ids[6]] == ["gold"]


def test_verify_reports_each_difference_until_a_run_syncs_it(db_url, tmp_path, kind):
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    api = make_fake(kind, KINDS[kind]["tier"])
    connector = esp_connectors()[kind]
    with running(api) as url:
        t = target(kind, url)
        run_sync(engine, t, connector)
        # segflow moves on (a segment change, a withdrawal) and nothing is synced yet.
        with engine.begin() as conn:
            update_attributes(conn, ids[0], {"tier": "silver"})
        from core.consents import set_consent

        set_consent(engine, "p1", "email", False, "test")
        resegment(db_url, NOW + timedelta(minutes=5))
        report = verify_sync(engine, t, connector)
        found = {(d.email, d.what, str(d.segflow), str(d.remote)) for d in report.differences}
        assert found == {
            ("p0@example.com", "segments", "['silver']", "['gold']"),
            ("p1@example.com", "subscribed", "False", "True"),
        }
        # A run syncs both; so does a reconciling run after segflow forgot what
        # it had synced (a restored database): it reads the remote state first.
        synced = run_sync(engine, t, connector)
        assert synced.upserted == 1 and synced.added == 1 and synced.removed == 1
        assert verify_sync(engine, t, connector).ok
        with engine.begin() as conn:
            update_attributes(conn, ids[3], {"tier": "none"})
            conn.execute(SYNC_STATES.delete())
        resegment(db_url, NOW + timedelta(minutes=10))
        assert not verify_sync(engine, t, connector).ok
        again = run_sync(engine, t, connector, reconcile=True)
        # The one who left gold is still a remote member: upserted, and taken out.
        assert again.upserted == 8 and again.removed == 1 and again.added == 0
        assert not again.failed and not again.retry
        assert verify_sync(engine, t, connector).ok


# Every connector on SQLite; on PostgreSQL one (the engine's transactions are
# the same on both, and each connector's own fault test runs on both).
@pytest.mark.parametrize(
    ("backend", "kind"),
    [*(("sqlite", k) for k in sorted(KINDS)),
     pytest.param("postgresql", "mailchimp", marks=pytest.mark.postgres)],
)  # fmt: skip
def test_faults_are_retried_and_end_in_the_same_remote_state(backend, kind, tmp_path, request):
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    ids = store(db_url, tmp_path)
    engine = open_db(db_url)
    faults = Faults(rate=0.3, seed=7, kinds=("429", "500", "drop", "drop_after"))
    api = make_fake(kind, KINDS[kind]["tier"], faults)
    connector = esp_connectors()[kind]
    with running(api) as url:
        t = target(kind, url)

        sync_until_settled(engine, t, connector)
        # Everyone moves tier: 8 exits and 8 entries, each an event sent under faults.
        with engine.begin() as conn:
            for i, pid in enumerate(ids):
                update_attributes(conn, pid, {"tier": ("silver", "none", "gold")[i % 3]})
        resegment(db_url, NOW + timedelta(minutes=5))
        runs = sync_until_settled(engine, t, connector)
        assert sum(r.events for r in runs) == 16
        api.faults = Faults()
        report = verify_sync(engine, t, connector)
        assert report.ok, report.differences
    met = [what for _m, _p, what in api.log if isinstance(what, str)]
    assert {"429", "500", "drop", "drop_after"} <= set(met)
    stored = event_ids(kind, api)
    assert len(stored) == len(set(stored)) == 16, sorted(stored)


# Every point on SQLite; on PostgreSQL the one between an answer and its state
# write (the engine's transactions are the same on both, the kills cost seconds).
# A Klaviyo first sync of these people is one write (its upsert adds the
# memberships), so it has no second one to be killed after.
@pytest.mark.parametrize(
    ("backend", "crash_at", "kind"),
    [*(("sqlite", at, k) for at in ("sync.sent:1", "sync.written:1") for k in sorted(KINDS)),
     *(("sqlite", "sync.sent:2", k) for k in sorted(KINDS) if k != "klaviyo"),
     *(pytest.param("postgresql", "sync.written:1", k, marks=pytest.mark.postgres)
       for k in sorted(KINDS))],
)  # fmt: skip
def test_a_run_killed_between_the_answer_and_the_state_write_ends_the_same(
    backend, tmp_path, kind, crash_at, request
):
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    store(db_url, tmp_path)
    api = make_fake(kind, KINDS[kind]["tier"])
    plugins = ",".join(DEFAULT_PLUGINS)
    with running(api) as url:
        (tmp_path / "segflow.toml").write_text(
            "[[segflow.connectors]]\n"
            f'name = "{kind}_test"\nkind = "{kind}"\nbase_url = "{url}"\n'
            f'api_key_env = "{KEY_ENV}"\nsegments = ["gold", "silver"]\n'
            f'membership = "{KINDS[kind]["membership"]}"\n'
            'properties = {first_name = "attributes.first_name"}\n'
            + "".join(f'options.{k} = "{v}"\n' for k, v in KINDS[kind]["options"].items())
        )
        import os

        os.environ[KEY_ENV] = KINDS[kind]["key"]
        try:
            killed = segflow_child(db_url, "sync", "run", cwd=tmp_path, plugins=plugins,
                                   crash_at=crash_at)  # fmt: skip
            assert killed.returncode == -signal.SIGKILL, killed.stderr
            again = segflow_child(db_url, "sync", "run", cwd=tmp_path, plugins=plugins)
            assert again.returncode == 0, again.stdout + again.stderr
            verified = segflow_child(db_url, "sync", "verify", "--connector", f"{kind}_test",
                                     cwd=tmp_path, plugins=plugins)  # fmt: skip
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "0 differences" in verified.stdout
        finally:
            del os.environ[KEY_ENV]
