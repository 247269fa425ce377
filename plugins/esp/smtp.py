"""``smtp``: delivery to an SMTP server (a relay, a local MTA, a test server).

One connection per run, opened before the first message and reopened when the
server drops it. The connection is encrypted one of two ways: implicit TLS
from the first byte (``implicit_tls = true``, port 465 "submissions"), or
STARTTLS. ``starttls = "auto"`` (the default) upgrades whenever the server
offers it and refuses a server elsewhere that does not (plain text only to a
server on this machine); ``"always"`` refuses any server without it;
``"never"`` sends in plain text, the one explicit opt-out, logged as a warning
at each connection to a server elsewhere. Either way the certificate and its
host name are verified, against the system's CAs or ``ca_file``; there is no
setting that skips that.
A password is sent only over TLS or to a server on this machine, and is read
from the environment variable ``password_env`` names, so it is never in the
settings file, a log or a message.

Answers: 4xx is a ``TemporaryFailure`` (delivery retries it with backoff), 5xx
a ``PermanentFailure``. A failure before the message's data went out, a lost
connection included, is temporary: the server did not take it. A connection
lost while the server was taking the data is neither: the message may have
been accepted, so it is not retried (it becomes ``unknown``). The provider id
is the Message-ID.

Settings: ``[esp.smtp]`` (``SmtpSettings``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import smtplib
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core import (
    DeliveryFailure,
    DeliveryInDoubt,
    EspConnector,
    PermanentFailure,
    RenderedEmail,
    TemporaryFailure,
    TlsSetupError,
    UsageError,
    ca_context,
    hookimpl,
)

log = logging.getLogger(__name__)

SECTION = "esp.smtp"


class SmtpSettings(BaseModel):
    """``[esp.smtp]``: the server, how to secure and authenticate, the From address."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    from_: str | None = Field(default=None, alias="from")
    starttls: Literal["auto", "always", "never"] = "auto"
    # TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS.
    implicit_tls: bool = False
    # Trust this CA (or self-signed certificate) instead of the system's.
    ca_file: Path | None = None
    user: str | None = None
    # The name of the environment variable holding the password, never the password.
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_seconds: float = Field(default=30.0, gt=0)
    # The name this machine gives in EHLO; default its fully qualified name.
    local_hostname: str | None = None

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> SmtpSettings:
        if (self.user is None) != (self.password_env is None):
            raise ValueError("user and password_env go together")
        if self.implicit_tls and self.starttls == "never":
            raise ValueError(
                'implicit_tls = true encrypts from the start; starttls = "never" contradicts it'
            )
        return self


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_text_refusal(cfg: SmtpSettings) -> str | None:
    """Why a connection the server did not offer STARTTLS on may not carry
    mail in plain text, or None when it may (``never``, or ``auto`` to a
    server on this machine)."""
    if cfg.implicit_tls or cfg.starttls == "never":
        return None
    if cfg.starttls == "always":
        return "does not offer STARTTLS (starttls = always)"
    if not _is_local(cfg.host):
        return (
            "does not offer STARTTLS: mail to a server elsewhere goes encrypted "
            '(starttls = "never" sends it in plain text)'
        )
    return None


def _answer(code: int, text: bytes | str, step: str) -> DeliveryFailure:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    said = f"{step}: {code} {' '.join(text.split())}"
    return PermanentFailure(said) if 500 <= code < 600 else TemporaryFailure(said)


