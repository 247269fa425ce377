"""The automate and send flows, run for real on the session's Prefect server
against SQLite and PostgreSQL: what a tick records is what the library's replay
of the same history gives, a second tick at the same time records nothing,
and the send flow performs each recorded action once, counting what failed.

The store is the demo shop (``shop`` in conftest.py); two workflows written for
it: people entering ``browsers`` (a segment run by the segment flow) are split,
one in five held out, the rest sent an email a day later through the outbox;
a daily schedule posts each browser to a webhook served here on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.client.schemas.objects import StateType

from core.automation import load_workflow_files, simulate
from core.automation.report import workflow_list
from core.consents import email_refusals
from core.db import make_engine
from core.db.tables import MESSAGES, PROFILES, WORKFLOW_ACTIONS, WORKFLOW_STATES
from plugins.demo.emails import grant_signup_consents
from plugins.esp.outbox import file_stem
from tests.helpers import DEMO_END, task_runs

END = DEMO_END
# Past the day's wait and the schedule's first fire (09:00), before its second.
LATER = END + timedelta(days=1, hours=2)

SEGMENT = "name: browsers\nrule: {event: product_view, within: 10d}\n"
FOLLOW_UP = """
name: follow_up
trigger: {segment_entered: browsers}
steps:
  - split:
      arms:
        - name: mail
          percent: 80
          steps:
            - wait: 1d
            - send: {template: welcome, via: outbox}
      holdout: {name: control, percent: 20}
"""
DIGEST = """
name: digest
trigger: {{schedule: {{cron: "0 9 * * *", segment: browsers}}}}
reentry: always
steps:
  - webhook: {{url: "{url}", body: {{list: digest}}, retries: 0, backoff: 0}}
"""


@dataclass
class Hook:
    """A webhook receiver: what it was sent (Idempotency-Key, body) and how it answers."""

    url: str
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], int] = lambda _body: 200


@pytest.fixture
def hook() -> Iterator[Hook]:
    found = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            found.seen.append((self.headers["Idempotency-Key"], body))
            self.send_response(found.answer(body))
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Place:
    segments: Path
    workflows: Path
    outbox: Path


@pytest.fixture
def place(tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> Place:
    """Definition folders and a segflow.toml (a secret key, the outbox folder)
    that the flows read, as a deployment's would."""
    segments, workflows, outbox = tmp_path / "segments", tmp_path / "workflows", tmp_path / "outbox"
    segments.mkdir()
    (segments / "browsers.yaml").write_text(SEGMENT)
    workflows.mkdir()
    (workflows / "follow_up.yaml").write_text(FOLLOW_UP)
    (workflows / "digest.yaml").write_text(DIGEST.format(url=hook.url))
    config = tmp_path / "segflow.toml"
    config.write_text(
        f'secret_key = "{"k" * 32}"\n'
        f'[esp.outbox]\nfolder = "{outbox}"\nfrom = "Shop <news@shop.example>"\n'
    )
    for name in ("SEGFLOW_DATABASE_URL", "SEGFLOW_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGFLOW_CONFIG", str(config))
    return Place(segments, workflows, outbox)


def rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]
    engine.dispose()
    return found


def versions(url: str) -> dict[str, int]:
    engine = make_engine(url)
    found = {w["name"]: w["version"] for w in workflow_list(engine)}
    engine.dispose()
    return found


def outcomes_stored(url: str, name: str) -> set[tuple]:
    """Per run of ``name``: (profile, status, arm, its actions as (step, action, at))."""
    actions: dict[int, list[tuple]] = {}
    for a in rows(url, WORKFLOW_ACTIONS):
        actions.setdefault(a["run_id"], []).append((a["step"], a["action"], a["created_at"]))
    return {
        (r["profile_id"], r["status"], r["arm"], tuple(actions.get(r["id"], ())))
        for r in rows(url, WORKFLOW_STATES)
        if r["workflow"] == name
    }


def outcomes_replayed(url: str, directory: Path, name: str) -> set[tuple]:
    """The same, from the library's replay of the stored history (which writes nothing)."""
    engine = make_engine(url)
    wf = load_workflow_files(directory)[name]
    result = simulate(engine, wf, END - timedelta(minutes=1), LATER)
    engine.dispose()
    return {
        (r.profile_id, r.status, r.arm, tuple((a.step, a.action, a.at) for a in r.actions))
        for r in result.runs
    }


