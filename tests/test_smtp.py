"""The smtp connector against a real SMTP server (aiosmtpd on 127.0.0.1):
what arrives, 4xx retried, 5xx failed for good, STARTTLS with a certificate
made in the test, authentication, and a message in doubt never re-sent blindly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import AuthResult, LoginPassword

from core.db import open_db
from core.db.tables import MESSAGES
from core.personalize.delivery import deliver
from core.personalize.mime import message_id
from core.plugins import esp_connectors
from core.types import DeliveryInDoubt, PermanentFailure, TemporaryFailure
from plugins.esp.smtp import SmtpSettings, plain_text_refusal
from tests.helpers import delivery_settings, people, rendered_email
from tests.smtpserver import self_signed, server_tls, smtp_server
from tests.tlscerts import make_pki

SMTP = esp_connectors()["smtp"]
FROM = "Outdoor Shop <news@shop.example>"


def smtp_settings(port: int, **more):
    return delivery_settings(
        esp_smtp={"host": "127.0.0.1", "port": port, "from": FROM, "starttls": "never"} | more
    )


def rows(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(MESSAGES)).mappings().all()
    return {r["idempotency_key"]: dict(r) for r in found}


@pytest.fixture
def engine(fresh_sqlite):
    return open_db(fresh_sqlite())


def test_the_received_message_is_multipart_with_the_headers(engine):
    ids = people(engine, 2)
    emails = [rendered_email(pid, f"spring:viewers:browse:{pid}") for pid in ids]
    with smtp_server() as (server, port):
        report = deliver(engine, emails, via=SMTP, settings=smtp_settings(port))
    assert report.sent == 2 and server.rcpts == [f"person{pid}@example.com" for pid in ids]
    stored = rows(engine)
    for email, received in zip(emails, server.parsed(), strict=True):
        assert received.get_content_type() == "multipart/alternative"
        text, html = received.iter_parts()
        assert text.get_content_type() == "text/plain" and "Trail shoes" in text.get_content()
        assert html.get_content_type() == "text/html"
        assert html.get_content().rstrip() == email.html
        assert received["From"] == FROM and received["To"] == email.to
        assert received["Subject"] == email.subject  # non-ASCII survives the encoding
        assert received["List-Unsubscribe"] == email.headers["List-Unsubscribe"]
        assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        expected_id = message_id(email.idempotency_key, "shop.example")
        assert received["Message-ID"] == expected_id
        row = stored[email.idempotency_key]
        assert (row["status"], row["provider_id"], row["via"]) == ("sent", expected_id, "smtp")
    assert server.tls == [False, False]


def test_4xx_is_retried_with_backoff_and_5xx_fails_without_retry(engine):
    ids = people(engine, 3)
    emails = [rendered_email(pid, f"k{n}") for n, pid in enumerate(ids)]
    waits: list[float] = []
    with smtp_server() as (server, port):
        server.data_answers = ["451 4.7.1 greylisted, try later"] * 2
        server.refuse[f"person{ids[1]}@example.com"] = "550 5.1.1 no such user"
        report = deliver(engine, emails, via=SMTP, settings=smtp_settings(port), sleep=waits.append)
    assert report.sent == 2
    assert report.failed == {"RCPT TO: 550 5.1.1 no such user": 1}
    assert waits == [1.0, 2.0]  # two 451s for the first message, no wait for the 550
    stored = rows(engine)
    assert (stored["k0"]["status"], stored["k0"]["attempts"]) == ("sent", 3)
    assert (stored["k1"]["status"], stored["k1"]["attempts"]) == ("failed", 1)
    assert stored["k1"]["reason"] == "RCPT TO: 550 5.1.1 no such user"
    assert (stored["k2"]["status"], stored["k2"]["attempts"]) == ("sent", 1)
    # The refused recipient was asked once; the others arrived once each.
    assert server.rcpts.count(f"person{ids[1]}@example.com") == 1
    assert len(server.messages) == 2
    with smtp_server() as (server, port):
        again = deliver(engine, emails, via=SMTP, settings=smtp_settings(port))
    assert again.earlier == {"sent": 2, "failed": 1} and server.rcpts == []


def test_4xx_until_retries_run_out_defers_to_the_next_run(engine):
    (pid,) = people(engine, 1)
    email = rendered_email(pid, "k")
    with smtp_server() as (server, port):
        server.data_answers = ["452 4.3.1 mailbox full"] * 4
        report = deliver(
            engine, [email], via=SMTP, settings=smtp_settings(port), sleep=lambda s: None
        )
        assert report.deferred == {"DATA: 452 4.3.1 mailbox full": 1}
        assert rows(engine)["k"]["status"] == "deferred" and server.messages == []
        later = deliver(engine, [email], via=SMTP, settings=smtp_settings(port))
    assert later.sent == 1 and len(server.messages) == 1
    assert rows(engine)["k"]["attempts"] == 5


def test_starttls_with_a_self_signed_certificate_and_login(engine, tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-pw", handled=False)

    (pid,) = people(engine, 1)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-pw")
    tls = {"tls_context": server_tls(cert, key), "require_starttls": True}
    with smtp_server(**tls, authenticator=authenticator) as (server, port):
        settings = smtp_settings(
            port,
            starttls="auto",
            ca_file=str(cert),
            user="shop",
            password_env="TEST_SMTP_PASSWORD",
            timeout_seconds=5,
        )
        report = deliver(engine, [rendered_email(pid, "k")], via=SMTP, settings=settings)
        assert report.sent == 1 and server.tls == [True]
        assert logins == [(b"shop", b"s3cret-pw")]
        # A wrong password stops the run with the server's answer, not the password.
        monkeypatch.setenv("TEST_SMTP_PASSWORD", "wrong")
        with pytest.raises(PermanentFailure, match="login as shop: 535") as refused:
            deliver(engine, [rendered_email(pid, "k3")], via=SMTP, settings=settings)
        assert "wrong" not in str(refused.value)
        # Without the certificate the server is not trusted: nothing is sent, the run stops.
        untrusted = smtp_settings(port, starttls="always", timeout_seconds=5)
        with pytest.raises(PermanentFailure, match="TLS: CERTIFICATE_VERIFY_FAILED"):
            deliver(engine, [rendered_email(pid, "k2")], via=SMTP, settings=untrusted)
    assert set(rows(engine)) == {"k"}
    assert "s3cret" not in repr(settings.plugin("esp.smtp"))


def test_implicit_tls_is_verified_against_the_ca_file_and_refused_without_it(engine, tmp_path):
    pki = make_pki(tmp_path)
    (pid,) = people(engine, 1)
    with smtp_server(ssl_context=pki.server_context()) as (server, port):
        trusted = smtp_settings(
            port, implicit_tls=True, starttls="auto", ca_file=str(pki.ca), timeout_seconds=5
        )
        report = deliver(engine, [rendered_email(pid, "k")], via=SMTP, settings=trusted)
        assert report.sent == 1 and server.tls == [True]
        # The system's CAs do not know the test CA: the run stops before any message.
        untrusted = smtp_settings(port, implicit_tls=True, starttls="auto", timeout_seconds=5)
        with pytest.raises(PermanentFailure, match="TLS: CERTIFICATE_VERIFY_FAILED"):
            deliver(engine, [rendered_email(pid, "k2")], via=SMTP, settings=untrusted)
        # A CA file that is not there: the run stops naming the setting and the path.
        gone = tmp_path / "gone.pem"
        missing = smtp_settings(port, implicit_tls=True, starttls="auto", ca_file=str(gone))
        with pytest.raises(PermanentFailure, match=f"ca_file {gone}: no such file"):
            deliver(engine, [rendered_email(pid, "k3")], via=SMTP, settings=missing)
    assert set(rows(engine)) == {"k"} and len(server.messages) == 1


def test_plain_text_goes_only_to_this_machine_unless_starttls_is_never():
    def refusal(host: str, starttls: str) -> str | None:
        return plain_text_refusal(SmtpSettings(host=host, starttls=starttls))

    assert "goes encrypted" in refusal("mail.example.com", "auto")
    assert "goes encrypted" in refusal("192.0.2.25", "auto")
    assert refusal("127.0.0.1", "auto") is None and refusal("localhost", "auto") is None
    assert "starttls = always" in refusal("127.0.0.1", "always")
    assert refusal("mail.example.com", "never") is None
    with pytest.raises(ValueError, match="contradicts"):
        SmtpSettings(implicit_tls=True, starttls="never")


def test_starttls_always_refuses_a_server_without_it(engine):
    (pid,) = people(engine, 1)
    with smtp_server() as (server, port):
        settings = smtp_settings(port, starttls="always")
        with pytest.raises(PermanentFailure, match="does not offer STARTTLS"):
            deliver(engine, [rendered_email(pid, "k")], via=SMTP, settings=settings)
    assert server.rcpts == [] and rows(engine) == {}


def test_no_server_stops_the_run_before_any_message(engine):
    from tests.smtpserver import free_port

    (pid,) = people(engine, 1)
    with pytest.raises(TemporaryFailure, match="Connection refused"):
        deliver(engine, [rendered_email(pid, "k")], via=SMTP, settings=smtp_settings(free_port()))
    assert rows(engine) == {}


def test_a_message_lost_in_the_data_answer_is_unknown_and_not_sent_again(engine):
    """The server took the data but its answer never came (the client timed out):
    it may have the message, so the message is `unknown`; the next run does not
    send it unless asked, and then with the same Message-ID."""
    ids = people(engine, 2)
    emails = [rendered_email(pid, f"k{n}") for n, pid in enumerate(ids)]
    with smtp_server() as (server, port):
        server.slow[f"person{ids[0]}@example.com"] = 2.0
        settings = smtp_settings(port, timeout_seconds=0.5)
        with pytest.raises(DeliveryInDoubt, match="may have been delivered"):
            deliver(engine, emails, via=SMTP, settings=settings)
        assert rows(engine)["k0"]["status"] == "unknown"
        assert "connection lost while the server took the message" in rows(engine)["k0"]["reason"]
        assert rows(engine)["k1"]["status"] == "rendered"
        server.slow.clear()
        report = deliver(engine, emails, via=SMTP, settings=settings)
        assert (report.sent, report.unknown) == (1, ["k0"])
        assert server.message_ids().count(message_id("k0", "shop.example")) == 1
        retried = deliver(engine, emails, via=SMTP, settings=settings, retry_unknown=True)
        assert (retried.sent, retried.earlier) == (1, {"sent": 1})
        # A resend is the same message to the receiver: one Message-ID.
        assert server.message_ids().count(message_id("k0", "shop.example")) == 2
    assert rows(engine)["k0"]["status"] == "sent"
