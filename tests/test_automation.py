"""Workflows: the language, the engine (triggers, waits, branches, holdouts, caps,
quiet hours, versions, re-entry, exits) and the built-in actions, on a real
database, with time controlled by each test (``as_of``)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from core.automation import load_workflow_files, perform_pending, run_tick, simulate
from core.automation.engine import enter
from core.automation.language import WorkflowError, default_registry, parse_workflow
from core.automation.steps import bucket
from core.consents import set_consent
from core.db import open_db
from core.db.tables import (
    MESSAGES,
    PROFILES,
    WORKFLOW_ACTIONS,
    WORKFLOW_HISTORY,
    WORKFLOW_STATES,
)
from core.ingestion import ingest
from core.plugins import events_ingested_hook
from core.segments.store import load_segment_files, run_segments
from core.types import Entry
from tests.helpers import delivery_settings, people

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC).replace(microsecond=0)


def workflow(text: str):
    return parse_workflow(yaml.safe_load(text), default_registry())


def save(engine, *texts: str, as_of=None) -> None:
    defs = {wf.name: wf for wf in map(workflow, texts)}
    run_tick(engine, as_of=as_of or NOW - timedelta(days=30), definitions=defs)


def settings_for(tmp_path: Path):
    s = delivery_settings(
        esp_outbox={"folder": str(tmp_path / "outbox"), "from": "Shop <s@shop.example>"}
    )
    s.secret_key = "k" * 32
    return s


def track(engine, *events: dict) -> None:
    report = ingest(engine, list(events), on_stored=events_ingested_hook(engine))
    assert not report.rejected, report.rejected


def runs(engine, name: str | None = None) -> list[dict]:
    q = sa.select(WORKFLOW_STATES).order_by(WORKFLOW_STATES.c.id)
    if name:
        q = q.where(WORKFLOW_STATES.c.workflow == name)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def actions(engine) -> list[dict]:
    with engine.connect() as conn:
        q = sa.select(WORKFLOW_ACTIONS).order_by(WORKFLOW_ACTIONS.c.id)
        return [dict(r) for r in conn.execute(q).mappings()]


def history(engine, run_id: int) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(WORKFLOW_HISTORY.c.what, WORKFLOW_HISTORY.c.detail)
            .where(WORKFLOW_HISTORY.c.run_id == run_id)
            .order_by(WORKFLOW_HISTORY.c.id)
        ).all()
    return [tuple(r) for r in rows]


def sent(engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(MESSAGES.c.idempotency_key)
                .where(MESSAGES.c.status == "sent")
                .order_by(MESSAGES.c.idempotency_key)
            ).scalars()
        )


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat()


CART = """
name: cart
trigger: {event: {type: add_to_cart, key: properties.cart_id}}
reentry: always
exit_when: {event: purchase, within: 2h}
steps:
  - wait: 1h
  - if: {event: purchase, within: 1h}
    then: [{exit: bought}]
  - send: {template: cart_abandonment}
