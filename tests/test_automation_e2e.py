"""End to end: an ``add_to_cart`` posted to the real ``segflow serve`` enrols the
person in real time; after the hour (time moved by the test through
``--as-of``) ``segflow workflows run-tick`` delivers the cart email to a real
SMTP server, once. Then the ``segflow workflows`` commands on that database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa

from core.consents import set_consent
from core.db import open_db
from core.db.tables import WORKFLOW_STATES
from core.ingestion import ingest
from core.keys import create_key
from core.personalize.mime import message_id
from tests.helpers import child_env
from tests.smtpserver import free_port, smtp_server

FROM = "Shop <news@shop.example>"
WORKFLOW = """
name: cart_rescue
trigger: {event: {type: add_to_cart, key: properties.cart_id}}
reentry: always
exit_when: {event: purchase, within: 2h}
steps:
  - wait: 1h
  - send: {template: cart_abandonment, via: smtp}
"""


def segflow(url: str, cwd, *args: str) -> subprocess.CompletedProcess:
    env = child_env("")
    env.pop("SEGFLOW_LOAD_PLUGINS")
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "--db", url, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def runs(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(WORKFLOW_STATES)).mappings()]


def test_an_event_posted_to_the_api_leads_to_one_cart_email(tmp_path):
    url = f"sqlite:///{tmp_path}/segflow.db"
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "cart.yaml").write_text(WORKFLOW)
    with smtp_server() as (server, smtp_port):
        (tmp_path / "segflow.toml").write_text(
            f'secret_key = "{"s" * 32}"\n'
            f'[esp.smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nfrom = "{FROM}"\n'
            'starttls = "never"\n'
        )
        engine = open_db(url)
        ingest(engine, [{"type": "identify", "user_id": "ann",
                         "traits": {"email": "ann@example.com", "first_name": "Ann"}}])  # fmt: skip
        set_consent(engine, "ann", "email", True, "signup")
        _, key = create_key(engine, "site", ["events:write"])
        saved = segflow(url, tmp_path, "workflows", "run-tick", "--dir", "workflows")
        assert saved.returncode == 0, saved.stderr

        port = free_port()
        env = child_env("")
        env.pop("SEGFLOW_LOAD_PLUGINS")
        api = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "--db", url, "serve", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}/health", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "segflow serve did not start"
                    time.sleep(0.2)
            sent_at = datetime.now(UTC).replace(microsecond=0)
            answer = httpx.post(
                f"{base}/v1/track",
                auth=(key, ""),
                json={"userId": "ann", "event": "add_to_cart", "messageId": "m-1",
                      "timestamp": sent_at.isoformat(),
                      "properties": {"cart_id": "c-9", "product_id": "TENT-1", "price": 199.0,
                                     "currency": "USD"}},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 20
            while not runs(engine):
                assert time.monotonic() < deadline, "the event started no run"
                time.sleep(0.05)
        finally:
            api.terminate()
            api.wait(timeout=30)
        (run,) = runs(engine)
        assert (run["workflow"], run["entry_key"], run["status"]) == (
            "cart_rescue",
            "c-9",
            "active",
        )
        assert run["wake_at"] == sent_at + timedelta(hours=1)

        early = segflow(url, tmp_path, "workflows", "run-tick", "--as-of",
                        (sent_at + timedelta(minutes=59)).isoformat())  # fmt: skip
        assert early.returncode == 0, early.stderr
        assert server.messages == []
        for minutes in (61, 90):
            later = segflow(url, tmp_path, "workflows", "run-tick", "--as-of",
                            (sent_at + timedelta(minutes=minutes)).isoformat())  # fmt: skip
            assert later.returncode == 0, later.stderr
        (email,) = server.parsed()
        assert email["To"].addresses[0].addr_spec == "ann@example.com"
        # The Message-ID is the workflow action's idempotency key's.
        assert email["Message-ID"] == message_id(
            f"wf:cart_rescue:{run['id']}:steps[1]", "shop.example"
        )

        status = segflow(url, tmp_path, "workflows", "status", "cart_rescue", "--json")
        assert json.loads(status.stdout)["runs"] == {"completed": 1}
        history = segflow(url, tmp_path, "workflows", "history", "ann", "--json")
        (told,) = json.loads(history.stdout)
        steps = [(h["what"], h["step"]) for h in told["history"]]
        assert steps[:3] == [("entered", None), ("waiting", "steps[0]"), ("woke", "steps[0]")]
        assert ("performed", "steps[1]") in steps
        listed = segflow(url, tmp_path, "workflows", "list", "--json")
        assert [w["name"] for w in json.loads(listed.stdout)] == ["cart_rescue"]
        simulated = segflow(url, tmp_path, "workflows", "simulate", "cart_rescue", "--json",
                            "--from", (sent_at - timedelta(hours=1)).isoformat(),
                            "--to", (sent_at + timedelta(hours=3)).isoformat())  # fmt: skip
        result = json.loads(simulated.stdout)
        assert result["entered"] == 1
        assert [a["action"] for a in result["runs"][0]["actions"]] == ["send"]
        assert len(server.messages) == 1  # the simulation sent nothing
