"""ESP sync: first syncs across 5 segments to the Mailchimp, Klaviyo and
HubSpot fakes with injected faults against the minimum time each API's limit
allows, and no-change re-runs (issue 15's targets), on SQLite.

Cases:
- the same requests (one member PUT per person, one tag POST per membership)
  sent by a bare httpx client at Mailchimp's 10 connections, no faults
  (baseline); the minimum the limit allows is requests x latency / 10, with
  the fake holding each request's connection for ``latency`` seconds as a
  real API's answer time would;
- ``run_sync`` of the same store with 10% injected faults (429, 500, dropped
  connections, answers lost after the effect), run again until nothing is
  left to retry; verified: the fake's state equals segflow's (``verify_sync``)
  and no membership or member is missing or doubled (target within 1.2x of
  the minimum);
- a no-change re-run over a store of M synced people (their sync state written
  directly, as a completed sync leaves it): sends nothing (target under 5 s);
- Klaviyo and HubSpot: a store of M people (the same one for both, each target
  with its own sync state), whose segment entries happen after each target's
  cursor, so the first sync sends every person, membership and entry event;
  ``run_sync`` with 10% injected faults, again until nothing is left to retry,
  against the minimum the API's documented windows allow for the calls the
  sync needs (computed: the earliest each call can go, call after call, in
  the windows the fake counts in; target within 1.2x); verified against the
  fake's state (people, list members, one event per entry, none doubled) and
  by ``verify_sync``; then a no-change re-run of the same target (under 5 s).

``SEGFLOW_BENCH_SYNC=klaviyo`` (or ``hubspot``, ``hubspot:starter``,
``mailchimp``; comma-separated) runs only those cases, to iterate on one
connector; with it, pass ``--no-write``: the README shows full runs only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import Result

TITLE = "Sync to the Mailchimp, Klaviyo and HubSpot fakes: faults, the limits' minimum, no-change"
SEGMENTS = 5
LATENCY = 0.05
CONNECTIONS = 10
FAULTS = 0.10
_facts: dict[str, Any] = {}


def _sizes(quick: bool) -> tuple[int, int]:
    first, idle = (400, 10_000) if quick else (6_000, 100_000)
    scale = common.SCALE or 1.0
    return max(100, int(first * scale)), max(1000, int(idle * scale))


def schedule(calls: int, windows: Sequence[tuple[int, float]]) -> float:
    """When the last of ``calls`` can go at the earliest, the first at 0, with at
    most n calls in any ``seconds`` for each (n, seconds): the minimum time the
    windows allow (answers taking no time)."""
    if calls <= 0:
        return 0.0
    starts: list[float] = []
    for k in range(calls):
        t = 0.0
        for n, seconds in windows:
            if k >= n:
                t = max(t, starts[k - n] + seconds)
        starts.append(t)
    return starts[-1]


def _segments_yaml() -> str:
    # Person i is in segment i % 5 and, for a third of them, also in (i // 3) % 5.
    out = []
    for j in range(SEGMENTS):
        out.append(
            f"- name: seg{j}\n  description: bucket {j}\n"
            f"  rule: {{any: [{{attribute: a, op: '==', value: {j}}},"
            f" {{attribute: b, op: '==', value: {j}}}]}}\n"
        )
    return "".join(out)


def _store(
    url: str, n: int, folder: Path, as_of: datetime, cursors: Sequence[Any] = ()
) -> list[int]:
    import sqlalchemy as sa

    from core.consents import set_consents
    from core.db import open_db
    from core.db.tables import PROFILES
    from core.ingestion import ingest
    from core.plugins import condition_kinds
    from core.segments.store import load_segment_files, run_segments

    engine = open_db(url)
    events = []
    for i in range(n):
        traits = {"email": f"person{i}@shop.example", "a": i % SEGMENTS, "first_name": f"P{i}"}
        if i % 3 == 0:
            traits["b"] = (i // 3 + 1) % SEGMENTS
        events.append({"type": "identify", "user_id": f"u{i}", "traits": traits,
                       "message_id": hashlib.md5(f"id{i}".encode()).hexdigest()})  # fmt: skip
    ingest(engine, events, bulk=n >= 50_000)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(PROFILES.c.id).order_by(PROFILES.c.id)).scalars())
    set_consents(engine, ids, "email", True, "bench")
    from core.sync.engine import _save_cursor

    for target in cursors:
        # As if the target had synced before the segments were run: their entries
        # are changes since its cursor, sent as events.
        _save_cursor(engine, target, 0)
    (folder / "segments").mkdir(exist_ok=True)
    (folder / "segments" / "segs.yaml").write_text(_segments_yaml())
    kinds = condition_kinds()
    run_segments(engine, as_of, kinds=kinds,
                 definitions=load_segment_files(folder / "segments", kinds))  # fmt: skip
    engine.dispose()
    return ids


def _target(base_url: str):
    from core.types import SyncTarget
    from plugins.esp.fakes.mailchimp import API_KEY, DEFAULT_LIST_ID

    return SyncTarget(
        name="mailchimp_bench",
        kind="mailchimp",
        base_url=base_url,
        api_key=API_KEY,
        segments=tuple(f"seg{j}" for j in range(SEGMENTS)),
        membership="tag",
        properties={"FNAME": "attributes.first_name"},
        options={"audience_id": DEFAULT_LIST_ID},
    )


async def _bare(base_url: str, plan: Any) -> int:
    """The plan's requests over a bare httpx client at 10 connections."""
    from plugins.esp.fakes.mailchimp import API_KEY, DEFAULT_LIST_ID
    from plugins.esp.mailchimp import auth_headers
    from plugins.esp.mailchimp import subscriber_hash as member_hash

    members = f"/3.0/lists/{DEFAULT_LIST_ID}/members"
    requests: list[tuple[str, str, dict]] = []
    for pid in plan.upserts:
        p = plan.wanted[pid].person
        requests.append(("PUT", f"{members}/{member_hash(p.email)}", {
            "email_address": p.email, "status_if_new": "subscribed", "status": "subscribed",
            "merge_fields": {"FNAME": str(p.properties.get("FNAME"))}}))  # fmt: skip
    for segment, pids in plan.adds.items():
        for pid in pids:
            email = plan.wanted[pid].person.email
            requests.append(("POST", f"{members}/{member_hash(email)}/tags",
                             {"tags": [{"name": segment, "status": "active"}]}))  # fmt: skip
    headers = auth_headers(_target(base_url)) | {"X-Key": API_KEY[:4]}
    slots = asyncio.Semaphore(CONNECTIONS)
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def one(method: str, path: str, body: dict) -> None:
            async with slots:
                r = await client.request(method, path, json=body)
                r.raise_for_status()

        # Members first, as the sync does: tags need the member.
        upserts = [r for r in requests if r[0] == "PUT"]
        await asyncio.gather(*(one(*r) for r in upserts))
        await asyncio.gather(*(one(*r) for r in requests if r[0] == "POST"))
    return len(requests)