def when(result: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(result["as_of"])


def counts(result: dict[str, Any], field_: str) -> dict[str, int]:
    return {name: c[field_] for name, c in result["workflows"].items() if c[field_]}


def recorded(url: str, place: Place) -> tuple[set[int], dict[str, Any]]:
    """Workflows saved, the segment flow run (entering the browsers), and the
    tick past the wait, which records the send and webhook actions: the
    browsers and the tick's result."""
    from flows.automate import automate
    from flows.segment import segment

    first = automate(str(place.workflows), database_url=url, as_of=END)
    # Saved; the schedule's first look only starts its clock.
    assert when(first) == END and first["workflows"] == {}
    assert rows(url, WORKFLOW_STATES) == []
    segment(str(place.segments), database_url=url, as_of=END)
    entered = rows(url, WORKFLOW_STATES)
    assert {r["workflow"] for r in entered} == {"follow_up"}
    assert rows(url, WORKFLOW_ACTIONS) == []
    # Before the wait ends and the schedule fires: nothing moves.
    early = automate(str(place.workflows), database_url=url, as_of=END + timedelta(hours=8))
    assert not counts(early, "advanced") and not counts(early, "entered")
    assert rows(url, WORKFLOW_STATES) == entered and rows(url, WORKFLOW_ACTIONS) == []
    tick = automate(str(place.workflows), database_url=url, as_of=LATER)
    return {r["profile_id"] for r in entered}, tick


def test_automate_flow_records_what_the_replay_gives_once(prefect_server, shop, place):
    from flows.automate import automate

    browsers, tick = recorded(shop, place)
    assert len(browsers) > 20
    assert versions(shop) == {"digest": 1, "follow_up": 1}

    for name in ("follow_up", "digest"):
        assert outcomes_stored(shop, name) == outcomes_replayed(shop, place.workflows, name), name
    states = rows(shop, WORKFLOW_STATES)
    follow = [r for r in states if r["workflow"] == "follow_up"]
    held = {r["profile_id"] for r in follow if r["arm"] == "control"}
    assert 0 < len(held) < len(browsers) / 2
    assert {r["status"] for r in follow if r["arm"] == "control"} == {"held_out"}
    assert {r["status"] for r in follow if r["arm"] == "mail"} == {"completed"}
    digest = [r for r in states if r["workflow"] == "digest"]
    assert {r["profile_id"] for r in digest} == browsers
    assert {r["entry_key"] for r in digest} == {(END + timedelta(hours=9)).isoformat()}
    actions = rows(shop, WORKFLOW_ACTIONS)
    assert Counter((a["workflow"], a["action"]) for a in actions) == {
        ("follow_up", "send"): len(browsers) - len(held),
        ("digest", "webhook"): len(browsers),
    }
    assert {a["status"] for a in actions} == {"pending"}
    # What the tick counted is what it wrote: the mail arm woke and sent, the
    # schedule entered everyone; the holdout was decided on entry, by the segment flow.
    assert when(tick) == LATER
    assert counts(tick, "entered") == {"digest": len(digest)}
    assert counts(tick, "actions") == dict(Counter(a["workflow"] for a in actions))
    assert counts(tick, "advanced") == dict(
        Counter(r["workflow"] for r in states if r["status"] == "completed")
    )
    assert counts(tick, "completed") == counts(tick, "advanced")
    assert not counts(tick, "held_out")

    # A second tick at the same time moves nothing and records nothing.
    again = automate(str(place.workflows), database_url=shop, as_of=LATER)
    assert when(again) == LATER
    assert not counts(again, "advanced") and not counts(again, "entered")
    assert rows(shop, WORKFLOW_STATES) == states and rows(shop, WORKFLOW_ACTIONS) == actions
    assert versions(shop) == {"digest": 1, "follow_up": 1}

    # None: the stored definitions, with the folder gone; the next day's fire enters
    # the browsers again (re-entry: always), and what the tick counts is what it wrote.
    shutil.rmtree(place.workflows)
    next_day = END + timedelta(days=1, hours=10)
    third = automate(None, database_url=shop, as_of=next_day)
    new = [r for r in rows(shop, WORKFLOW_STATES) if r["id"] not in {s["id"] for s in states}]
    new_actions = rows(shop, WORKFLOW_ACTIONS)[len(actions) :]
    assert {r["entry_key"] for r in new} == {(next_day - timedelta(hours=1)).isoformat()}
    assert {r["profile_id"] for r in new} == browsers
    assert counts(third, "entered") == {"digest": len(new)}
    assert counts(third, "actions") == {"digest": len(new_actions)} == {"digest": len(browsers)}
    assert versions(shop) == {"digest": 1, "follow_up": 1}


def test_a_bad_workflow_file_fails_the_flow_once_naming_file_and_line(
    prefect_server, sqlite_url, tmp_path, monkeypatch
):
    from flows.automate import automate

    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "w.yaml").write_text(
        "name: w\ntrigger: {segment_entered: vip}\nsteps:\n  - wait: 1h\n  - teleport: {to: x}\n"
    )
    state = automate(str(bad), database_url=sqlite_url, as_of=END, return_state=True)

    assert state.is_failed()
    expected = f"{bad / 'w.yaml'}:5: workflow 'w': steps[1]: unknown step 'teleport'"
    with pytest.raises(ValueError, match="unknown step 'teleport'") as caught:
        state.result()
    assert str(caught.value).startswith(expected)
    (tick,) = task_runs(state.state_details.flow_run_id).values()
    assert tick.state_type == StateType.FAILED
    assert tick.run_count == 1  # retries=2, but a definition error is not retried
    assert versions(sqlite_url) == {}


