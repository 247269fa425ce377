"""``mailchimp``: sync to the Mailchimp Marketing API v3 (one audience, segments as tags).

Where requests go: ``base_url`` is the server root and the connector adds the
``/3.0`` prefix (a ``base_url`` that already ends in ``/3.0`` is taken as it
is). The default, ``https://api.mailchimp.com``, stands for the key's data
centre: a key ``...-us21`` is sent to ``https://us21.api.mailchimp.com/3.0``.
A configured ``base_url`` (the fake, a proxy) is used as given.

Which audience: ``options.audience_id``; without it, the account's only
audience (more than one is a usage error).

- upsert: ``PUT /lists/{id}/members/{md5(lower(email))}`` with the mapped
  properties as merge fields (missing merge fields are created first, as text:
  Mailchimp silently drops unknown ones), ``status_if_new`` ``subscribed``
  only with consent (else ``transactional``), ``status`` ``subscribed`` with
  consent and ``unsubscribed`` on a withdrawal; never subscribed without consent;
- membership: tags named as the segments, ``POST .../tags`` active / inactive;
- events: ``POST .../events`` named ``entered_segment_NAME`` /
  ``exited_segment_NAME`` (Mailchimp allows letters, digits, ``_`` and ``-``),
  with the ``unique_id`` among the properties. Mailchimp has no idempotency
  key, so the member's events are read back first and those already there are
  skipped; a POST whose connection dropped is checked the same way before it
  is sent again;
- calls with more than ``BATCH_ABOVE`` records go through ``/batches``
  (operation_id = the record's index, polled to finished, the tar.gz results
  mapped back per record); smaller ones are single calls in parallel;
- delete (erasure): ``POST .../actions/delete-permanent`` (a member already
  gone counts as deleted);
- read (verify): the members, paged by ``count``/``offset``, with their status
  and tags.

Limits: Mailchimp has no request-rate limit and no rate headers; it allows 10
simultaneous connections per key and answers 429 past them (the sync client
retries those with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import (
    EspConnector,
    RecordResult,
    RemotePerson,
    SyncApi,
    SyncEvent,
    SyncFailure,
    SyncLimits,
    SyncPerson,
    SyncTarget,
    TransportFailure,
    UsageError,
    client_context,
    hookimpl,
)

if TYPE_CHECKING:
    import httpx

DEFAULT_BASE_URL = "https://api.mailchimp.com"
PREFIX = "/3.0"
# Above this many records a call goes through /batches: one request and a poll
# instead of one request a record.
BATCH_ABOVE = 300
PAGE = 1000  # Mailchimp's largest page
# Leaves room under the 10 simultaneous connections for another client of the key.
LIMITS = SyncLimits(
    profiles_per_call=500,
    members_per_call=500,
    events_per_call=500,
    requests_per_second=50.0,
    burst=20,
    concurrency=8,
)
ALIASES = {"first_name": "FNAME", "last_name": "LNAME", "phone": "PHONE", "birthday": "BIRTHDAY"}


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()  # noqa: S324 - Mailchimp's id


def merge_tag(name: str) -> str:
    """The merge field a property goes to: Mailchimp's for the usual names, else
    the name upper-cased (letters, digits and ``_``, at most 10)."""
    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    return re.sub(r"[^A-Z0-9_]", "_", name.upper())[:10] or "FIELD"


def event_name(name: str) -> str:
    """``Entered segment gold`` -> ``entered_segment_gold`` (2-30 of [A-Za-z0-9_-])."""
    return (re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_") or "segflow_event")[:30]


def base_of(target: SyncTarget) -> str:
    """The URL the API's paths start from (see the module's docstring)."""
    base = target.base_url.rstrip("/")
    if base == DEFAULT_BASE_URL:
        dc = target.api_key.rpartition("-")[2]
        if not dc or dc == target.api_key:
            raise UsageError(
                f"connector {target.name!r}: the Mailchimp key has no data-centre suffix (-usN)"
            )
        base = f"https://{dc}.api.mailchimp.com"
    return base if base.endswith(PREFIX) else base + PREFIX


def auth_headers(target: SyncTarget) -> dict[str, str]:
    return {"Authorization": f"apikey {target.api_key}"}


@dataclass
class Session:
    target: SyncTarget
    client: Any
    base: str
    audience: str
    merge_tags: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    poll: float = 0.05

    def url(self, path: str) -> str:
        return self.base + path

    def member(self, email: str) -> str:
        return f"/lists/{self.audience}/members/{subscriber_hash(email)}"


def _reason(response: httpx.Response) -> str:
    """A refusal in a few words: the title and the fields it names."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    errors = body.get("errors") or []
    named = "; ".join(
        f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict)
    )
    return f"{body.get('title') or response.status_code}: {named or body.get('detail', '')}"[:300]