def _chosen() -> tuple[bool, tuple[tuple[str, str], ...]]:
    """Whether the Mailchimp cases run, and the Klaviyo and HubSpot ones that do
    (``SEGFLOW_BENCH_SYNC``; unset: all)."""
    import os

    wanted = [w.strip() for w in os.environ.get("SEGFLOW_BENCH_SYNC", "").split(",") if w.strip()]
    if not wanted:
        return True, ESPS
    esps = tuple((k, t) for k, t in ESPS if k in wanted or f"{k}:{t}" in wanted)
    return "mailchimp" in wanted, esps


def run(quick: bool) -> list[Result]:
    mailchimp, esps = _chosen()
    results = _mailchimp(quick) if mailchimp else []
    first, idle = _sizes(quick)
    _facts.update(idle=idle)
    as_of = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-sync-") as tmp:
        folder = Path(tmp)
        # One store of `idle` people for the Klaviyo and HubSpot syncs and the
        # Mailchimp no-change run, each target with its own state.
        url_d = f"sqlite:///{folder}/s.db"
        started = time.perf_counter()
        targets = [_esp_target(kind, tier, "http://127.0.0.1") for kind, tier in ESPS]
        _store(url_d, idle, folder, as_of, cursors=targets)
        _facts["store_s"] = time.perf_counter() - started
        for kind, tier in esps:
            results.extend(_esp_rows(kind, tier, url_d))
        if mailchimp:
            from core.plugins import esp_connectors

            results.append(_no_change(url_d, idle, esp_connectors()["mailchimp"]))
    return results


