"""A real SMTP server for the delivery tests: aiosmtpd on 127.0.0.1, in a thread.

``Recorder`` is its handler: it keeps every message it accepted and can be
told to answer RCPT or DATA with an error, or to take its time, as real
servers do (greylisting 451s, unknown users 550s, slow relays).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Recorder:
    # Accepted messages, as received.
    messages: list[bytes] = field(default_factory=list)
    # Whether each accepted message came over TLS.
    tls: list[bool] = field(default_factory=list)
    # Answers to DATA before accepting anything (e.g. "451 4.7.1 try later"), used in turn.
    data_answers: list[str] = field(default_factory=list)
    # Address -> the answer to RCPT TO (e.g. "550 5.1.1 no such user").
    refuse: dict[str, str] = field(default_factory=dict)
    # Address -> seconds to wait, after accepting the data, before answering.
    slow: dict[str, float] = field(default_factory=dict)
    rcpts: list[str] = field(default_factory=list)
    data_commands: int = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        self.rcpts.append(address)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.data_commands += 1
        if self.data_answers:
            return self.data_answers.pop(0)
        self.messages.append(envelope.original_content or envelope.content)
        # STARTTLS sets session.ssl; implicit TLS (ssl_context) only shows on the transport.
        implicit = server.transport.get_extra_info("ssl_object") is not None
        self.tls.append(session.ssl is not None or implicit)
        wait = max((self.slow.get(a, 0.0) for a in envelope.rcpt_tos), default=0.0)
        if wait:
            await asyncio.sleep(wait)
        return "250 2.0.0 queued"

    def parsed(self) -> list[EmailMessage]:
        return [message_from_bytes(m, policy=policy.default) for m in self.messages]

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.parsed()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server(**smtp_parameters: Any) -> Iterator[tuple[Recorder, int]]:
    """A running server and its port; ``smtp_parameters`` go to aiosmtpd's SMTP
    (tls_context, authenticator, ...)."""
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **smtp_parameters)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made now: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
