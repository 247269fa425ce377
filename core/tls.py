"""TLS for segflow's own connections.

Outgoing HTTPS (ESP and CRM connectors, the webhook action, polled sources)
verifies the server's certificate and host name through ``client_context``:
the trust httpx uses by default (certifi's CAs, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` when set), plus the CA file ``SEGFLOW_CA_BUNDLE`` names. The
variable adds to the public CAs instead of replacing them (as ``SSL_CERT_FILE``
does), so one process reaches an internal service behind a private CA and
Klaviyo or Mailchimp alike. There is no switch that turns verification off.

``check_server_files`` checks ``segflow serve``'s certificate and key before
uvicorn reads them, so a wrong path or file is one line naming the option.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from core.types import UsageError

CA_BUNDLE_ENV = "SEGFLOW_CA_BUNDLE"


class TlsSetupError(UsageError):
    """A certificate, key or CA file given to segflow cannot be used; the
    message names the option or variable and the path."""


def _readable(path: Path, where: str) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise TlsSetupError(f"{where} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsSetupError(f"{where} {path}: a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsSetupError(f"{where} {path}: cannot be read ({exc.strerror or exc})") from None


def load_ca(context: ssl.SSLContext, path: Path, where: str) -> None:
    """Trust the CA certificates in the PEM file ``path`` as well; TlsSetupError
    naming ``where`` (an option or variable) when it holds none."""
    text = _readable(path, where)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise TlsSetupError(f"{where} {path}: no PEM certificate in it (BEGIN CERTIFICATE)")
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        why = f"not a usable CA certificate ({exc.reason})"
        raise TlsSetupError(f"{where} {path}: {why}") from None


def ca_context(ca_file: Path | None, where: str) -> ssl.SSLContext:
    """A verifying client context: trusting only ``ca_file`` (a server with a
    self-signed or private certificate) when given, else the system's CAs."""
    if ca_file is None:
        return ssl.create_default_context()
    _readable(ca_file, where)
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        why = f"not a usable CA certificate ({exc.reason})"
        raise TlsSetupError(f"{where} {ca_file}: {why}") from None


def client_context() -> ssl.SSLContext:
    """The context every outgoing HTTPS client of segflow verifies with."""
    import httpx

    context = httpx.create_ssl_context()
    extra = os.environ.get(CA_BUNDLE_ENV)
    if extra:
        load_ca(context, Path(extra), CA_BUNDLE_ENV)
    return context


def untrusted(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, when that is what ``exc``
    (an httpx or ssl error) comes down to; else None. Retrying cannot help."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            why = seen.verify_message or seen.reason or str(seen)
            return f"certificate not trusted ({why}; a private CA goes in {CA_BUNDLE_ENV})"
        seen = seen.__cause__ or seen.__context__
    return None


def check_server_files(certfile: Path | None, keyfile: Path | None) -> None:
    """TlsSetupError naming ``--ssl-certfile`` / ``--ssl-keyfile`` and the path
    when the pair cannot serve TLS: one without the other, a missing or
    unreadable file, no certificate or key in it, an encrypted key, or a key
    that is not the certificate's."""
    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        given, missing = (
            ("--ssl-keyfile", "--ssl-certfile") if certfile is None else
            ("--ssl-certfile", "--ssl-keyfile")
        )  # fmt: skip
        raise TlsSetupError(f"{given} needs {missing} too")
    cert_text = _readable(certfile, "--ssl-certfile")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsSetupError(f"--ssl-certfile {certfile}: no PEM certificate in it")
    key_text = _readable(keyfile, "--ssl-keyfile")
    if "PRIVATE KEY-----" not in key_text:
        raise TlsSetupError(f"--ssl-keyfile {keyfile}: no PEM private key in it")
    if "ENCRYPTED" in key_text:
        raise TlsSetupError(
            f"--ssl-keyfile {keyfile}: the key is encrypted; give it unencrypted "
            "(readable only by the server's user)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            why = "the key is not the certificate's"
        else:
            why = f"cannot be loaded ({reason})"
        raise TlsSetupError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: {why}") from None