def _mailchimp(quick: bool) -> list[Result]:
    from core.db import open_db
    from core.plugins import esp_connectors
    from core.sync import plan_sync, run_sync, verify_sync
    from plugins.esp.fakes.mailchimp import DEFAULT_LIST_ID, MailchimpApi
    from plugins.esp.fakes.server import Faults, running

    first, _idle = _sizes(quick)
    _facts.update(first=first)
    connector = esp_connectors()["mailchimp"]
    as_of = datetime.now(UTC).replace(microsecond=0)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="segflow-bench-sync-") as tmp:
        folder = Path(tmp)
        # Baseline: the same requests, bare, no faults, on a twin store.
        (folder / "a").mkdir()
        (folder / "b").mkdir()
        url_a, url_b = f"sqlite:///{folder}/a/s.db", f"sqlite:///{folder}/b/s.db"
        _store(url_a, first, folder / "a", as_of)
        _store(url_b, first, folder / "b", as_of)
        bare_api = MailchimpApi(latency=LATENCY, strict_merge_fields=False)
        with running(bare_api) as base:
            engine = open_db(url_a)
            with engine.connect() as conn:
                plan = plan_sync(conn, _target(base))
            start = time.perf_counter()
            n_requests = asyncio.run(_bare(base, plan))
            bare_s = time.perf_counter() - start
        minimum = n_requests * LATENCY / CONNECTIONS
        _facts.update(requests=n_requests, memberships=sum(map(len, plan.adds.values())))
        base_row = Result(f"bare httpx, the same {n_requests:,} requests, 10 connections, "
                          "no faults (baseline)", first, bare_s, ratio=1.0)  # fmt: skip
        base_row.notes.append(
            f"minimum the limit allows: {n_requests:,} x {LATENCY} s / {CONNECTIONS} = "
            f"{minimum:.1f} s; bare: {bare_s / minimum:.2f}x it"
        )
        results.append(base_row)

        faults = Faults(rate=FAULTS, seed=11, kinds=("429", "500", "drop", "drop_after"))
        # A batch's operations take as long as single calls at the 10 connections:
        # /batches must not look faster than the limit allows.
        api = MailchimpApi(faults, latency=LATENCY, strict_merge_fields=False,
                           batch_op_seconds=LATENCY / CONNECTIONS)  # fmt: skip
        with running(api) as base:
            engine = open_db(url_b)
            target = _target(base)
            start = time.perf_counter()
            runs = [run_sync(engine, target, connector)]
            while runs[-1].retry or runs[-1].failed:
                if len(runs) >= 10:
                    break
                runs.append(run_sync(engine, target, connector))
            sync_s = time.perf_counter() - start
            api.faults = Faults()
            report = verify_sync(engine, target, connector)
        row = Result(
            f"run_sync with {FAULTS:.0%} injected faults, until nothing is left to retry",
            first,
            sync_s,
            ratio=sync_s / minimum,
            target="<= 1.2x the minimum the limit allows",
        )
        row.passed = sync_s <= 1.2 * minimum
        met = sum(1 for _m, _p, what in api.log if isinstance(what, str))
        row.notes.append(
            f"ratio is to the minimum ({minimum:.1f} s); to the bare client without faults: "
            f"{sync_s / bare_s:.2f}x; {len(runs)} run(s); {sum(r.requests for r in runs):,} "
            f"requests, {met:,} met a fault; {sum(r.throttled for r in runs):,} 429s"
        )
        members = api.members(DEFAULT_LIST_ID)
        tags = sum(len(m["tags"]) for m in members.values())
        if not report.ok or len(members) != first or tags != _facts["memberships"]:
            row.fail(f"remote state differs: {len(report.differences)} differences, "
                     f"{len(members)} members, {tags} tags")  # fmt: skip
        else:
            row.notes.append(f"verified: verify_sync found 0 differences; {len(members):,} "
                             f"members, {tags:,} tags, none missing or doubled")  # fmt: skip
        results.append(row)
    return results