"""


def cart(user: str, minutes: float, cart_id: str) -> dict:
    return {"type": "add_to_cart", "user_id": user, "ts": at(minutes), "product_id": "P1",
            "value": 20.0, "currency": "USD", "properties": {"cart_id": cart_id}}  # fmt: skip


# -- the language ----------------------------------------------------------------------


def test_the_example_workflows_are_valid():
    found = load_workflow_files(ROOT / "examples" / "workflows")
    assert {"cart_recovery", "browse_followup", "win_back"} <= set(found)
    win_back = found["win_back"]
    split = win_back.nodes["steps[0]"]
    assert split.holdout is not None and split.holdout.percent == 10


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        ("  - wait: 1h\n  - teleport: {list: vip}\n", 5, "steps[1]: unknown step 'teleport'"),
        ("  - wait: 1h\n  - sync: {list: vip}\n", 5, "steps[1].sync: connector: required"),
        ("  - wait: 5 minutes\n", 4, "steps[0].wait: '5 minutes' is not a duration"),
        ("  - split:\n      arms: [{name: a, percent: 50}]\n", 5, "add up to 50, not 100"),
        ("  - wait: {until_local: '25:00'}\n", 4, "not a time of day"),
        ("  - if: {evnt: purchase}\n", 4, "steps[0].if: cannot tell the condition kind"),
        (
            "  - send: {template: x, via: carrier_pigeon}\n",
            4,
            "no connector named 'carrier_pigeon'",
        ),
    ],
)
def test_bad_definitions_name_file_line_and_path(tmp_path, body, line, expected):
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "bad.yaml").write_text("name: bad\ntrigger: {segment_entered: vip}\nsteps:\n" + body)
    with pytest.raises(WorkflowError) as caught:
        load_workflow_files(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'bad.yaml'}:{line}: workflow 'bad': "), message
    assert expected in message


def test_unknown_triggers_and_left_segment_without_a_segment_are_refused():
    with pytest.raises(WorkflowError, match="unknown trigger 'page_loaded'"):
        workflow("name: w\ntrigger: {page_loaded: x}\nsteps: [{wait: 1h}]")
    with pytest.raises(WorkflowError, match="left_segment needs a trigger about a segment"):
        workflow("name: w\ntrigger: {event: purchase}\nexit_when: left_segment\nsteps: [exit]")


# -- triggers, waits, keyed runs, exactly once -------------------------------------------


def test_one_run_per_cart_waits_an_hour_and_sends_once(db_url, tmp_path):
    engine = open_db(db_url)
    save(engine, CART)
    people(engine, 1)
    track(engine, cart("p0", 0, "c1"), cart("p0", 5, "c2"), cart("p0", 6, "c1"))
    started = runs(engine)
    # The third add is the first cart again: its run is already active.
    assert [(r["entry_key"], r["status"]) for r in started] == [("c1", "active"), ("c2", "active")]
    assert started[0]["wake_at"] == NOW + timedelta(hours=1)
    settings = settings_for(tmp_path)
    run_tick(engine, as_of=NOW + timedelta(minutes=30))
    assert actions(engine) == []
    report = run_tick(engine, as_of=NOW + timedelta(minutes=61))
    assert report.of("cart").actions == 1
    done = perform_pending(engine, settings, as_of=NOW + timedelta(minutes=61))
    assert done.done == 1
    run_tick(engine, as_of=NOW + timedelta(minutes=70))
    perform_pending(engine, settings, as_of=NOW + timedelta(minutes=70))
    # Ticks and performs again send nothing twice.
    run_tick(engine, as_of=NOW + timedelta(minutes=80))
    perform_pending(engine, settings, as_of=NOW + timedelta(minutes=80))
    keys = sent(engine)
    ids = [r["id"] for r in runs(engine)]
    assert keys == sorted(f"wf:cart:{i}:steps[2]" for i in ids)
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2
    assert {r["status"] for r in runs(engine)} == {"completed"}


def test_a_purchase_ends_the_run_at_once(tmp_path, sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, CART)
    people(engine, 1)
    track(engine, cart("p0", 0, "c1"))
    track(engine, {"type": "purchase", "user_id": "p0", "ts": at(10), "value": 20.0,
                   "currency": "USD"})  # fmt: skip
    (run,) = runs(engine)
    assert (run["status"], run["reason"]) == ("exited", "exit_when holds")
    run_tick(engine, as_of=NOW + timedelta(hours=2))
    assert actions(engine) == []


def test_old_events_start_no_run(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, CART)
    people(engine, 1)
    track(engine, cart("p0", -3 * 24 * 60, "old"))
    assert runs(engine) == []


# -- branches, splits and holdouts ---------------------------------------------------------


SPLIT = """
name: offer
trigger: {segment_entered: buyers}
steps:
  - split:
      arms:
        - {name: a, percent: 45, steps: [{tag: {add: [saw_a]}}]}
        - {name: b, percent: 45, steps: [{tag: {add: [saw_b]}}]}
      holdout: {name: control, percent: 10}