def _answer(status: int, body: str | bytes | None, ok_id: str | None) -> RecordResult:
    if status < 300:
        return RecordResult.ok(ok_id)
    import httpx

    fake = httpx.Response(status, content=body or b"")
    if status == 429 or status >= 500:
        return RecordResult("retry", f"HTTP {status}")
    return RecordResult("failed", _reason(fake))


async def _json(session: Session, method: str, path: str, **kwargs: Any) -> Any:
    response = await session.client.request(method, session.url(path), **kwargs)
    if response.status_code >= 300:
        raise SyncFailure(f"{method} {path}: {_reason(response)}", response.status_code)
    return response.json() if response.content else None


@contextlib.asynccontextmanager
async def open_session(target: SyncTarget, client: Any) -> AsyncIterator[Session]:
    session = Session(target, client, base_of(target), str(target.options.get("audience_id", "")))
    if not session.audience:
        found = await _json(session, "GET", "/lists", params={"count": 2, "fields": "lists.id"})
        ids = [a["id"] for a in found.get("lists", [])]
        if len(ids) != 1:
            raise UsageError(
                f"connector {target.name!r}: set options.audience_id "
                f"(the account has {len(ids)} audiences)"
            )
        session.audience = ids[0]
    yield session


async def _ensure_merge_fields(session: Session, tags: set[str]) -> None:
    async with session.lock:
        if not session.merge_tags:
            offset = 0
            while True:
                page = await _json(
                    session, "GET", f"/lists/{session.audience}/merge-fields",
                    params={"count": PAGE, "offset": offset},
                )  # fmt: skip
                session.merge_tags |= {f["tag"] for f in page["merge_fields"]}
                offset += PAGE
                if offset >= page.get("total_items", 0):
                    break
        for tag in sorted(tags - session.merge_tags):
            response = await session.client.request(
                "POST", session.url(f"/lists/{session.audience}/merge-fields"),
                json={"tag": tag, "name": tag.title(), "type": "text"}, idempotent=True,
            )  # fmt: skip
            # A second create of the same tag answers 400 "already exists": it is there.
            if response.status_code >= 300 and "already exists" not in response.text:
                raise SyncFailure(f"creating merge field {tag}: {_reason(response)}")
            session.merge_tags.add(tag)


def _merge_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return value
    return json.dumps(value, default=str)


def _member_body(person: SyncPerson) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email_address": person.email,
        "status_if_new": "subscribed" if person.subscribed is True else "transactional",
        "merge_fields": {merge_tag(k): _merge_value(v) for k, v in person.properties.items()},
    }
    if person.subscribed is True:
        body["status"] = "subscribed"
    elif person.subscribed is False:
        body["status"] = "unsubscribed"
    return body


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    body: dict[str, Any] | None
    ok_id: str | None = None


Answer = tuple[RecordResult, Any]  # and the answer's JSON body, when it had one


def _parsed(body: str | bytes | None) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


async def _single(session: Session, op: Op, idempotent: bool) -> Answer:
    try:
        response = await session.client.request(
            op.method, session.url(op.path), json=op.body, idempotent=idempotent
        )
    except SyncFailure as exc:  # TransportFailure included: nothing here is lost by a resend
        return RecordResult("retry", str(exc)), None
    return _answer(response.status_code, response.content, op.ok_id), _parsed(response.content)


async def _run(session: Session, ops: Sequence[Op], *, idempotent: bool) -> list[Answer]:
    """Each op as a single call (in parallel), or all through /batches when
    there are more than BATCH_ABOVE."""
    if len(ops) <= BATCH_ABOVE:
        return list(await asyncio.gather(*(_single(session, op, idempotent) for op in ops)))
    return await _batch(session, ops, idempotent=idempotent)


