"""A delivery killed with SIGKILL at each step, then run again: nothing is
delivered twice (files in the outbox, messages the real SMTP server got), and
the messages end as after an uninterrupted run, except what SMTP cannot know.

The kill points (core/ingestion/crashpoints.py): ``deliver.recorded`` (rows
written, nothing claimed), ``deliver.claimed`` (a message is ``sending``, not
handed over), ``deliver.sent`` (handed over, answer not recorded) and
``deliver.updated`` (its ``sent`` committed). The outbox can tell afterwards
whether a message went out (its .eml exists); SMTP cannot, so a message killed
in ``sending`` becomes ``unknown`` and is not sent again unless asked.
Attempts are left out of the comparison: a message claimed twice counts two.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import MESSAGES
from core.personalize.delivery import deliver
from core.personalize.mime import message_id
from core.plugins import esp_connectors
from tests.helpers import child_env, delivery_settings, people, rendered_email
from tests.smtpserver import smtp_server

FROM = "Shop <news@shop.example>"
CHILD = """
import json, sys
from core.config import Settings
from core.db import make_engine
from core.personalize.delivery import deliver
from core.plugins import esp_connectors
from core.types import RenderedEmail

url, via, sections, emails = sys.argv[1:]
emails = [RenderedEmail(**e) for e in json.loads(emails)]
settings = Settings(plugin_settings=json.loads(sections))
deliver(make_engine(url), emails, via=esp_connectors()[via], settings=settings)
"""
CASES = [
    ("outbox", "deliver.recorded:1"),
    ("outbox", "deliver.claimed:2"),
    ("outbox", "deliver.sent:2"),
    ("outbox", "deliver.updated:2"),
    ("smtp", "deliver.claimed:2"),
    ("smtp", "deliver.sent:2"),
]


def killed_deliver(url: str, via: str, sections: dict, emails: list, crash_at: str) -> None:
    env = child_env("plugins.esp.outbox,plugins.esp.smtp", crash_at)
    payload = json.dumps([dataclasses.asdict(e) for e in emails])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, via, json.dumps(sections), payload],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def snapshot(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                MESSAGES.c.idempotency_key,
                MESSAGES.c.status,
                MESSAGES.c.provider_id,
                MESSAGES.c.via,
                MESSAGES.c.subject,
            )
        ).all()
    return {key: tuple(rest) for key, *rest in rows}


def emails_for(engine) -> list:
    return [rendered_email(pid, f"spring:viewers:browse:{pid}") for pid in people(engine, 4)]


def eml_files(folder: Path) -> dict[str, str]:
    """.eml name -> its Message-ID; every one parses (none was left half-written)."""
    found = {}
    for path in sorted(folder.glob("*.eml")):
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert parsed.get_content_type() == "multipart/alternative", path
        found[path.name] = str(parsed["Message-ID"])
    return found


@pytest.mark.parametrize(("via", "crash_at"), CASES)
def test_a_killed_delivery_run_again_sends_nothing_twice(
    db_url, fresh_sqlite, tmp_path, via, crash_at
):
    connector = esp_connectors()[via]
    reference = open_db(fresh_sqlite())
    engine = open_db(db_url)
    emails = emails_for(engine)
    assert [e.profile_id for e in emails] == [e.profile_id for e in emails_for(reference)]
    doubtful = emails[1].idempotency_key
    if via == "outbox":
        outbox = {"folder": str(tmp_path / "out"), "from": FROM}
        alone = {"folder": str(tmp_path / "reference"), "from": FROM}
        deliver(reference, emails, via=connector, settings=delivery_settings(esp_outbox=alone))
        killed_deliver(db_url, via, {"esp.outbox": outbox}, emails, crash_at)
        settings = delivery_settings(esp_outbox=outbox)
        report = deliver(engine, emails, via=connector, settings=settings)
        assert snapshot(engine) == snapshot(reference)
        assert eml_files(tmp_path / "out") == eml_files(tmp_path / "reference")
        assert report.recovered == (1 if crash_at.startswith("deliver.sent") else 0)
        return
    with smtp_server() as (server, port):
        smtp = {"host": "127.0.0.1", "port": port, "from": FROM, "starttls": "never"}
        deliver(reference, emails, via=connector, settings=delivery_settings(esp_smtp=smtp))
        expected = snapshot(reference)
        server.messages.clear()
        killed_deliver(db_url, via, {"esp.smtp": smtp}, emails, crash_at)
        report = deliver(engine, emails, via=connector, settings=delivery_settings(esp_smtp=smtp))
        received = server.message_ids()
        assert len(received) == len(set(received)), "a message arrived twice"
        assert report.unknown == [doubtful]
        state = snapshot(engine)
        assert state[doubtful][:3] == ("unknown", None, "smtp")
        assert {k: v for k, v in state.items() if k != doubtful} == {
            k: v for k, v in expected.items() if k != doubtful
        }
        in_doubt = message_id(doubtful, "shop.example")
        if crash_at.startswith("deliver.claimed"):
            # Killed before the hand-over: it never arrived, and asking sends it once.
            assert in_doubt not in received
            deliver(
                engine,
                emails,
                via=connector,
                settings=delivery_settings(esp_smtp=smtp),
                retry_unknown=True,
            )
            assert snapshot(engine) == expected
            assert sorted(server.message_ids()) == sorted({*received, in_doubt})
        else:
            assert in_doubt in received and len(received) == len(emails)