"""


def test_split_arms_are_stable_per_person_and_the_holdout_gets_nothing(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, SPLIT)
    ids = people(engine, 400, consent=False)
    enter(engine, {"offer": [Entry(pid, NOW) for pid in ids]}, as_of=NOW)
    arms = {r["profile_id"]: (r["arm"], r["status"]) for r in runs(engine)}
    for pid in ids:
        b = bucket("offer", "steps[0]", pid)
        expected = "a" if b < 45 else "b" if b < 90 else "control"
        assert arms[pid][0] == expected
    held = [pid for pid, (arm, _) in arms.items() if arm == "control"]
    assert 20 <= len(held) <= 65  # 10% of 400, binomial spread
    assert all(arms[pid][1] == "held_out" for pid in held)
    done = {a["profile_id"] for a in actions(engine)}
    assert done == set(ids) - set(held)
    perform_pending(engine, settings_for(tmp_path))
    with engine.connect() as conn:
        tags = dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.attributes)).all())
    for pid in ids:
        got = (tags[pid] or {}).get("tags")
        arm = arms[pid][0]
        assert got == (None if arm == "control" else [f"saw_{arm}"])


def test_wait_until_takes_the_then_branch_or_the_timeout_branch(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, """
name: nudge
trigger: {segment_entered: buyers}
steps:
  - wait:
      until: {event: purchase, within: 3d}
      timeout: 2d
      then: [{tag: converted}]
      on_timeout: [{tag: timed_out}]
""")  # fmt: skip
    a, b = people(engine, 2)
    enter(engine, {"nudge": [Entry(a, NOW), Entry(b, NOW)]}, as_of=NOW)
    assert all(r["waiting"] == "until" for r in runs(engine))
    # a buys a day later: the event wakes the run at once.
    track(engine, {"type": "purchase", "user_id": "p0", "ts": at(24 * 60), "value": 5.0,
                   "currency": "USD"})  # fmt: skip
    run_tick(engine, as_of=NOW + timedelta(days=3))
    perform_pending(engine, settings_for(tmp_path))
    by = {r["profile_id"]: r for r in runs(engine)}
    assert by[a]["status"] == by[b]["status"] == "completed"
    got = {a_["profile_id"]: a_["params"]["add"] for a_ in actions(engine)}
    assert got == {a: ["converted"], b: ["timed_out"]}
    assert ("branch", "on_timeout") in history(engine, by[b]["id"])


def test_the_filter_is_checked_again_before_each_action(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, """
name: vip_only
trigger: {segment_entered: buyers}
filter: {attribute: vip, op: "==", value: true}
steps:
  - wait: 1d
  - tag: thanks
""")  # fmt: skip
    (pid,) = people(engine, 1)
    with engine.begin() as conn:
        conn.execute(PROFILES.update().values(attributes={"vip": True}))
    enter(engine, {"vip_only": [Entry(pid, NOW)]}, as_of=NOW)
    with engine.begin() as conn:
        conn.execute(PROFILES.update().values(attributes={"vip": False}))
    run_tick(engine, as_of=NOW + timedelta(days=2))
    (run,) = runs(engine)
    assert run["status"] == "exited" and "filter no longer holds" in run["reason"]
    assert actions(engine) == []


# -- frequency caps and quiet hours -------------------------------------------------------


def sender(name: str, then: str, extra: str = "") -> str:
    return f"""
name: {name}
trigger: {{segment_entered: buyers}}
frequency_cap: {{max: 1, per: 24h, then: {then}}}
{extra}
steps:
  - send: {{template: welcome}}