class SmtpSession:
    """The run's connection, opened again after the server drops it."""

    def __init__(self, config: SmtpSettings) -> None:
        self.config = config
        self._smtp: smtplib.SMTP | None = None
        self.where = f"smtp {config.host}:{config.port}"

    def connect(self) -> smtplib.SMTP:
        cfg = self.config
        context = self._context() if cfg.implicit_tls or cfg.starttls != "never" else None
        try:
            # Host given here, not to connect(): TLS checks the certificate against it.
            if cfg.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host,
                    cfg.port,
                    timeout=cfg.timeout_seconds,
                    local_hostname=cfg.local_hostname,
                    context=context,
                )
            else:
                smtp = smtplib.SMTP(
                    cfg.host,
                    cfg.port,
                    timeout=cfg.timeout_seconds,
                    local_hostname=cfg.local_hostname,
                )
        except ssl.SSLError as exc:
            raise PermanentFailure(f"{self.where} TLS: {exc.reason or exc}") from None
        except smtplib.SMTPResponseException as exc:
            raise _answer(exc.smtp_code, exc.smtp_error, f"{self.where} greeting") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{self.where}: {exc}") from None
        try:
            smtp.ehlo()
            secure = cfg.implicit_tls
            if not secure and cfg.starttls != "never" and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
                secure = True
            elif not secure:
                if refusal := plain_text_refusal(cfg):
                    raise PermanentFailure(f"{self.where} {refusal}")
                if not _is_local(cfg.host):
                    log.warning("%s: starttls = never, mail goes in plain text", self.where)
            if cfg.user is not None:
                self._login(smtp, secure)
        except DeliveryFailure:
            smtp.close()
            raise
        except ssl.SSLError as exc:
            smtp.close()
            raise PermanentFailure(f"{self.where} TLS: {exc.reason or exc}") from None
        except smtplib.SMTPResponseException as exc:
            smtp.close()
            raise _answer(exc.smtp_code, exc.smtp_error, self.where) from None
        except (OSError, smtplib.SMTPException) as exc:
            smtp.close()
            raise TemporaryFailure(f"{self.where}: {exc}") from None
        return smtp

    def _context(self) -> ssl.SSLContext:
        try:
            return ca_context(self.config.ca_file, f"[{SECTION}] ca_file")
        except TlsSetupError as exc:
            raise PermanentFailure(str(exc)) from None

    def _login(self, smtp: smtplib.SMTP, secure: bool) -> None:
        cfg = self.config
        assert cfg.user is not None and cfg.password_env is not None
        if not secure and not _is_local(cfg.host):
            raise PermanentFailure(f"{self.where}: no TLS, so the password is not sent")
        password = os.environ.get(cfg.password_env)
        if password is None:
            missing = f"the environment variable {cfg.password_env} (password_env) is not set"
            raise PermanentFailure(f"{self.where}: {missing}")
        try:
            smtp.login(cfg.user, password)
        except smtplib.SMTPAuthenticationError as exc:
            where = f"{self.where} login as {cfg.user}"
            raise _answer(exc.smtp_code, exc.smtp_error, where) from None

    def client(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = self.connect()
        return self._smtp

    def drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.close()

    def reset(self) -> None:
        """After a refused transaction: RSET, or a new connection next time."""
        try:
            self.client().rset()
        except (OSError, smtplib.SMTPException, DeliveryFailure):
            self.drop()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


@contextlib.contextmanager
def open_session(settings) -> Iterator[SmtpSession]:
    session = SmtpSession(settings.plugin(SECTION))
    session.client()  # a wrong host, port, TLS or password stops the run before any message
    try:
        yield session
    finally:
        session.close()


def send(email: RenderedEmail, message: EmailMessage, session: SmtpSession) -> str:
    sender = parseaddr(str(message["From"]))[1]
    recipient = parseaddr(str(message["To"]))[1]
    try:
        smtp = session.client()
    except PermanentFailure as exc:
        # The connection, not this message, is at fault; a later run may get through.
        raise TemporaryFailure(str(exc)) from None
    try:
        code, text = smtp.mail(sender)
        if code != 250:
            session.reset()
            raise _answer(code, text, "MAIL FROM")
        code, text = smtp.rcpt(recipient)
        if code not in (250, 251):
            session.reset()
            raise _answer(code, text, "RCPT TO")
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        session.drop()
        raise TemporaryFailure(f"{session.where}: connection lost before the data: {exc}") from None
    except (smtplib.SMTPException, UnicodeError) as exc:
        session.reset()
        raise PermanentFailure(f"{session.where}: {exc}") from None
    try:
        code, text = smtp.data(message.as_bytes())
    except smtplib.SMTPDataError as exc:
        # DATA itself refused: no content was sent.
        session.reset()
        raise _answer(exc.smtp_code, exc.smtp_error, "DATA") from None
    except (OSError, smtplib.SMTPException) as exc:
        # Lost while the server was taking the message: it may have it.
        session.drop()
        raise DeliveryInDoubt(
            f"{session.where}: connection lost while the server took the message ({exc}); "
            "it may have been delivered"
        ) from None
    if code != 250:
        session.reset()
        raise _answer(code, text, "DATA")
    return str(message["Message-ID"])


def sender(settings) -> str:
    found = settings.plugin(SECTION).from_
    if not found:
        raise UsageError(f'set from = "Name <address>" in [{SECTION}] to send through smtp')
    return found


@hookimpl
def register_settings(register) -> None:
    register(SECTION, SmtpSettings)


@hookimpl
def register_esp_connectors(register) -> None:
    register(
        EspConnector(
            "smtp",
            f"Send through an SMTP server over verified TLS ([{SECTION}])",
            send=send,
            sender=sender,
            open=open_session,
        )
    )