async def _batch(session: Session, ops: Sequence[Op], *, idempotent: bool) -> list[Answer]:
    operations = [
        {"method": op.method, "path": PREFIX + op.path, "operation_id": str(i)}
        | ({"body": json.dumps(op.body)} if op.body is not None else {})
        for i, op in enumerate(ops)
    ]
    started = await _json(
        session, "POST", "/batches", json={"operations": operations}, idempotent=idempotent
    )
    wait = session.poll
    while True:
        state = await _json(session, "GET", f"/batches/{started['id']}")
        if state["status"] == "finished":
            break
        await asyncio.sleep(wait)
        wait = min(wait * 2, 5.0)
    results = await _batch_results(state["response_body_url"])
    with contextlib.suppress(SyncFailure):
        await session.client.request("DELETE", session.url(f"/batches/{started['id']}"))
    out = []
    for i, op in enumerate(ops):
        found = results.get(str(i))
        if found is None:
            out.append((RecordResult("retry", "not in the batch results"), None))
        else:
            body = found.get("response")
            out.append((_answer(int(found["status_code"]), body, op.ok_id), _parsed(body)))
    return out


async def _batch_results(url: str) -> dict[str, dict[str, Any]]:
    import httpx

    # A pre-signed storage link: it must not carry the API key (and may refuse it).
    async with httpx.AsyncClient(timeout=120, verify=client_context()) as plain:
        response = await plain.get(url)
    if response.status_code != 200:
        raise SyncFailure(f"batch results: HTTP {response.status_code}", response.status_code)
    found: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            extracted = tar.extractfile(member)
            if extracted is None:
                continue
            for result in json.loads(extracted.read() or b"[]"):
                found[str(result.get("operation_id"))] = result
    return found


