"""TLS in transit: `segflow serve` over HTTPS with its certificate options, and
every outgoing HTTPS client verifying certificates, trusting a private CA only
through SEGFLOW_CA_BUNDLE. Certificates are made here (tests/tlscerts.py); the
servers are real, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from core.cli import main
from core.db import open_db
from core.sync.client import Backoff, SyncClient, SyncFailure
from core.tls import CA_BUNDLE_ENV, TlsSetupError, check_server_files, client_context
from core.types import ActionCall, SyncLimits
from plugins.actions.webhook import WEBHOOK
from plugins.sources.polling import PollConfig, PollError, poll_once
from tests.helpers import child_env, serving
from tests.smtpserver import free_port
from tests.tlscerts import Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture(autouse=True)
def no_ca_bundle(monkeypatch):
    monkeypatch.delenv(CA_BUNDLE_ENV, raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


@contextmanager
def https_fake(pki: Pki, body: bytes = b'{"ok": true}') -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server (uvicorn, the CA's certificate) answering every request
    with 200 and ``body``, keeping the paths it was asked for."""
    seen: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    tls = {"ssl_certfile": str(pki.cert), "ssl_keyfile": str(pki.key)}
    with serving(app, log_level="critical", lifespan="off", **tls) as base:
        yield base, seen


def test_serve_answers_over_https_trusted_through_its_ca_and_refused_without(pki, tmp_path):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    args = ["serve", "--port", str(port), "--ssl-certfile", str(pki.cert)]
    server = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "--db", url, *args, "--ssl-keyfile", str(pki.key)],
        cwd=tmp_path, env=child_env("segment_spec"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"{base}/health", verify=trusting(pki), timeout=2)
                break
            except httpx.ConnectError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "segflow serve did not start"
                time.sleep(0.2)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        # The default trust (certifi) does not know the test CA: refused, nothing read.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/health", timeout=2)
        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_serve_names_the_option_and_path_of_an_unusable_certificate(
    pki, tmp_path, monkeypatch, capsys
):
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    missing = tmp_path / "nope.pem"
    cases = [
        ((missing, pki.key), f"--ssl-certfile {missing}: no such file"),
        ((pki.cert, tmp_path), f"--ssl-keyfile {tmp_path}: a directory"),
        ((pki.key, pki.key), f"--ssl-certfile {pki.key}: no PEM certificate"),
        ((pki.cert, pki.cert), f"--ssl-keyfile {pki.cert}: no PEM private key"),
        ((pki.cert, other.key), "the key is not the certificate's"),
        ((pki.cert, None), "--ssl-certfile needs --ssl-keyfile too"),
        ((None, pki.key), "--ssl-keyfile needs --ssl-certfile too"),
    ]
    for (cert, key), said in cases:
        with pytest.raises(TlsSetupError) as caught:
            check_server_files(cert, key)
        assert said in str(caught.value), (cert, key, str(caught.value))
    check_server_files(pki.cert, pki.key)
    check_server_files(None, None)
    # From the command line: one line, exit 2, no traceback, before any server starts.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    args = ["serve", "--ssl-certfile", str(missing), "--ssl-keyfile", str(pki.key)]
    status = main(["--db", url, *args])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert "Traceback" not in err and "Uvicorn running" not in out + err
    assert f"--ssl-certfile {missing}: no such file" in err


def webhook_call(url: str) -> ActionCall:
    params = WEBHOOK.validate({"url": url, "retries": 1, "backoff": 0, "timeout": 5})
    return ActionCall(
        key="wf:1:0", workflow="wf", run_id=1, step="0", profile_id=7, params=params,
        as_of=datetime.now(UTC), engine=None, settings=None,
    )  # fmt: skip


def test_the_webhook_action_verifies_and_trusts_a_private_ca_only_through_the_variable(
    pki, tmp_path, monkeypatch
):
    with https_fake(pki) as (base, seen):
        refused = WEBHOOK.perform(webhook_call(f"{base}/hook"))
        assert refused.status == "retry"
        assert "certificate not trusted" in refused.reason and CA_BUNDLE_ENV in refused.reason
        assert seen == []
        monkeypatch.setenv(CA_BUNDLE_ENV, str(pki.ca))
        reached = WEBHOOK.perform(webhook_call(f"{base}/hook"))
        assert (reached.status, reached.detail) == ("done", {"status": 200})
        assert seen == ["/hook"]
        # A bundle that cannot be read: pending, naming the variable and the path.
        monkeypatch.setenv(CA_BUNDLE_ENV, str(tmp_path / "gone.pem"))
        broken = WEBHOOK.perform(webhook_call(f"{base}/hook"))
        assert broken.status == "retry"
        assert broken.reason == f"{CA_BUNDLE_ENV} {tmp_path / 'gone.pem'}: no such file"
        assert seen == ["/hook"]


def test_the_sync_client_refuses_an_untrusted_certificate_at_once_and_reaches_it_with_the_ca(
    pki, monkeypatch
):
    async def get(base: str) -> int:
        limits = SyncLimits(requests_per_second=100, burst=100)
        async with SyncClient(base, limits, backoff=Backoff(attempts=6, base=1.0)) as client:
            answer = await client.request("GET", "/v2/ping")
            return answer.status_code

    with https_fake(pki) as (base, seen):
        started = time.monotonic()
        with pytest.raises(SyncFailure, match="certificate not trusted"):
            asyncio.run(get(base))
        # No backoff: retrying cannot make the certificate trusted.
        assert time.monotonic() - started < 1.0
        monkeypatch.setenv(CA_BUNDLE_ENV, str(pki.ca))
        assert asyncio.run(get(base)) == 200
        assert seen == ["/v2/ping"]


def test_a_polled_source_refuses_an_untrusted_certificate_at_once_and_reaches_it_with_the_ca(
    pki, sqlite_url, monkeypatch
):
    engine = open_db(sqlite_url)
    page = b'{"events": [{"type": "page_view", "user_id": "u1", "message_id": "p-1"}]}'
    with https_fake(pki, page) as (base, seen):
        config = PollConfig(name="internal", url=f"{base}/feed", max_attempts=5)
        waits: list[float] = []
        with pytest.raises(PollError, match="certificate not trusted"):
            poll_once(engine, config, sleep=waits.append)
        assert waits == [] and seen == []
        monkeypatch.setenv(CA_BUNDLE_ENV, str(pki.ca))
        result = poll_once(engine, config, sleep=waits.append)
        assert result.report.accepted == 1 and seen[0] == "/feed"


def test_the_ca_bundle_adds_to_the_public_cas_instead_of_replacing_them(pki, monkeypatch):
    public = len(client_context().get_ca_certs())
    monkeypatch.setenv(CA_BUNDLE_ENV, str(pki.ca))
    context = client_context()
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "segflow test CA"} in subjects
    assert len(subjects) == public + 1 and public > 50
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_no_code_turns_certificate_verification_off():
    off = re.compile(r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("core", "plugins", "flows")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if off.search(line)
    ]
    assert found == []