# -- Klaviyo and HubSpot ------------------------------------------------------------------

# (connector, the fake's tier)
ESPS = (("klaviyo", "default"), ("hubspot", "starter"), ("hubspot", "professional"))
LIST_PREFIX = "segflow: "


def _esp_target(kind: str, tier: str, base_url: str):
    from core.types import SyncTarget
    from plugins.esp.fakes.hubspot import ACCESS_TOKEN

    return SyncTarget(
        name=f"{kind}_{tier}_bench",
        kind=kind,
        base_url=base_url,
        api_key="pk_test" if kind == "klaviyo" else ACCESS_TOKEN,
        segments=tuple(f"seg{j}" for j in range(SEGMENTS)),
        membership="list",
        properties={"first_name": "attributes.first_name"},
        events=True,
        options={"list_prefix": LIST_PREFIX},
    )


def _esp_fake(kind: str, tier: str, faults: Any) -> Any:
    from plugins.esp.fakes.hubspot import HubSpotApi
    from plugins.esp.fakes.klaviyo import KlaviyoApi

    return KlaviyoApi(faults) if kind == "klaviyo" else HubSpotApi(faults, tier=tier)


def _calls(kind: str, tier: str, plan: Any) -> dict[str, tuple[int, list[tuple[int, float]]]]:
    """The calls a first sync of ``plan`` needs at the API's documented batch
    sizes, by the group of endpoints the API counts them in, each with the
    group's windows: group -> (calls, [(requests, seconds), ...])."""
    from plugins.esp import hubspot, klaviyo
    from plugins.esp.fakes import hubspot as fake_hubspot
    from plugins.esp.fakes import klaviyo as fake_klaviyo

    people = [plan.wanted[pid].person for pid in plan.upserts]
    adds = [len(pids) for pids in plan.adds.values()]
    segments = len(plan.adds)
    if kind == "klaviyo":
        subscribed = sum(1 for p in people if p.subscribed is True)
        with_events = len({ev.person.email for _cid, ev in plan.events})
        # An import job adds its profiles to one list: the people joining a segment
        # are imported in its list's jobs, those joining none in jobs of their own.
        upserting = set(plan.upserts)
        joins = [sum(1 for pid in pids if pid in upserting) for pids in plan.adds.values()]
        joining = {pid for pids in plan.adds.values() for pid in pids}
        alone = sum(1 for pid in plan.upserts if pid not in joining)
        per_job = fake_klaviyo.MAX_IMPORT_PROFILES
        imports = math.ceil(alone / per_job) + sum(math.ceil(j / per_job) for j in joins)
        # A job is polled until complete: the fake answers "processing" job_polls times.
        polls = 1 + 1
        counts = {
            "lists": 1 + segments,
            "jobs": imports * (1 + polls)
            + math.ceil(subscribed / fake_klaviyo.MAX_SUBSCRIPTION_PROFILES),
            "event-jobs": math.ceil(with_events / klaviyo.EVENT_PROFILES),
        }
        limits = fake_klaviyo.LIMITS
        return {g: (n, [(limits[g][0], 1.0), (limits[g][1], 60.0)]) for g, n in counts.items()}
    opening = 2 + 1 + 2 * segments  # account, properties, the consent property, lists
    calls = (
        opening
        + math.ceil(len(people) / fake_hubspot.MAX_BATCH)
        + sum(math.ceil(a / fake_hubspot.MAX_MEMBERSHIP_IDS) for a in adds)
        + math.ceil(len(plan.events) / hubspot.EVENT_BATCH)
    )
    window = (fake_hubspot.TEN_SECONDLY[tier], fake_hubspot.INTERVAL_SECONDS)
    return {"all": (calls, [window])}