async def upsert(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    tags = {merge_tag(k) for p in people for k in p.properties}
    if tags:
        await _ensure_merge_fields(session, tags)
    ops = [
        Op("PUT", session.member(p.email), _member_body(p), subscriber_hash(p.email))
        for p in people
    ]
    answers = await _run(session, ops, idempotent=True)
    # A person segflow holds no confirmed state for (new, or the state was
    # lost) may already carry synced tags there; the engine adds the ones
    # wanted right after, so the others must go or they would stay for good.
    synced = set(session.target.segments)
    stale = [
        (person, sorted(synced & {t["name"] for t in (body or {}).get("tags", [])}))
        for person, (result, body) in zip(people, answers, strict=True)
        if person.remote_id is None and result.status == "ok" and isinstance(body, dict)
    ]
    stale = [(p, tags) for p, tags in stale if tags]
    cleared = await _run(
        session,
        [
            Op("POST", session.member(p.email) + "/tags",
               {"tags": [{"name": t, "status": "inactive"} for t in tags]})
            for p, tags in stale
        ],
        idempotent=True,
    )  # fmt: skip
    failed = {
        p.email: r for (p, _), (r, _b) in zip(stale, cleared, strict=True) if r.status != "ok"
    }
    return [
        failed.get(p.email, result) if result.status == "ok" else result
        for p, (result, _b) in zip(people, answers, strict=True)
    ]


async def _tags(session: Session, segment: str, people: Sequence[SyncPerson], status: str):
    ops = [
        Op("POST", session.member(p.email) + "/tags",
           {"tags": [{"name": segment, "status": status}]}, subscriber_hash(p.email))
        for p in people
    ]  # fmt: skip
    # Setting a tag active or inactive twice leaves the same member.
    return [result for result, _body in await _run(session, ops, idempotent=True)]


async def add(session: Session, segment: str, people: Sequence[SyncPerson]) -> list[RecordResult]:
    return await _tags(session, segment, people, "active")


async def remove(
    session: Session, segment: str, people: Sequence[SyncPerson]
) -> list[RecordResult]:
    return await _tags(session, segment, people, "inactive")


async def _delivered(session: Session, email: str) -> set[str] | None:
    """The unique ids of the member's events already there (None: no such member)."""
    seen: set[str] = set()
    offset = 0
    while True:
        response = await session.client.request(
            "GET", session.url(session.member(email) + "/events"),
            params={"count": PAGE, "offset": offset},
        )  # fmt: skip
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise SyncFailure(f"reading events: {_reason(response)}", response.status_code)
        page = response.json()
        for event in page.get("events", []):
            uid = (event.get("properties") or {}).get("unique_id")
            if uid:
                seen.add(uid)
        offset += PAGE
        if offset >= page.get("total_items", 0):
            return seen


def _event_body(event: SyncEvent) -> dict[str, Any]:
    properties = {k: str(v) for k, v in event.properties.items()}
    properties["unique_id"] = event.unique_id
    return {
        "name": event_name(event.name),
        "occurred_at": event.time.isoformat(),
        "properties": properties,
    }


async def _member_events(session: Session, email: str, events: list[SyncEvent]):
    try:
        seen = await _delivered(session, email)
    except SyncFailure as exc:
        return {e.unique_id: RecordResult("retry", str(exc)) for e in events}
    if seen is None:
        return {e.unique_id: RecordResult("failed", "no such member") for e in events}
    out: dict[str, RecordResult] = {}
    for event in events:
        if event.unique_id in seen:
            out[event.unique_id] = RecordResult.ok()
            continue
        path = session.member(email) + "/events"
        for _ in range(2):
            try:
                response = await session.client.request(
                    "POST", session.url(path), json=_event_body(event), idempotent=False
                )
            except TransportFailure as exc:
                # It may have been recorded: look before sending it again.
                try:
                    again = await _delivered(session, email) or set()
                except SyncFailure:
                    out[event.unique_id] = RecordResult("retry", str(exc))
                    break
                if event.unique_id in again:
                    out[event.unique_id] = RecordResult.ok()
                    break
                out[event.unique_id] = RecordResult("retry", str(exc))
                continue
            except SyncFailure as exc:
                out[event.unique_id] = RecordResult("retry", str(exc))
                break
            out[event.unique_id] = _answer(response.status_code, response.content, None)
            break
        seen.add(event.unique_id)
    return out


async def events(session: Session, items: Sequence[SyncEvent]) -> list[RecordResult]:
    by_member: dict[str, list[SyncEvent]] = {}
    for event in items:
        by_member.setdefault(event.person.email.lower(), []).append(event)
    answers: dict[str, RecordResult] = {}
    for part in await asyncio.gather(
        *(_member_events(session, email, evs) for email, evs in by_member.items())
    ):
        answers.update(part)
    return [answers[e.unique_id] for e in items]


async def delete(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    """Erase people for good (Mailchimp then refuses to add them back by API)."""
    ops = [Op("POST", session.member(p.email) + "/actions/delete-permanent", None) for p in people]
    # Deleting twice finds no member the second time: gone either way.
    answers = await _run(session, ops, idempotent=True)
    return [
        RecordResult.ok() if r.status == "failed" and r.reason and "Not Found" in r.reason else r
        for r, _body in answers
    ]


def _subscribed(status: str) -> bool | None:
    if status == "subscribed":
        return True
    if status in ("unsubscribed", "cleaned"):
        return False
    return None


async def read(session: Session) -> dict[str, RemotePerson]:
    found: dict[str, RemotePerson] = {}
    offset = 0
    while True:
        page = await _json(
            session, "GET", f"/lists/{session.audience}/members",
            params={"count": PAGE, "offset": offset,
                    "fields": "members.email_address,members.status,members.id,"
                              "members.tags,total_items"},
        )  # fmt: skip
        for m in page.get("members", []):
            email = m["email_address"].strip().lower()
            found[email] = RemotePerson(
                email=email,
                subscribed=_subscribed(m["status"]),
                segments=frozenset(t["name"] for t in m.get("tags", [])),
                remote_id=m.get("id"),
            )
        offset += PAGE
        if offset >= page.get("total_items", 0):
            return found


SYNC = SyncApi(
    limits=LIMITS,
    base_url=DEFAULT_BASE_URL,
    auth_headers=auth_headers,
    open=open_session,
    upsert=upsert,
    add=add,
    remove=remove,
    read=read,
    events=events,
    delete=delete,
    memberships=("tag",),
)


@hookimpl
def register_esp_connectors(register) -> None:
    register(
        EspConnector(
            name="mailchimp",
            description="Mailchimp Marketing v3: members, consent, segments as tags, events",
            sync=SYNC,
        )
    )