"""


def test_a_frequency_cap_counts_every_workflow_and_defers_or_skips(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, sender("first", "skip"), sender("second", "defer"), sender("third", "skip"))
    (pid,) = people(engine, 1)
    enter(engine, {"first": [Entry(pid, NOW)]}, as_of=NOW)
    enter(
        engine, {"second": [Entry(pid, NOW + timedelta(hours=1))]}, as_of=NOW + timedelta(hours=1)
    )
    enter(engine, {"third": [Entry(pid, NOW + timedelta(hours=2))]}, as_of=NOW + timedelta(hours=2))
    by = {r["workflow"]: r for r in runs(engine)}
    assert by["first"]["status"] == "completed"
    assert by["second"]["waiting"] == "retry"
    assert by["second"]["wake_at"] == NOW + timedelta(hours=24)
    assert (
        "deferred",
        f"frequency cap 1 per 1d: until {(NOW + timedelta(hours=24)).isoformat()}",
    ) in history(engine, by["second"]["id"])
    assert by["third"]["status"] == "completed"
    assert ("skipped", "frequency cap 1 per 1d") in history(engine, by["third"]["id"])
    assert [a["workflow"] for a in actions(engine)] == ["first"]
    report = run_tick(engine, as_of=NOW + timedelta(hours=25))
    assert report.of("second").actions == 1
    assert [a["workflow"] for a in actions(engine)] == ["first", "second"]


def test_a_cap_counts_its_whole_window_when_another_workflow_read_a_shorter_one(sqlite_url):
    """One batch of events enters a run of a workflow with a short cap and wakes
    a run of one with a long cap, for the same person: the long cap counts the
    send of three days ago though the short one's read did not reach it."""
    engine = open_db(sqlite_url)
    save(engine, sender("hello", "skip"), """
name: cart
trigger: {event: add_to_cart}
frequency_cap: {max: 5, per: 1h, then: skip}
steps:
  - wait: 1h
  - send: {template: cart_abandonment}
""", """
name: nudge
trigger: {segment_entered: buyers}
frequency_cap: {max: 1, per: 7d, then: skip}
steps:
  - wait:
      until: {event: purchase, within: 1d}
      timeout: 5d
      then: [{send: {template: welcome}}]
""")  # fmt: skip
    (pid,) = people(engine, 1)
    enter(engine, {"hello": [Entry(pid, NOW - timedelta(days=3))]}, as_of=NOW - timedelta(days=3))
    enter(engine, {"nudge": [Entry(pid, NOW - timedelta(hours=1))]}, as_of=NOW - timedelta(hours=1))
    track(engine, cart("p0", 0, "c1"), {"type": "purchase", "user_id": "p0", "ts": at(0),
                                        "value": 5.0, "currency": "USD"})  # fmt: skip
    by = {r["workflow"]: r for r in runs(engine)}
    assert by["cart"]["status"] == "active" and by["nudge"]["status"] == "completed"
    assert [a["workflow"] for a in actions(engine)] == ["hello"]
    assert ("skipped", "frequency cap 1 per 7d") in history(engine, by["nudge"]["id"])


def test_quiet_hours_follow_the_persons_timezone(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, sender("night", "skip", 'quiet_hours: {start: "22:00", end: "07:00"}'))
    (pid,) = people(engine, 1)
    with engine.begin() as conn:
        conn.execute(PROFILES.update().values(attributes={"timezone": "Asia/Tokyo"}))
    # 14:00 UTC is 23:00 in Tokyo: deferred to 07:00 there, 22:00 UTC.
    entry = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
    enter(engine, {"night": [Entry(pid, entry)]}, as_of=entry)
    (run,) = runs(engine)
    assert run["wake_at"] == datetime(2026, 6, 1, 22, 0, tzinfo=UTC)
    assert history(engine, run["id"])[-1][0] == "deferred"
    assert "quiet hours 22:00-07:00" in history(engine, run["id"])[-1][1]
    run_tick(engine, as_of=datetime(2026, 6, 1, 22, 1, tzinfo=UTC))
    assert [a["created_at"] for a in actions(engine)] == [datetime(2026, 6, 1, 22, 0, tzinfo=UTC)]


