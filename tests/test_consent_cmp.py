"""The CMP webhook (POST /v1/consents/cmp) on a real server: signed events from
a consent-management platform, mapped from its purpose ids, recorded with
source "cmp", the text version and the decision's own time, taking effect at
once (the gate, and marketing workflow runs ended), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import sqlalchemy as sa
import yaml

from core.api import create_app
from core.automation import run_tick
from core.automation.engine import enter
from core.automation.language import default_registry, parse_workflow
from core.config import Settings
from core.db import open_db
from core.db.tables import AUDIT, CONSENTS, EVENTS, WORKFLOW_STATES
from core.privacy.cmp import SIGNATURE_HEADER, signature
from core.privacy.consent import WITHDRAWN, email_refusals
from core.privacy.settings import CmpSettings, ConsentPolicy, PrivacySettings
from core.types import Entry
from tests.helpers import people
from tests.helpers import serving as serving_app

SECRET_ENV = "TEST_CMP_SECRET"
SECRET = "cmp-shared-secret-0123"
MAPPING = {"newsletter": "email_marketing", "promos": "email_marketing", "analytics": "tracking"}
CMP = CmpSettings(secret_env=SECRET_ENV, purposes=MAPPING)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def engine(db_url):
    return open_db(db_url)


@contextmanager
def serving(engine, url: str, cmp: CmpSettings | None = CMP) -> Iterator[httpx.Client]:
    privacy = PrivacySettings(consent=ConsentPolicy(cmp=cmp))
    app = create_app(engine, Settings(database_url=url, secret_key="s" * 32, privacy=privacy))
    with serving_app(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def cmp_event(user: dict, at: datetime, choices: dict[str, bool], **more) -> dict:
    return {
        "user": user,
        "decided_at": at.isoformat(),
        "purposes": [{"id": k, "enabled": v} for k, v in choices.items()],
        **more,
    }


def post(client, payload, *, secret=SECRET, at=None, body=None) -> httpx.Response:
    raw = body if body is not None else orjson.dumps(payload)
    stamp = int(time.time()) if at is None else at
    headers = {SIGNATURE_HEADER: signature(raw, secret, stamp), "content-type": "application/json"}
    return client.post("/v1/consents/cmp", content=raw, headers=headers)


def consents(engine, pid: int) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(CONSENTS).where(CONSENTS.c.profile_id == pid)).mappings()
        return {
            r["purpose"]: (r["granted"], r["source"], r["version"], r["updated_at"]) for r in rows
        }


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_a_signed_cmp_event_records_the_mapped_purposes_at_their_time_and_moves_the_gate(
    engine, db_url, monkeypatch
):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    (pid,) = people(engine, 1, consent=False)
    ann = {"id": "p0"}
    decided = NOW - timedelta(minutes=10)
    with serving(engine, db_url) as client:
        grant = cmp_event(ann, decided, {"newsletter": True, "analytics": True, "ads-x": True},
                          id="evt-1", text_version="notice-v7")  # fmt: skip
        answer = post(client, grant)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "recorded": {"email_marketing": True, "tracking": True},
            "version": "notice-v7",
            "ignored": 1,
            "ignored_ids": ["ads-x"],
        }
        found = {p: (g, s, v, utc(at)) for p, (g, s, v, at) in consents(engine, pid).items()}
        assert found == {
            "email_marketing": (True, "cmp", "notice-v7", decided),
            "tracking": (True, "cmp", "notice-v7", decided),
        }
        with engine.connect() as conn:
            assert email_refusals(conn, [pid]) == {}
        # The CMP retries a delivery it did not see answered: stored once.
        assert post(client, grant).status_code == 200
        with engine.connect() as conn:
            grants = conn.execute(
                sa.select(sa.func.count()).select_from(AUDIT).where(AUDIT.c.actor == "cmp")
            ).scalar_one()
            stored = conn.execute(
                sa.select(EVENTS.c.source, EVENTS.c.message_id).where(EVENTS.c.source == "cmp")
            ).all()
        assert grants == 2 and stored == [("cmp", "cmp:evt-1")]
        # The person says no by email address, to one of two ids mapped to
        # email_marketing and yes to the other: the withdrawal wins, at once.
        later = NOW - timedelta(minutes=5)
        no = cmp_event({"email": "p0@example.com"}, later, {"newsletter": False, "promos": True})
        assert post(client, no).json()["recorded"] == {"email_marketing": False}
        with engine.connect() as conn:
            assert email_refusals(conn, [pid]) == {pid: WITHDRAWN}
        # An older decision arriving late does not undo the newer one.
        stale = cmp_event(ann, later - timedelta(minutes=1), {"newsletter": True})
        assert post(client, stale).status_code == 200
        with engine.connect() as conn:
            assert email_refusals(conn, [pid]) == {pid: WITHDRAWN}
        # Only unknown ids: nothing to record, said so, nothing stored.
        before = consents(engine, pid)
        none = post(client, cmp_event(ann, NOW, {"ads-x": False, "ads-y": True}))
        assert none.json() == {"recorded": {}, "version": None, "ignored": 2,
                               "ignored_ids": ["ads-x", "ads-y"]}  # fmt: skip
        assert consents(engine, pid) == before


def test_bad_signatures_get_401_and_malformed_bodies_a_4xx_naming_the_field(
    engine, db_url, monkeypatch
):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    people(engine, 1, consent=False)
    good = cmp_event({"id": "p0"}, NOW, {"newsletter": True})
    raw = orjson.dumps(good)
    with serving(engine, db_url) as client:
        unsigned = client.post("/v1/consents/cmp", content=raw)
        assert unsigned.status_code == 401 and SIGNATURE_HEADER in unsigned.json()["error"]
        assert post(client, good, secret="not-the-secret-at-all").status_code == 401
        stale = post(client, good, at=int(time.time()) - 3600)
        assert stale.status_code == 401 and "tolerance" in stale.json()["error"]
        tampered = raw.replace(b"true", b"false")
        headers = {SIGNATURE_HEADER: signature(raw, SECRET, int(time.time()))}
        assert client.post("/v1/consents/cmp", content=tampered, headers=headers).status_code == 401

        def refused(payload=None, body=None) -> tuple[int, dict]:
            answer = post(client, payload, body=body)
            return answer.status_code, answer.json()

        assert refused(body=b"{not json") == (400, {"error": "body is not valid JSON"})
        assert refused(body=b"[1]")[0] == 400
        status, said = refused({**good, "purposes": [{"id": "newsletter", "enabled": "yes"}]})
        assert (status, said["field"]) == (422, "purposes.0.enabled")
        status, said = refused({k: v for k, v in good.items() if k != "decided_at"})
        assert (status, said["field"]) == (422, "decided_at")
        status, said = refused({**good, "decided_at": "2026-12-03T10:00:00"})
        assert (status, said["field"]) == (422, "decided_at") and "timezone" in said["error"]
        status, said = refused({**good, "user": {}})
        assert (status, said["field"]) == (422, "user") and "names nobody" in said["error"]
        status, said = refused({**good, "purposes": []})
        assert (status, said["field"]) == (422, "purposes")
        # The secret's variable unset: the server says which one, and takes nothing.
        monkeypatch.delenv(SECRET_ENV)
        missing = post(client, good)
        assert missing.status_code == 503 and SECRET_ENV in missing.json()["error"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CONSENTS)).scalar_one() == 0
    with serving(engine, db_url, cmp=None) as client:
        assert post(client, good).status_code == 404


WAIT_THEN_SEND = """
name: nurture
trigger: {segment_entered: buyers}
steps:
  - wait: 1h
  - send: {template: welcome}