def _unbound(kind: str, api: Any, connector: Any) -> Any:
    """The fake and a copy of the connector without rate limits, to read the
    remote state back untimed (a Klaviyo read of every profile at its minute
    window takes as long as the sync)."""
    if kind == "klaviyo":
        api.limits = {g: (b * 1000, st * 1000) for g, (b, st) in api.limits.items()}
    else:
        api.max_requests = 10**7
    limits = connector.sync.limits
    free = {g: ((10**7, 1.0),) for g in limits.windows}
    sync = dataclasses.replace(connector.sync, limits=dataclasses.replace(limits, windows=free))
    return dataclasses.replace(connector, sync=sync)


def _esp_rows(kind: str, tier: str, url: str) -> list[Result]:
    import os

    import sqlalchemy as sa

    from core.db import open_db
    from core.db.tables import CHANGES
    from core.db.tables import SEGMENTS as SEGMENT_ROWS
    from core.plugins import esp_connectors
    from core.sync import plan_sync, run_sync, verify_sync
    from plugins.esp.fakes.server import Faults, Windows, running

    connector = esp_connectors()[kind]
    name = "Klaviyo" if kind == "klaviyo" else f"HubSpot ({tier})"
    engine = open_db(url)
    faults = Faults(rate=FAULTS, seed=11, kinds=("429", "500", "drop", "drop_after"))
    api = _esp_fake(kind, tier, faults)
    load = os.getloadavg()[0]
    with running(api) as base:
        target = _esp_target(kind, tier, base)
        with engine.connect() as conn:
            plan = plan_sync(conn, target)
            synced = sa.select(SEGMENT_ROWS.c.id).where(SEGMENT_ROWS.c.name.in_(target.segments))
            entered = set(conn.execute(
                sa.select(CHANGES.c.id)
                .where(CHANGES.c.segment_id.in_(synced), CHANGES.c.change == "entered")
            ).scalars())  # fmt: skip
        calls = _calls(kind, tier, plan)
        minimum = max(schedule(k, w) for k, w in calls.values())
        memberships = sum(map(len, plan.adds.values()))
        base_row = Result(
            f"{name}: the minimum the limits allow for the first sync's calls "
            "(computed, not run; baseline)", len(plan.upserts), minimum, ratio=1.0,
        )  # fmt: skip
        base_row.notes.append(
            "calls by group (earliest finish in its windows): "
            + "; ".join(f"{g} {k:,} ({schedule(k, w):.1f} s)" for g, (k, w) in calls.items())
            + f"; the busiest group bounds the run: {minimum:.1f} s"
        )
        with common.Quiet():
            start = time.perf_counter()
            runs = [run_sync(engine, target, connector)]
            while (runs[-1].retry or runs[-1].failed) and len(runs) < 10:
                runs.append(run_sync(engine, target, connector))
            sync_s = time.perf_counter() - start
        row = Result(
            f"{name}: run_sync with {FAULTS:.0%} injected faults, until nothing is left to retry",
            len(plan.upserts),
            sync_s,
            # Small (--quick) runs fit in one window: no minimum to compare with.
            ratio=sync_s / minimum if minimum else None,
            target="<= 1.2x the minimum the limit allows",
        )
        row.passed = sync_s <= 1.2 * minimum if minimum else None
        met = sum(1 for _m, _p, what in api.log if isinstance(what, str))
        # What the fake counted in its windows: the answered requests but its 429s,
        # and those dropped after their effect.
        counted: dict[str, int] = {}
        for method, path, what in api.log:
            if what == "drop_after" or (isinstance(what, int) and what != 429):
                group = connector.sync.rate_group(method, path) if kind == "klaviyo" else "all"
                counted[group] = counted.get(group, 0) + 1
        sent_min = max(schedule(k, calls[g][1]) for g, k in counted.items() if g in calls)
        row.notes.append(
            f"{len(runs)} run(s); {sum(r.requests for r in runs):,} requests, {met:,} met a "
            f"fault; {sum(r.throttled for r in runs):,} 429s; machine load average at the "
            f"start {load:.2f}"
        )
        if minimum and sent_min:
            row.notes.append(
                "the requests the fake counted, by group: "
                + ", ".join(f"{g} {k:,}" for g, k in sorted(counted.items()))
                + f"; at the earliest the windows allow they take {sent_min:.1f} s "
                f"({sync_s / max(sent_min, 1e-9):.2f}x that): the resends the faults need cost "
                f"{sent_min / max(minimum, 1e-9):.2f}x the minimum"
            )
        api.faults = Faults()
        documented = dict(api.limits) if kind == "klaviyo" else api.max_requests
        report = verify_sync(engine, target, _unbound(kind, api, connector))
        snap = api.snapshot(LIST_PREFIX)
        people = snap["people"]
        wanted = {w.person.email: sorted(w.segments) for w in plan.wanted.values()}
        wrong = sum(1 for e, segs in wanted.items()
                    if e not in people or people[e]["segments"] != segs
                    or people[e]["subscribed"] is not True)  # fmt: skip
        ids = [uid for _email, _name, uid in snap["events"]]
        sent_ids = {f"segflow-{target.name}-{cid}" for cid in entered}
        doubled = len(ids) - len(set(ids))
        lost = len(sent_ids - set(ids))
        extra = len(set(ids) - sent_ids) + len(set(people) - set(wanted))
        held = sum(len(pids) for pids in _fake_lists(kind, api).values())
        if not report.ok or wrong or doubled or lost or extra or held != memberships:
            row.fail(f"remote state differs: verify_sync {len(report.differences)} differences; "
                     f"{wrong} people wrong, {lost} events lost, {doubled} doubled, {extra} "
                     f"unexpected, {held:,} list members for {memberships:,}")  # fmt: skip
        else:
            row.notes.append(
                f"verified: verify_sync 0 differences; the fake holds {len(people):,} people "
                f"with their segments and consent, {held:,} list members, {len(ids):,} events "
                f"for {len(sent_ids):,} segment entries: 0 lost, 0 doubled"
            )
        # The no-change re-run meets the documented limits again, without faults,
        # in windows as empty as a run a quarter of an hour later finds them.
        if kind == "klaviyo":
            api.limits = documented
        else:
            api.max_requests = documented
        api.windows = Windows()
        before = len(api.log)
        # The fake's state lives in this process; frozen, the collector leaves it alone.
        with common.Quiet():
            start = time.perf_counter()
            again = run_sync(engine, target, connector)
            idle_s = time.perf_counter() - start
    idle = Result(f"{name}: no-change re-run over the {len(plan.wanted):,} synced people",
                  len(plan.wanted), idle_s, target="< 5 s")  # fmt: skip
    idle.passed = idle_s < 5
    writes = sum(1 for m, _p, _w in api.log[before:] if m != "GET")
    if again.sent or writes:
        idle.fail(f"sent {again.sent} records, {writes} writes")
    else:
        idle.notes.append(f"verified: nothing sent; {again.unchanged:,} unchanged; "
                          f"{len(api.log) - before} requests (opening the session)")  # fmt: skip
    _facts[f"{kind}_{tier}"] = {"people": len(plan.upserts), "memberships": memberships,
                    "events": len(plan.events), "calls": calls, "minimum": minimum}  # fmt: skip
    engine.dispose()
    return [base_row, row, idle]