# -- versions and re-entry ------------------------------------------------------------------


WAITER = """
name: waiter
trigger: {{segment_entered: buyers}}
reentry: {reentry}
{migrate}
steps:
  - wait: 1d
  - tag: {tag}
"""


def test_a_new_version_applies_to_new_entries_and_migrates_only_when_asked(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, WAITER.format(reentry="always", migrate="", tag="v1"))
    a, b, c = people(engine, 3)
    enter(engine, {"waiter": [Entry(a, NOW)]}, as_of=NOW)
    save(engine, WAITER.format(reentry="always", migrate="", tag="v2"))
    enter(engine, {"waiter": [Entry(b, NOW)]}, as_of=NOW)
    save(engine, WAITER.format(reentry="always", migrate="migrate: true", tag="v3"))
    enter(engine, {"waiter": [Entry(c, NOW)]}, as_of=NOW)
    run_tick(engine, as_of=NOW + timedelta(days=2))
    got = {x["profile_id"]: x["params"]["add"] for x in actions(engine)}
    # a and b were moved to v3 (their step exists there); c entered on it.
    assert got == {a: ["v3"], b: ["v3"], c: ["v3"]}
    engine2 = open_db(sqlite_url.replace(".db", "-2.db"))
    save(engine2, WAITER.format(reentry="always", migrate="", tag="v1"))
    (d,) = people(engine2, 1)
    enter(engine2, {"waiter": [Entry(d, NOW)]}, as_of=NOW)
    save(engine2, WAITER.format(reentry="always", migrate="", tag="v2"))
    run_tick(engine2, as_of=NOW + timedelta(days=2))
    assert [x["params"]["add"] for x in actions(engine2)] == [["v1"]]


@pytest.mark.parametrize(("reentry", "entered"), [("once", 1), ("{every: 5d}", 2), ("always", 3)])
def test_reentry_policies(sqlite_url, reentry, entered):
    engine = open_db(sqlite_url)
    save(engine, WAITER.format(reentry=reentry, migrate="", tag="x"))
    (pid,) = people(engine, 1)
    for day in (0, 3, 6):
        when = NOW + timedelta(days=day)
        run_tick(engine, as_of=when)
        enter(engine, {"waiter": [Entry(pid, when)]}, as_of=when)
    assert len(runs(engine)) == entered


# -- segment triggers and exits ---------------------------------------------------------------