"""


def test_a_cmp_withdrawal_ends_the_persons_marketing_runs_at_once(engine, db_url, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    definition = parse_workflow(yaml.safe_load(WAIT_THEN_SEND), default_registry())
    run_tick(engine, as_of=NOW - timedelta(days=30), definitions={"nurture": definition})
    withdraws, stays = people(engine, 2)
    enter(engine, {"nurture": [Entry(withdraws, NOW), Entry(stays, NOW)]}, as_of=NOW)

    def runs() -> dict[int, tuple]:
        with engine.connect() as conn:
            q = sa.select(WORKFLOW_STATES.c.profile_id, WORKFLOW_STATES.c.status,
                          WORKFLOW_STATES.c.reason)  # fmt: skip
            return {pid: (status, reason) for pid, status, reason in conn.execute(q)}

    assert {s for s, _r in runs().values()} == {"active"}
    with serving(engine, db_url) as client:
        decided = datetime.now(UTC) + timedelta(seconds=1)
        answer = post(client, cmp_event({"id": "p0"}, decided, {"newsletter": False}))
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 10
        while runs()[withdraws][0] == "active":
            assert time.monotonic() < deadline, "the withdrawal ended no run"
            time.sleep(0.05)
    assert runs() == {withdraws: ("exited", "email consent withdrawn"), stays: ("active", None)}