def test_send_flow_performs_each_action_once_and_counts_what_failed(
    prefect_server, shop, place, hook
):
    from flows.send import send

    engine = make_engine(shop)
    grant_signup_consents(engine)
    engine.dispose()
    recorded(shop, place)
    actions = rows(shop, WORKFLOW_ACTIONS)
    sends = {a["idempotency_key"]: a["profile_id"] for a in actions if a["action"] == "send"}
    hooks = {a["idempotency_key"]: a["profile_id"] for a in actions if a["action"] == "webhook"}
    assert sends and hooks

    # A file where the outbox folder goes, the webhook answering 503: nothing is
    # delivered, every action stays pending with one attempt counted.
    place.outbox.write_text("")
    hook.answer = lambda _body: 503
    first = send(database_url=shop, as_of=LATER)
    assert first == {
        "performed": {"send": len(sends), "webhook": len(hooks)},
        "done": 0,
        "skipped": {},
        "failed": {},
        "retry": {
            f"TemporaryFailure: outbox folder {place.outbox}: File exists": len(sends),
            "HTTP 503: {} (after 1 attempts)": len(hooks),
        },
    }
    assert {(a["status"], a["attempts"]) for a in rows(shop, WORKFLOW_ACTIONS)} == {("pending", 1)}
    assert rows(shop, MESSAGES) == []
    assert Counter(k for k, _ in hook.seen) == dict.fromkeys(hooks, 1)

    # The folder back, the receiver answering 200 for even profile ids and 400
    # for odd ones: the emails go to everyone the consent gate lets through.
    place.outbox.unlink()
    hook.answer = lambda body: 200 if body["profile_id"] % 2 == 0 else 400
    second = send(database_url=shop, as_of=LATER)
    engine = make_engine(shop)
    with engine.connect() as conn:
        refused = email_refusals(conn, sends.values())
        known = {
            pid: (user_id, email)
            for pid, user_id, email in conn.execute(
                sa.select(PROFILES.c.id, PROFILES.c.user_id, PROFILES.c.email)
            )
        }
    engine.dispose()
    why = {
        key: "no email address" if not known[pid][1] else refused.get(pid)
        for key, pid in sends.items()
    }
    delivered = {key for key, reason in why.items() if reason is None}
    answered = {key for key, pid in hooks.items() if pid % 2 == 0}
    assert delivered and len(delivered) < len(sends)
    assert second == {
        "performed": {"send": len(sends), "webhook": len(hooks)},
        "done": len(delivered) + len(answered),
        "skipped": dict(Counter(r for r in why.values() if r is not None)),
        "failed": {"HTTP 400: {}": len(hooks) - len(answered)},
        "retry": {},
    }
    status = {a["idempotency_key"]: a["status"] for a in rows(shop, WORKFLOW_ACTIONS)}
    assert status == {
        **{k: "done" if k in delivered else "skipped" for k in sends},
        **{k: "done" if k in answered else "failed" for k in hooks},
    }
    messages = {m["idempotency_key"]: m["status"] for m in rows(shop, MESSAGES)}
    # Anonymous people (no user id, no address) are skipped before a message is made.
    made = {k for k, pid in sends.items() if known[pid] != (None, None)}
    assert messages == {k: "sent" if k in delivered else "skipped" for k in made}
    files = {p.name for p in place.outbox.glob("*.eml")}
    assert files == {f"{file_stem(k)}.eml" for k in delivered}
    # One Idempotency-Key per action, the same on the retry.
    assert Counter(k for k, _ in hook.seen) == dict.fromkeys(hooks, 2)

    # Nothing is pending: a third run performs nothing and sends nothing more.
    third = send(database_url=shop, as_of=LATER + timedelta(hours=1))
    assert third == {"performed": {}, "done": 0, "skipped": {}, "failed": {}, "retry": {}}
    assert {p.name for p in place.outbox.glob("*.eml")} == files
    assert {m["idempotency_key"]: m["status"] for m in rows(shop, MESSAGES)} == messages
    assert len(hook.seen) == 2 * len(hooks)