def _fake_lists(kind: str, api: Any) -> dict[str, list[Any]]:
    """The synced lists' members as the fake holds them, by list name."""
    with api.lock:
        if kind == "klaviyo":
            return {v["name"]: list(v["members"]) for v in api.lists.values()
                    if v["name"].startswith(LIST_PREFIX)}  # fmt: skip
        return {x.name: list(x.members) for x in api.lists.values()
                if x.name.startswith(LIST_PREFIX)}  # fmt: skip


def _no_change(url: str, n: int, connector: Any) -> Result:
    import sqlalchemy as sa

    from core.db import open_db
    from core.db.tables import SYNC_STATES
    from core.sync import plan_sync, run_sync
    from core.sync.engine import _save_cursor
    from plugins.esp.fakes.mailchimp import MailchimpApi
    from plugins.esp.fakes.server import running

    engine = open_db(url)
    api = MailchimpApi(latency=LATENCY, strict_merge_fields=False)
    with running(api) as base:
        target = _target(base)
        with engine.connect() as conn:
            plan = plan_sync(conn, target)
        now = datetime.now(UTC)
        rows = [{"connector": target.name, "profile_id": pid, "email": w.person.email,
                 "hash": w.hash, "segments": sorted(w.segments), "subscribed": True,
                 "remote_id": None, "status": "ok", "attempts": 0, "updated_at": now}
                for pid, w in plan.wanted.items()]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(sa.insert(SYNC_STATES), rows)
        _save_cursor(engine, target, plan.cursor)
        before = len(api.log)
        with common.Quiet():
            start = time.perf_counter()
            report = run_sync(engine, target, connector)
            seconds = time.perf_counter() - start
    row = Result(f"no-change re-run over {n:,} synced people", n, seconds, target="< 5 s")
    row.passed = seconds < 5
    writes = sum(1 for m, _p, _w in api.log[before:] if m != "GET")
    if report.sent or writes:
        row.fail(f"sent {report.sent} records, {writes} writes")
    else:
        row.notes.append(f"verified: nothing sent; {report.unchanged:,} unchanged; "
                         f"{len(api.log) - before} requests (reading merge fields)")  # fmt: skip
    return row


