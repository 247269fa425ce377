"""Secrets are never logged: what `segflow serve` (with its access log on) and
`segflow sync run` (refused, meeting faults, succeeding) write holds no API key,
no ESP key, no CMP signing secret or signature, and no signed tracking token
(which names a person)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from core.db import open_db
from core.keys import create_key
from core.privacy.cmp import SIGNATURE_HEADER, signature
from core.tracking import click_url
from plugins.esp.fakes import make_fake
from plugins.esp.fakes.mailchimp import API_KEY
from plugins.esp.fakes.server import Faults, running
from tests.smtpserver import free_port
from tests.test_sync_cli import cli, project

SECRET = "a-tracking-secret-for-logs"
CMP_SECRET = "a-cmp-signing-secret-for-logs"


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("segflow serve did not listen")


def test_the_server_log_holds_no_key_and_no_token(tmp_path):
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    _, key = create_key(open_db(url), "site", ["events:write"])
    wrong = "sf_00000000_" + "x" * 43
    (tmp_path / "segflow.toml").write_text(
        f'secret_key = "{SECRET}"\n[privacy.consent.cmp]\nsecret_env = "LOG_TEST_CMP_SECRET"\n'
        'purposes = {newsletter = "email_marketing"}\n'
    )
    port = free_port()
    env = os.environ | {
        "SEGFLOW_CONFIG": str(tmp_path / "segflow.toml"),
        "LOG_TEST_CMP_SECRET": CMP_SECRET,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "--db", url, "serve", "--port", str(port),
         "--access-log"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    token_url = click_url(
        f"http://127.0.0.1:{port}", SECRET, "https://shop.example/tent",
        message_id="m-1", link=1, user_id="u-7", email="someone@example.com",
    )  # fmt: skip
    token = token_url.rsplit("/", 1)[1]
    try:
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        event = {"type": "track", "event": "Signed Up", "userId": "u-7"}
        assert httpx.post(base + "/v1/track", json=event, headers={"Authorization": basic})
        assert httpx.post(base + "/v1/track", json=event | {"writeKey": wrong}).status_code == 401
        for secret in (key, wrong):
            httpx.post(
                base + "/mp/collect",
                params={"measurement_id": "G-LOG", "api_secret": secret},
                json={"client_id": "c1", "events": [{"name": "page_view"}]},
            )
        assert httpx.get(token_url, follow_redirects=False).status_code == 302
        choice = {"user": {"id": "u-7", "email": "someone@example.com"},
                  "decided_at": "2026-03-01T10:00:00Z",
                  "purposes": [{"id": "newsletter", "enabled": True}]}  # fmt: skip
        body = orjson.dumps(choice)
        signed = signature(body, CMP_SECRET, int(time.time()))
        for header, status in ((signed, 200), (signature(body, "not-it", int(time.time())), 401)):
            answer = httpx.post(
                base + "/v1/consents/cmp", content=body, headers={SIGNATURE_HEADER: header}
            )
            assert answer.status_code == status, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    written = out + err
    # The access log is on and names the requests: the test could see a leak.
    assert "/mp/collect?measurement_id=G-LOG&api_secret=[redacted]" in written, written
    assert "/t/c/[token]" in written and '"POST /v1/track HTTP/1.1" 401' in written
    assert '"POST /v1/consents/cmp HTTP/1.1" 200' in written
    for secret in (key, wrong, token, "someone@example.com", SECRET, CMP_SECRET, signed):
        assert secret not in written


def test_a_sync_writes_no_esp_key_whatever_happens(tmp_path, monkeypatch, sqlite_url):
    api = make_fake("mailchimp")
    wrong = "ffffffffffffffffffffffffffffffff-us21"
    with running(api) as base_url:
        project(tmp_path, sqlite_url, base_url)
        monkeypatch.setenv("SEGFLOW_CONFIG", str(tmp_path / "segflow.toml"))
        monkeypatch.setenv("SEGFLOW_TEST_DB", sqlite_url)
        written = []
        monkeypatch.setenv("MC_TEST_KEY", wrong)
        status, out, err = cli("sync", "run", "--json")
        # Refused: the key was sent, and the one line names its variable, not it.
        assert status == 2 and "refused the key in MC_TEST_KEY" in err, out + err
        written.append(out + err)
        monkeypatch.setenv("MC_TEST_KEY", API_KEY)
        # Dropped connections: the retried requests' errors are reported too.
        api.faults = Faults(rate=0.3, seed=1, kinds=("drop",))
        status, out, err = cli("sync", "run")
        assert status == 0, err
        written.append(out + err)
        status, out, err = cli("sync", "verify", "--connector", "mc")
        written.append(out + err)
    assert api.members(), "the good run synced nobody: the test saw no traffic"
    for text in written:
        assert API_KEY not in text and wrong not in text
        assert API_KEY.split("-")[0] not in text and wrong.split("-")[0] not in text
    assert Path(tmp_path / "segflow.toml").read_text().count(API_KEY) == 0
