"""Delivery: the MIME form, the messages outbox (one delivery per idempotency key),
the consent gate, the outbox connector and segment sends, on a real database
and a real folder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa

from core.consents import email_refusals, set_consent
from core.db import open_db
from core.db.tables import MESSAGES, PROFILES
from core.ingestion import ingest
from core.personalize.delivery import campaign_key, deliver, send
from core.personalize.mime import message_id, to_mime
from core.plugins import esp_connectors
from core.segments.store import load_segment_files, run_segments
from core.types import CommandError, UsageError
from plugins.esp.outbox import file_stem
from tests.helpers import delivery_settings, people, rendered_email

CONNECTORS = esp_connectors()
OUTBOX = CONNECTORS["outbox"]


def messages(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(MESSAGES)).mappings().all()
    return {r["idempotency_key"]: dict(r) for r in rows}


def outbox_settings(folder):
    return delivery_settings(esp_outbox={"folder": str(folder), "from": "Shop <news@shop.example>"})


# -- MIME ---------------------------------------------------------------------


def test_mime_is_multipart_alternative_with_both_parts_and_a_stable_message_id():
    email = rendered_email(7, "c1:seg:tpl:7", html="<p>" + "é" * 3000 + "</p>")
    first = to_mime(email, "Shop <news@Shop.Example>")
    again = to_mime(email, "Shop <news@shop.example>")
    other = to_mime(rendered_email(7, "c2:seg:tpl:7"), "Shop <news@shop.example>")
    assert first["Message-ID"] == again["Message-ID"] == message_id("c1:seg:tpl:7", "shop.example")
    assert str(first["Message-ID"]).endswith("@shop.example>")
    assert other["Message-ID"] != first["Message-ID"]
    raw = first.as_bytes()
    # Inlined HTML is one long line; SMTP allows 998 characters a line.
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = parsed.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    # On the wire lines end in CRLF, and set_content ends each part with one.
    assert html.get_content().rstrip() == email.html
    assert text.get_content().replace("\r\n", "\n") == email.text
    assert parsed["Subject"] == email.subject and parsed["To"] == email.to
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"subject": "é" * 100, "to": "Zoë Ünal <zoe@example.com>"},
        {"subject": "日本語のテキスト🎉" * 12, "text": "a\r\nb\rc\n" + "=" * 300},
        {"html": "<p>" + "x" * 5000 + "</p>", "text": "trailing space \nend"},
    ],
)
def test_the_written_wire_form_is_the_email_packages_and_follows_changes(changes):
    """to_mime writes the message's bytes itself; they must be exactly what the
    email package's generator makes of the same message, and a connector's
    change to the message must reach the wire."""
    from email.message import EmailMessage

    email = rendered_email(3, "k3", **changes)
    message = to_mime(email, "Café Shop <news@shop.example>")
    wire = message.as_bytes()
    assert wire == EmailMessage.as_bytes(message)
    parsed = message_from_bytes(wire, policy=policy.default)
    assert parsed["Subject"] == email.subject and parsed["To"] == email.to
    assert str(parsed["From"]) == "Café Shop <news@shop.example>"
    text, html = parsed.iter_parts()
    assert html.get_content().rstrip() == email.html
    normalised = email.text.replace("\r\n", "\n").replace("\r", "\n")
    assert text.get_content().replace("\r\n", "\n").rstrip("\n") == normalised.rstrip("\n")
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    message["X-Added"] = "by the connector"
    html_part = message.get_payload()[1]
    html_part.set_payload("<p>Howdy</p>\n")
    changed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert changed["X-Added"] == "by the connector"
    assert "Howdy" in changed.get_payload()[1].get_content()


def test_a_mailbox_that_is_not_ascii_still_makes_a_message():
    email = rendered_email(4, "k4", to="José <josé@example.com>")
    parsed = message_from_bytes(
        to_mime(email, "Shop <news@shop.example>").as_bytes(), policy=policy.SMTPUTF8
    )
    assert parsed["To"].addresses[0].username == "josé"
    assert parsed.get_content_type() == "multipart/alternative"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"headers": {"X-Campaign": "a\r\nBcc: all@example.com"}}, "linefeed"),
        ({"headers": {"Bcc": "all@example.com"}}, "may not be set"),
        ({"to": "not an address"}, "not an email address"),
        ({"idempotency_key": ""}, "no idempotency key"),
    ],
)
def test_mime_refuses_what_would_change_who_gets_the_mail(changes, error):
    with pytest.raises(ValueError, match=error):
        to_mime(rendered_email(1, "k", **changes), "Shop <news@shop.example>")


# -- the consent gate -----------------------------------------------------------


@pytest.fixture(params=["lookups", "one scan"])
def read_by(request, monkeypatch):
    """The gate looks consents up for a few people and scans them for many: both."""
    import core.consents

    if request.param == "one scan":
        monkeypatch.setattr(core.consents, "SCAN_ABOVE", 0)
    return request.param


def test_consent_gate(db_url, read_by):
    engine = open_db(db_url)
    ids = people(engine, 6, consent=False)
    past = datetime.now(UTC) - timedelta(days=2)
    # p0: no consent row. p1: granted. p2: withdrawn.
    set_consent(engine, "p1", "email", True, "signup")
    set_consent(engine, "p2", "email", True, "signup")
    set_consent(engine, "p2", "email", False, "preferences")
    # p3: granted, then an unsubscribe event (an ESP's webhook, say) without a consent change.
    set_consent(engine, "p3", "email", True, "signup")
    # p4: unsubscribed two days ago, granted again since.
    unsubscribes = [{"type": "unsubscribe", "user_id": "p3"}]
    unsubscribes.append({"type": "unsubscribe", "user_id": "p4", "ts": past.isoformat()})
    ingest(engine, unsubscribes)
    set_consent(engine, "p4", "email", True, "preferences")
    # p5: granted only another purpose.
    set_consent(engine, "p5", "tracking", True, "banner")
    with engine.connect() as conn:
        refused = email_refusals(conn, ids)
    assert refused == {
        ids[0]: "no email consent",
        ids[2]: "email consent withdrawn",
        ids[3]: "unsubscribed",
        ids[5]: "no email consent",
    }


def test_consent_gate_follows_merges(db_url, read_by):
    engine = open_db(db_url)
    ingest(engine, [{"type": "identify", "user_id": "u9", "traits": {"email": "u9@x.io"}}])
    ingest(engine, [{"type": "page_view", "anonymous_id": "anon9", "url": "/"}])
    with engine.connect() as conn:
        anon = conn.execute(sa.select(sa.func.max(PROFILES.c.id))).scalar_one()
    set_consent(engine, "anon9", "email", True, "banner")  # given before logging in
    ingest(engine, [{"type": "identify", "user_id": "u9", "anonymous_id": "anon9"}])
    with engine.connect() as conn:
        merged = dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.merged_into)).all())
    assert merged[anon] is not None, "the anonymous profile was merged into u9"
    survivor = merged[anon]
    with engine.connect() as conn:
        assert email_refusals(conn, [anon, survivor]) == {}
    set_consent(engine, "u9", "email", False, "preferences")  # the later decision wins
    with engine.connect() as conn:
        assert email_refusals(conn, [anon, survivor]) == {
            anon: "email consent withdrawn",
            survivor: "email consent withdrawn",
        }


def test_refused_marketing_is_recorded_skipped_and_judged_again_later(db_url, tmp_path):
    engine = open_db(db_url)
    ids = people(engine, 3, consent=False)
    set_consent(engine, "p0", "email", True, "signup")
    emails = [rendered_email(pid, f"k{n}") for n, pid in enumerate(ids)]
    # A transactional email (a receipt) needs no marketing consent.
    emails[2] = rendered_email(ids[2], "k2", marketing=False, template="receipt")
    settings = outbox_settings(tmp_path / "out")
    report = deliver(engine, emails, via=OUTBOX, settings=settings)
    assert (report.sent, report.skipped) == (2, {"no email consent": 1})
    rows = messages(engine)
    assert rows["k1"]["status"] == "skipped" and rows["k1"]["reason"] == "no email consent"
    assert rows["k1"]["attempts"] == 0 and rows["k1"]["via"] is None
    assert sorted(p.name for p in (tmp_path / "out").glob("*.eml")) == ["k0.eml", "k2.eml"]
    set_consent(engine, "p1", "email", True, "preferences")
    again = deliver(engine, emails, via=OUTBOX, settings=settings)
    assert (again.sent, again.skipped, again.earlier) == (1, {}, {"sent": 2})
    assert messages(engine)["k1"]["status"] == "sent"
    assert (tmp_path / "out" / "k1.eml").is_file()


# -- the outbox connector and the messages table -------------------------------


def test_outbox_writes_each_key_once(fresh_sqlite, tmp_path):
    engine = open_db(fresh_sqlite())
    ids = people(engine, 3)
    folder = tmp_path / "out"
    emails = [rendered_email(pid, f"2026-12-01:viewers:browse:{pid}") for pid in ids]
    emails.append(emails[0])  # the same key twice in one call
    report = deliver(engine, emails, via=OUTBOX, settings=outbox_settings(folder))
    assert (report.sent, report.duplicates) == (3, 1)
    rows = messages(engine)
    for email in emails[:3]:
        row = rows[email.idempotency_key]
        stem = file_stem(email.idempotency_key)
        assert (row["status"], row["via"], row["attempts"]) == ("sent", "outbox", 1)
        assert row["provider_id"] == f"{stem}.eml" and row["sent_at"] is not None
        assert (row["template"], row["version"], row["subject"]) == (
            email.template,
            email.version,
            email.subject,
        )
        assert (folder / f"{stem}.html").read_text() == email.html
        eml = message_from_bytes((folder / f"{stem}.eml").read_bytes(), policy=policy.default)
        assert eml["From"] == "Shop <news@shop.example>"
        assert eml["Message-ID"] == message_id(email.idempotency_key, "shop.example")
        assert eml.get_body(("html",)).get_content().rstrip() == email.html
    # Written by rename: no temporary file is left behind.
    assert sorted(p.suffix for p in folder.iterdir()) == [".eml"] * 3 + [".html"] * 3
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = deliver(engine, emails, via=OUTBOX, settings=outbox_settings(folder))
    assert (again.sent, again.earlier) == (0, {"sent": 3})
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written


def test_file_names_stay_distinct_for_keys_made_safe():
    keys = ["a:b", "a_b", "a/b", "../a", "x" * 255]
    stems = [file_stem(k) for k in keys]
    assert stems[1] == "a_b"  # a safe key is its own name
    assert len(set(stems)) == len(keys)
    assert all("/" not in s and not s.startswith(".") and len(s) < 200 for s in stems)


def test_a_bad_message_fails_for_good_and_a_dry_run_changes_nothing(fresh_sqlite, tmp_path):
    engine = open_db(fresh_sqlite())
    ids = people(engine, 2)
    emails = [
        rendered_email(ids[0], "ok"),
        rendered_email(ids[1], "bad", headers={"X-Tag": "a\nb"}),
    ]
    settings = outbox_settings(tmp_path / "out")
    dry = deliver(engine, emails, via=OUTBOX, settings=settings, dry_run=True)
    assert (
        dry.dry_run
        and dry.sent == 1
        and list(dry.failed)
        == ["bad message: header 'X-Tag' may not contain a linefeed or carriage return"]
    )
    assert messages(engine) == {} and not (tmp_path / "out").exists()
    report = deliver(engine, emails, via=OUTBOX, settings=settings)
    assert report.sent == 1 and sum(report.failed.values()) == 1
    assert messages(engine)["bad"]["status"] == "failed"
    again = deliver(engine, emails, via=OUTBOX, settings=settings)
    assert again.earlier == {"sent": 1, "failed": 1}


def test_temporary_failures_are_retried_with_backoff_then_deferred(fresh_sqlite, tmp_path):
    """The outbox cannot write the .eml (here a folder is in its way; a full disk
    does the same): each try is a TemporaryFailure; the message is deferred and
    goes out on a later run."""
    engine = open_db(fresh_sqlite())
    (pid,) = people(engine, 1)
    folder = tmp_path / "out"
    blocker = folder / "k.eml"
    blocker.mkdir(parents=True)
    waits: list[float] = []
    settings = outbox_settings(folder)
    report = deliver(
        engine, [rendered_email(pid, "k")], via=OUTBOX, settings=settings, sleep=waits.append
    )
    assert report.sent == 0 and list(report.deferred) == [f"outbox {folder}: Is a directory"]
    assert waits == [1.0, 2.0, 4.0]
    row = messages(engine)["k"]
    assert (row["status"], row["attempts"]) == ("deferred", 4)
    assert "after 4 attempts" in row["reason"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    blocker.rmdir()
    later = deliver(engine, [rendered_email(pid, "k")], via=OUTBOX, settings=settings)
    assert later.sent == 1 and messages(engine)["k"]["attempts"] == 5
    assert blocker.is_file()


def test_a_connector_that_cannot_send_or_has_no_sender(fresh_sqlite):
    from core.types import EspConnector

    engine = open_db(fresh_sqlite())
    with pytest.raises(UsageError, match="does not send email"):
        deliver(engine, [], via=EspConnector("crm", "profiles only"), settings=None)
    with pytest.raises(UsageError, match=r"set from = .* in \[esp.smtp\]"):
        deliver(engine, [], via=CONNECTORS["smtp"], settings=delivery_settings())


# -- segment sends ---------------------------------------------------------------


def test_send_to_a_segment(db_url, tmp_path):
    engine = open_db(db_url)
    ids = people(engine, 4)
    set_consent(engine, "p3", "email", False, "preferences")
    ingest(
        engine, [{"type": "product_view", "user_id": f"p{i}", "product_id": "x"} for i in range(3)]
    )
    ingest(engine, [{"type": "product_view", "user_id": "p3", "product_id": "x"}])
    (tmp_path / "segs").mkdir()
    (tmp_path / "segs" / "viewers.yaml").write_text(
        "name: viewers\nrule: {event: product_view, within: 30d}\n"
    )
    from core.plugins import condition_kinds

    kinds = condition_kinds()
    run_segments(
        engine,
        datetime.now(UTC),
        kinds=kinds,
        definitions=load_segment_files(tmp_path / "segs", kinds),
    )
    rendered: list[int] = []

    def render(conn, template, profile_id, key):
        email = conn.execute(
            sa.select(PROFILES.c.email).where(PROFILES.c.id == profile_id)
        ).scalar()
        rendered.append(profile_id)
        return rendered_email(profile_id, key, to=email, template=template)

    settings = outbox_settings(tmp_path / "out")
    progress: list[tuple[int, int]] = []
    options = {"via": OUTBOX, "settings": settings, "render": render}
    dry = send(engine, "browse", "viewers", dry_run=True, campaign="spring", **options)
    assert (dry.members, dry.sent, dry.skipped) == (4, 3, {"email consent withdrawn": 1})
    assert messages(engine) == {}
    rendered.clear()
    report = send(
        engine,
        "browse",
        "viewers",
        campaign="spring",
        on_progress=lambda d, t: progress.append((d, t)),
        **options,
    )
    assert (report.members, report.sent, report.skipped) == (4, 3, {"email consent withdrawn": 1})
    assert rendered == ids[:3], "the refused person is not rendered"
    assert progress[-1] == (4, 4) and len(progress) == 4
    rows = messages(engine)
    assert set(rows) == {campaign_key("spring", "viewers", "browse", pid) for pid in ids}
    assert rows[campaign_key("spring", "viewers", "browse", ids[3])]["status"] == "skipped"
    # The same campaign again: nobody is rendered or sent twice.
    rendered.clear()
    again = send(engine, "browse", "viewers", campaign="spring", **options)
    assert (again.sent, again.earlier, rendered) == (0, {"sent": 3}, [])
    # A new campaign (the default is today's date) is a new send.
    today = send(engine, "browse", "viewers", **options)
    assert today.campaign == datetime.now(UTC).date().isoformat() and today.sent == 3
    assert len(list((tmp_path / "out").glob("*.eml"))) == 6
    with pytest.raises(CommandError, match="no segment named 'nobody'"):
        send(engine, "browse", "nobody", **options)
    with pytest.raises(UsageError, match="campaign 'a:b'"):
        send(engine, "browse", "viewers", campaign="a:b", **options)