def describe(quick: bool) -> str:
    s = _facts
    return "\n".join([
        f"- store (SQLite): {s.get('first', 0):,} identified people with email consent, in "
        f"{SEGMENTS} attribute segments (each in one, a third in two: "
        f"{s.get('memberships', 0):,} memberships); first sync = {s.get('requests', 0):,} "
        "requests (a member PUT per person, a tag POST per membership)",
        f"- the Mailchimp fake (`plugins/esp/fakes/mailchimp.py`) on 127.0.0.1 holds each "
        f"request's connection {LATENCY} s (the API's own time) and allows "
        f"{CONNECTIONS} at once, Mailchimp's documented limit",
        f"- faults: {FAULTS:.0%} of requests, seeded: 429, 500, connection dropped before "
        "or after the effect",
        f"- no-change: {s.get('idle', 0):,} people whose sync state is written directly as a "
        "completed sync leaves it, then `run_sync`",
        "- the connector sends calls of more than 300 records through Mailchimp's `/batches`, "
        "which the 10-connection limit does not bind; the fake runs each batch operation in "
        f"{LATENCY / CONNECTIONS} s ({LATENCY} s / {CONNECTIONS}, as fast as single calls at the "
        "limit), batches side by side: how fast real Mailchimp works through batches is not "
        "known here, so the run_sync row is a figure for this fake",
        f"- Klaviyo and HubSpot: one store of {s.get('idle', 0):,} people (built in "
        f"{s.get('store_s', 0):.0f} s, not timed), the same segments; each target's event "
        "cursor is set before the segments run, so its first sync sends every person, "
        "membership and segment entry (one event each); each target keeps its own sync state",
        "- Klaviyo fake (`plugins/esp/fakes/klaviyo.py`): 10 requests a second and 150 a "
        "minute per endpoint group (profiles, lists, jobs, bulk event jobs: Klaviyo's M tier), "
        "sliding windows; HubSpot fake (`plugins/esp/fakes/hubspot.py`), starter tier: 100 "
        "requests in any 10 s",
        "- minimum: the calls the first sync needs at the documented batch sizes (Klaviyo: "
        "10,000 profiles an import job, which adds them to one list, so each segment's "
        "joiners in its own jobs, polled twice, 1,000 a subscription job, 1,000 profiles a "
        "bulk event job, no profile-id look-up or member call; HubSpot: "
        "100 contacts an upsert, 100,000 ids a list call, 500 events a batch, plus opening the "
        "session), each scheduled at the earliest its windows allow; the groups count apart, "
        "so the busiest one bounds the run (notes: calls and finish per group)",
        "- verification is untimed, with the fakes' and the connector's rate limits lifted "
        "(reading 100,000 Klaviyo profiles back at 150 pages a minute takes as long as the "
        "sync); the no-change re-runs meet the documented limits again, with the fake's "
        "windows emptied, as a run a quarter of an hour later finds them",
    ])  # fmt: skip