def test_segment_entry_starts_runs_and_leaving_the_segment_ends_them(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    folder = tmp_path / "segments"
    folder.mkdir()
    (folder / "s.yaml").write_text("name: recent_buyers\nrule: {event: purchase, within: 2d}\n")
    save(engine, """
name: thank
trigger: {segment_entered: recent_buyers}
exit_when: left_segment
steps:
  - wait: 3d
  - tag: thanked
""")  # fmt: skip
    people(engine, 1)
    ingest(engine, [{"type": "purchase", "user_id": "p0", "ts": at(0), "value": 3.0,
                     "currency": "USD"}])  # fmt: skip
    kinds = default_registry().kinds
    from core.plugins import segment_change_hook

    defs = load_segment_files(folder, kinds)
    run_segments(engine, NOW + timedelta(minutes=1), kinds=kinds, definitions=defs,
                 on_change=segment_change_hook(engine))  # fmt: skip
    (run,) = runs(engine)
    assert run["status"] == "active"
    run_segments(engine, NOW + timedelta(days=2, minutes=1), kinds=kinds,
                 on_change=segment_change_hook(engine))  # fmt: skip
    (run,) = runs(engine)
    assert (run["status"], run["reason"]) == ("exited", "left segment recent_buyers")


# -- actions -----------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers["Idempotency-Key"], body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_webhook_retries_with_one_idempotency_key_and_fails_on_4xx(sqlite_url, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        engine = open_db(sqlite_url)
        save(engine, f"""
name: hooked
trigger: {{segment_entered: buyers}}
steps:
  - webhook: {{url: "{url}", body: {{list: vip}}, backoff: 0, retries: 2}}
""")  # fmt: skip
        a, b = people(engine, 2)
        _Hook.answers[:] = [503, 429, 200]
        enter(engine, {"hooked": [Entry(a, NOW)]}, as_of=NOW)
        report = perform_pending(engine, settings_for(tmp_path))
        assert report.done == 1
        keys = {k for k, _ in _Hook.seen}
        assert len(_Hook.seen) == 3 and keys == {actions(engine)[0]["idempotency_key"]}
        assert _Hook.seen[0][1]["data"] == {"list": "vip"}
        _Hook.answers[:] = [400]
        enter(engine, {"hooked": [Entry(b, NOW)]}, as_of=NOW)
        report = perform_pending(engine, settings_for(tmp_path))
        assert list(report.failed) == ["HTTP 400: {}"]
        assert [x["status"] for x in actions(engine)] == ["done", "failed"]
    finally:
        server.shutdown()


def test_update_profile_sets_and_unsets_attributes_once(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, """
name: upgrade
trigger: {segment_entered: buyers}
steps:
  - update_profile: {set: {tier: gold}, unset: [trial]}
""")  # fmt: skip
    (pid,) = people(engine, 1)
    with engine.begin() as conn:
        conn.execute(PROFILES.update().values(attributes={"trial": True, "name": "Ann"}))
    enter(engine, {"upgrade": [Entry(pid, NOW)]}, as_of=NOW)
    perform_pending(engine, settings_for(tmp_path))
    perform_pending(engine, settings_for(tmp_path))
    with engine.connect() as conn:
        attrs = conn.execute(sa.select(PROFILES.c.attributes)).scalar()
    assert attrs == {"name": "Ann", "tier": "gold"}
    assert [x["status"] for x in actions(engine)] == ["done"]


def test_a_send_to_someone_without_consent_is_skipped_with_the_reason(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, sender("hello", "skip"))
    (pid,) = people(engine, 1, consent=False)
    enter(engine, {"hello": [Entry(pid, NOW)]}, as_of=NOW)
    report = perform_pending(engine, settings_for(tmp_path))
    assert report.done == 0 and sum(report.skipped.values()) == 1
    (action,) = actions(engine)
    assert action["status"] == "skipped" and "consent" in action["reason"]


def test_a_send_to_someone_without_an_email_address_is_skipped_not_failed(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    save(engine, sender("hello", "skip"))
    (with_email,) = people(engine, 1)
    ingest(engine, [{"type": "page_view", "anonymous_id": "visitor", "ts": at(-5)},
                    {"type": "identify", "user_id": "app-only", "ts": at(-5)}])  # fmt: skip
    with engine.connect() as conn:
        ids = conn.execute(sa.select(PROFILES.c.id).where(PROFILES.c.email.is_(None))).scalars()
        nobody = sorted(ids)
    assert len(nobody) == 2
    enter(engine, {"hello": [Entry(pid, NOW) for pid in [with_email, *nobody]]}, as_of=NOW)
    report = perform_pending(engine, settings_for(tmp_path))
    assert report.done == 1 and report.skipped == {"no email address": 2} and not report.failed
    by_person = {a["profile_id"]: (a["status"], a["reason"]) for a in actions(engine)}
    assert by_person == {with_email: ("done", None)} | dict.fromkeys(
        nobody, ("skipped", "no email address")
    )
    assert len(sent(engine)) == 1


# -- simulation --------------------------------------------------------------------------------


def test_simulate_replays_history_without_writing(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, CART)
    people(engine, 2)
    # Stored without hooks: history the workflow never saw.
    ingest(engine, [cart("p0", -300, "a"), cart("p1", -280, "b"),
                    {"type": "purchase", "user_id": "p1", "ts": at(-250), "value": 20.0,
                     "currency": "USD"}])  # fmt: skip
    before = (runs(engine), actions(engine))
    wf = load_cart()
    result = simulate(engine, wf, NOW - timedelta(hours=6), NOW)
    assert (runs(engine), actions(engine)) == before == ([], [])
    by = {r.user_id: r for r in result.runs}
    assert result.entered == 2
    assert by["p0"].status == "completed"
    assert [(a.action, a.at) for a in by["p0"].actions] == [("send", NOW - timedelta(minutes=240))]
    assert by["p1"].status == "exited" and by["p1"].actions == []


def load_cart():
    return workflow(CART)


# -- schedules and dates --------------------------------------------------------------------


def test_a_schedule_enters_the_segments_members_at_each_cron_time(sqlite_url, tmp_path):
    engine = open_db(sqlite_url)
    folder = tmp_path / "segments"
    folder.mkdir()
    (folder / "s.yaml").write_text("name: everyone_seen\nrule: {event: page_view}\n")
    a, b = people(engine, 2)
    ingest(engine, [{"type": "page_view", "user_id": "p0", "ts": at(-60)}])
    kinds = default_registry().kinds
    run_segments(engine, NOW, kinds=kinds, definitions=load_segment_files(folder, kinds))
    # Saved (the first look, which starts the schedule's clock) at midnight.
    day = datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC) + timedelta(days=1)
    save(engine, """
name: weekly
trigger: {schedule: {cron: "0 9 * * *", segment: everyone_seen}}
reentry: always
steps:
  - tag: newsletter
""", as_of=day)  # fmt: skip
    run_tick(engine, as_of=day + timedelta(hours=8))
    assert runs(engine) == []
    run_tick(engine, as_of=day + timedelta(hours=9, minutes=5))
    run_tick(engine, as_of=day + timedelta(hours=9, minutes=10))  # same fire: nothing more
    first = runs(engine)
    assert [(r["profile_id"], r["entry_key"]) for r in first] == [
        (a, (day + timedelta(hours=9)).isoformat())
    ]
    run_tick(engine, as_of=day + timedelta(days=1, hours=9, minutes=1))
    assert len(runs(engine)) == 2 and b not in {r["profile_id"] for r in runs(engine)}


def test_a_date_attribute_enters_people_on_their_day_once_a_year(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, """
name: birthday
trigger: {date_attribute: {attribute: birthday, annual: true}}
reentry: always
steps:
  - tag: birthday_treat
""", as_of=NOW)  # fmt: skip
    a, b = people(engine, 2)
    with engine.begin() as conn:
        conn.execute(
            PROFILES.update()
            .where(PROFILES.c.id == a)
            .values(attributes={"birthday": "1990-03-14"})
        )
        conn.execute(PROFILES.update().where(PROFILES.c.id == b)
                     .values(attributes={"birthday": "1985-07-01"}))  # fmt: skip
    run_tick(engine, as_of=datetime(2027, 3, 13, 12, tzinfo=UTC))
    assert runs(engine) == []
    run_tick(engine, as_of=datetime(2027, 3, 14, 8, tzinfo=UTC))
    run_tick(engine, as_of=datetime(2027, 3, 14, 20, tzinfo=UTC))
    assert [(r["profile_id"], r["entry_key"]) for r in runs(engine)] == [(a, "2027-03-14")]
    # A missed day is caught up; a year of missed days is not (b's July).
    run_tick(engine, as_of=datetime(2028, 3, 15, 8, tzinfo=UTC))
    assert [r["entry_key"] for r in runs(engine)] == ["2027-03-14", "2028-03-14"]


def test_workflows_validate_exits_1_naming_the_error(run, tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "w.yaml").write_text(
        "name: w\ntrigger: {segment_entered: vip}\nsteps:\n  - wait: 1h\n  - teleport: {list: x}\n"
    )
    status, out, err = run("workflows", "validate")
    assert status == 1 and "w.yaml:5: workflow 'w': steps[1]: unknown step 'teleport'" in err
    (tmp_path / "workflows" / "w.yaml").write_text(
        "name: w\ntrigger: {segment_entered: vip}\nsteps:\n  - wait: 1h\n"
    )
    status, out, _ = run("workflows", "validate")
    assert status == 0 and "ok  w: 1 steps, trigger segment_entered" in out


WAIT_THEN_SEND = """
name: nurture
trigger: {segment_entered: buyers}
steps:
  - wait: 1h
  - send: {template: welcome}
"""


def test_a_withdrawn_consent_ends_the_persons_marketing_runs_at_once(sqlite_url):
    engine = open_db(sqlite_url)
    save(engine, WAIT_THEN_SEND)
    withdraws, unsubscribes, stays, never = people(engine, 4)
    set_consent(engine, "p3", "email", False, "test")
    enter(engine, {"nurture": [Entry(p, NOW) for p in (withdraws, unsubscribes, stays)]}, as_of=NOW)
    assert {r["status"] for r in runs(engine)} == {"active"}
    track(
        engine,
        {"type": "identify", "user_id": "p0", "ts": at(1),
         "traits": {"consent": {"email_marketing": False, "version": "v2"}}},
        {"type": "unsubscribe", "user_id": "p1", "ts": at(1)},
        {"type": "identify", "user_id": "p2", "ts": at(1), "traits": {"plan": "gold"}},
    )  # fmt: skip
    by = {r["profile_id"]: r for r in runs(engine)}
    assert (by[withdraws]["status"], by[withdraws]["reason"]) == (
        "exited", "email consent withdrawn"
    )  # fmt: skip
    assert (by[unsubscribes]["status"], by[unsubscribes]["reason"]) == ("exited", "unsubscribed")
    assert by[stays]["status"] == "active"
    # Someone who said no before entering leaves at entry.
    enter(engine, {"nurture": [Entry(never, NOW)]}, as_of=NOW)
    assert {r["profile_id"]: r["status"] for r in runs(engine)}[never] == "exited"
    run_tick(engine, as_of=NOW + timedelta(hours=2))
    assert [a["profile_id"] for a in actions(engine)] == [stays]


def test_a_run_another_writer_moved_first_is_left_to_it(db_url):
    """The states of a batch are written together; a run whose row changed
    since it was read (another tick took it) keeps that writer's state, and
    the others are written."""
    from core.automation.engine import _runs, _store_states

    engine = open_db(db_url)
    save(engine, CART)
    people(engine, 3)
    track(engine, *(cart(f"p{i}", 0, f"c{i}") for i in range(3)))
    with engine.begin() as conn:
        read = _runs(conn, WORKFLOW_STATES.c.workflow == "cart")
    assert len(read) == 3
    other = NOW + timedelta(minutes=1)
    with engine.begin() as conn:  # the other writer moves the second run first
        conn.execute(
            WORKFLOW_STATES.update()
            .where(WORKFLOW_STATES.c.id == read[1].id)
            .values(step="theirs", updated_at=other)
        )
    now = NOW + timedelta(minutes=2)
    for run in read:
        run.step = "ours"
    read[2].status, read[2].ended_at = "exited", now
    with engine.begin() as conn:
        written = _store_states(conn, read, now)
    assert [r.id for r in written] == [read[0].id, read[2].id]
    by_id = {r["id"]: r for r in runs(engine)}
    assert [by_id[r.id]["step"] for r in read] == ["ours", "theirs", "ours"]
    assert by_id[read[2].id]["status"] == "exited" and by_id[read[2].id]["active_key"] is None
    assert by_id[read[1].id]["updated_at"] == other
