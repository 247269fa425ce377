"""Consent: purposes with version, the tracking policy at ingestion (drop or
anonymise, single and bulk), consent decisions arriving as identify traits,
and the old purpose name ``email`` on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import core.db as dbmod
from core.db import open_db
from core.db.tables import CONSENTS, EVENTS, IDENTITIES, PROFILES
from core.ingestion import ingest
from core.privacy.consent import WITHDRAWN, email_refusals, set_consent
from core.privacy.policy import ANONYMOUS_ID, DROPPED
from core.privacy.settings import ConsentPolicy
from core.profiles import find_profile_id
from core.segments.kinds.consent import ConsentCondition
from tests.helpers import serving

REQUIRED = ConsentPolicy(tracking="required")
ANONYMISE = ConsentPolicy(tracking="anonymise", anonymous_properties=["plan"])


@pytest.fixture
def engine(db_url):
    return open_db(db_url)


def ev(type_, minute, **kw):
    return {
        "type": type_,
        "ts": f"2026-03-01T10:{minute:02d}:00Z",
        "message_id": f"m{minute}",
        **kw,
    }


def consent(**purposes):
    return {"consent": purposes}


def pid_of(engine, who):
    with engine.connect() as conn:
        return find_profile_id(conn, who)


def stored(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(
                EVENTS.c.type, EVENTS.c.profile_id, EVENTS.c.url, EVENTS.c.properties
            ).order_by(EVENTS.c.ts)
        ).all()


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
def test_required_drops_events_without_tracking_consent_and_counts_them(engine, bulk):
    records = [
        ev("identify", 1, user_id="u1", traits=consent(tracking=True, version="v3")),
        ev("page_view", 2, user_id="u1"),
        ev("page_view", 3, user_id="u2"),  # never asked
        ev("identify", 4, user_id="u3", traits=consent(tracking=False)),
        ev("page_view", 5, user_id="u3"),  # refused
    ]
    report = ingest(engine, records, policy=REQUIRED, bulk=bulk, batch_size=2)
    assert [(r.location, r.reason) for r in report.rejected] == [
        ("message m3", DROPPED),
        ("message m5", DROPPED),
    ]
    assert [(t, p) for t, p, _, _ in stored(engine)] == [
        ("identify", pid_of(engine, "u1")),
        ("page_view", pid_of(engine, "u1")),
        ("identify", pid_of(engine, "u3")),
    ]
    # A later withdrawal holds back the events after it, in the next call.
    ingest(
        engine, [ev("identify", 6, user_id="u1", traits=consent(tracking=False))], policy=REQUIRED
    )
    report = ingest(engine, [ev("page_view", 7, user_id="u1")], policy=REQUIRED)
    assert (report.accepted, [r.reason for r in report.rejected]) == (0, [DROPPED])


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
def test_anonymise_keeps_the_event_but_not_the_person(engine, bulk):
    records = [
        ev("identify", 1, user_id="u1", traits=consent(tracking=True)),
        ev("product_view", 2, user_id="u1", url="https://s.example/p?x=1", properties={"a": 1}),
        ev(
            "product_view",
            3,
            user_id="u2",
            email="u2@example.com",
            session_id="s9",
            url="https://s.example/p/7?email=u2@example.com#top",
            properties={"plan": "pro", "phone": "+15550100"},
        ),
    ]
    report = ingest(engine, records, policy=ANONYMISE, bulk=bulk)
    assert (report.accepted, report.rejected) == (3, [])
    rows = stored(engine)
    assert rows[1][2:] == ("https://s.example/p?x=1", {"a": 1})  # consented: untouched
    assert rows[2][2:] == ("https://s.example/p/7", {"plan": "pro"})
    with engine.connect() as conn:
        values = set(conn.execute(sa.select(IDENTITIES.c.value)).scalars())
    assert values == {"u1", ANONYMOUS_ID}  # no trace of u2 or their email
    with engine.connect() as conn:
        sessions = conn.execute(sa.select(EVENTS.c.session_id).order_by(EVENTS.c.ts)).scalars()
        assert list(sessions)[2] is None
    assert rows[2][1] == pid_of(engine, ANONYMOUS_ID)


def test_identify_traits_record_each_purpose_with_version_and_move_the_gate(engine):
    ingest(
        engine,
        [
            ev(
                "identify",
                1,
                user_id="u1",
                traits={
                    "email": "u1@example.com",
                    "name": "Ann",
                    **consent(
                        email_marketing=True, personalisation=False, version="v3", source="signup"
                    ),
                },
            )
        ],
    )
    pid = pid_of(engine, "u1")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                CONSENTS.c.purpose, CONSENTS.c.granted, CONSENTS.c.source, CONSENTS.c.version
            ).order_by(CONSENTS.c.purpose)
        ).all()
        attributes = conn.execute(
            sa.select(PROFILES.c.attributes).where(PROFILES.c.id == pid)
        ).scalar()
        assert email_refusals(conn, [pid]) == {}
    assert [tuple(r) for r in rows] == [
        ("email_marketing", True, "signup", "v3"),
        ("personalisation", False, "signup", "v3"),
    ]
    assert "consent" not in attributes and attributes["name"] == "Ann"
    # The old name, a withdrawal: refused at once. An older decision arriving late is ignored.
    ingest(engine, [ev("identify", 5, user_id="u1", traits=consent(email=False))])
    ingest(engine, [ev("identify", 3, user_id="u1", traits=consent(email_marketing=True))])
    with engine.connect() as conn:
        assert email_refusals(conn, [pid]) == {pid: WITHDRAWN}


def test_unreadable_consent_traits_reject_the_event_naming_the_field(engine):
    report = ingest(
        engine,
        [
            ev("identify", 1, user_id="u1", traits=consent(newsletter=True)),
            ev("identify", 2, user_id="u2", traits=consent(tracking="yes")),
            ev("identify", 3, user_id="u3", traits={"consent": True}),
        ],
    )
    reasons = [r.reason for r in report.rejected]
    assert reasons[0].startswith("traits.consent.newsletter: unknown purpose")
    assert reasons[1] == "traits.consent.tracking: expected true or false, got 'yes'"
    assert reasons[2] == "traits.consent: expected an object of purposes, got bool"
    assert report.accepted == 0


def test_old_purpose_name_is_an_alias_and_migration_0013_renames_it(db_url):
    engine = dbmod.make_engine(db_url)
    dbmod.upgrade(engine, "0012")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO profiles (attributes, created_at, updated_at) "
            "VALUES ('{}', '2026-01-01', '2026-01-01')"
        )
        pid = conn.exec_driver_sql("SELECT max(id) FROM profiles").scalar()
        conn.exec_driver_sql(
            f"INSERT INTO consents (profile_id, purpose, granted, source, updated_at) "
            f"VALUES ({pid}, 'email', true, 'old', '2026-01-01')"
        )
    dbmod.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(CONSENTS.c.purpose, CONSENTS.c.version)).all() == [
            ("email_marketing", None)
        ]
        assert email_refusals(conn, [pid]) == {}
    assert ConsentCondition(consent="email").consent == "email_marketing"


def test_set_consent_keeps_source_time_and_version(engine):
    ingest(engine, [ev("identify", 1, user_id="u1")])
    pid = set_consent(engine, "u1", "email_marketing", True, "api", version="v7")
    with engine.connect() as conn:
        row = conn.execute(sa.select(CONSENTS)).one()
        assert email_refusals(conn, [pid]) == {}
        set_consent(engine, "u1", "email", False, "api", version="v8")
        assert email_refusals(conn, [pid]) == {pid: WITHDRAWN}
    assert (row.purpose, row.source, row.version, row.updated_at is not None) == (
        "email_marketing",
        "api",
        "v7",
        True,
    )


def test_the_consents_route_needs_events_write_and_takes_effect_at_once(sqlite_url):

    import httpx

    from core.api import create_app
    from core.config import Settings
    from core.keys import create_key

    engine = open_db(sqlite_url)
    ingest(engine, [ev("identify", 1, user_id="u1", traits={"email": "u1@example.com"})])
    app = create_app(engine, Settings(database_url=sqlite_url, secret_key="s" * 32))
    write = {"Authorization": f"Bearer {create_key(engine, 'w', ['events:write'])[1]}"}
    read = {"Authorization": f"Bearer {create_key(engine, 'r', ['profiles:read'])[1]}"}
    body = {"user_id": "u1", "consent": {"email_marketing": True, "version": "v4"}}
    pid = pid_of(engine, "u1")
    with serving(app) as base, httpx.Client(base_url=base) as client:
        assert client.post("/v1/consents", json=body).status_code == 401
        assert client.post("/v1/consents", json=body, headers=read).status_code == 403
        bad = client.post(
            "/v1/consents", json={"user_id": "u1", "consent": {"x": 1}}, headers=write
        )
        assert bad.status_code == 400 and "unknown purpose" in bad.text
        ok = client.post("/v1/consents", json=body, headers=write)
        assert ok.status_code == 200, ok.text
        with engine.connect() as conn:
            assert email_refusals(conn, [pid]) == {}
        body["consent"] = {"email_marketing": False, "version": "v4"}
        assert client.post("/v1/consents", json=body, headers=write).status_code == 200
        with engine.connect() as conn:
            assert email_refusals(conn, [pid]) == {pid: WITHDRAWN}
