"""``mailchimp``: sync to a Mailchimp audience (Marketing API v3).

    [[segflow.connectors]]
    name = "mailchimp"
    kind = "mailchimp"
    api_key_env = "MAILCHIMP_API_KEY"      # key-us21: the data centre is its suffix
    segments = ["vip", "cart_abandoners"]  # tags on the audience's members
    properties = {FNAME = "attributes.first_name"}   # merge tags
    options = {audience_id = "a1b2c3d4e5"}

A person is a member of the audience (``options.audience_id``), keyed by the
MD5 of the lower-cased email. The upsert is a PUT, so sending it twice leaves
the same member: subscribed only with consent (``status_if_new`` otherwise
``transactional``, which receives no marketing), and set ``unsubscribed`` when
consent was withdrawn. Properties are merge fields: a remote name is made a
merge tag (upper case, letters, digits and underscores, 10 at most) and
created when the audience lacks it, since Mailchimp drops unknown merge
fields without a word. Membership is a tag per segment (active / inactive).

Mailchimp allows 10 connections at once per key and sends no rate headers:
the client keeps to 10 and retries the 429s it gets. Its events have no
idempotency key, so each carries segflow's unique id as a property and is
sent only after the member's events were read and it was not among them:
a resend after a lost answer finds it there. The /batches endpoint is not
used: member calls at 10 connections are what this connector was measured
with (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from core import (
    EspConnector,
    RecordResult,
    RemotePerson,
    SyncApi,
    SyncEvent,
    SyncLimits,
    SyncPerson,
    SyncTarget,
    TransportFailure,
    UsageError,
    hookimpl,
)

PAGE = 1000  # Mailchimp's largest page
EVENT_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def member_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()  # noqa: S324 - Mailchimp's id


def merge_tag(name: str) -> str:
    """A remote property name as a merge tag: FNAME stays FNAME, first_name is FIRST_NAME."""
    tag = re.sub(r"[^A-Z0-9_]", "", name.upper())[:10]
    if not tag:
        raise UsageError(f"property {name!r} cannot be a Mailchimp merge tag")
    return tag


def event_name(event: SyncEvent) -> str:
    """Mailchimp wants 2-30 letters, digits, _ or -: ``entered-vip``."""
    change = event.properties.get("change", "changed")
    segment = event.properties.get("segment", event.name)
    return EVENT_NAME.sub("_", f"{change}-{segment}")[:30]


def base_url(api_key: str) -> str:
    return f"https://{api_key.rpartition('-')[2]}.api.mailchimp.com"


def auth_headers(target: SyncTarget) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"segflow:{target.api_key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Session:
    def __init__(self, target: SyncTarget, client: Any) -> None:
        self.target, self.client = target, client
        audience = target.options.get("audience_id")
        if not audience:
            raise UsageError(f"connector {target.name!r}: set options.audience_id (the audience)")
        self.members = f"/3.0/lists/{audience}/members"
        self.audience = audience
        self.tags = {name: merge_tag(name) for name in target.properties}

    async def prepare(self) -> None:
        """Create the merge fields the mapping names and the audience lacks."""
        response = await self.client.request(
            "GET", f"/3.0/lists/{self.audience}/merge-fields", params={"count": PAGE}
        )
        _raise_for_call(response, "reading merge fields")
        have = {f["tag"] for f in response.json().get("merge_fields", [])}
        for name, tag in self.tags.items():
            if tag in have:
                continue
            created = await self.client.request(
                "POST",
                f"/3.0/lists/{self.audience}/merge-fields",
                json={"tag": tag, "name": name[:50], "type": "text"},
            )
            if created.status_code != 400:  # 400: made meanwhile by another run
                _raise_for_call(created, f"creating merge field {tag}")


def _problem(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") or body.get("title") or f"HTTP {response.status_code}"
    fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or [])
    return f"{detail} ({fields})" if fields else str(detail)


def _raise_for_call(response: Any, what: str) -> None:
    if response.status_code >= 400:
        raise RuntimeError(f"mailchimp {what}: {_problem(response)}")


def _record(response: Any) -> RecordResult:
    if response.status_code < 300:
        return RecordResult.ok()
    if response.status_code in (401, 403):
        # The key, not the record: every record of the run would fail alike.
        raise RuntimeError(f"mailchimp: {_problem(response)}")
    return RecordResult("failed", _problem(response))


@contextlib.asynccontextmanager
async def open_session(target: SyncTarget, client: Any) -> AsyncIterator[Session]:
    session = Session(target, client)
    if session.tags:
        await session.prepare()
    yield session


async def _each(items: Sequence[Any], call) -> list[RecordResult]:
    """One call per record, at the client's connection limit; a record whose call
    failed as a whole is ``retry``, the others go on."""

    async def one(item: Any) -> RecordResult:
        try:
            return await call(item)
        except TransportFailure as exc:
            return RecordResult("retry", f"connection lost: {exc}")
        except Exception as exc:  # noqa: BLE001 - one record's failure is that record's
            return RecordResult("retry", str(exc))

    return list(await asyncio.gather(*(one(i) for i in items)))


async def upsert(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    async def one(person: SyncPerson) -> RecordResult:
        body: dict[str, Any] = {
            "email_address": person.email,
            "status_if_new": "subscribed" if person.subscribed else "transactional",
            "merge_fields": {
                session.tags[k]: str(v) for k, v in person.properties.items() if v is not None
            },
        }
        if person.subscribed is True:
            body["status"] = "subscribed"
        elif person.subscribed is False:
            body["status"] = "unsubscribed"
        response = await session.client.request(
            "PUT", f"{session.members}/{member_hash(person.email)}", json=body
        )
        result = _record(response)
        return RecordResult.ok(member_hash(person.email)) if result.status == "ok" else result

    return await _each(people, one)


async def _tag(session: Session, segment: str, people: Sequence[SyncPerson], status: str):
    async def one(person: SyncPerson) -> RecordResult:
        response = await session.client.request(
            "POST",
            f"{session.members}/{member_hash(person.email)}/tags",
            json={"tags": [{"name": segment, "status": status}]},
            # Setting a tag's status twice leaves it as once.
            idempotent=True,
        )
        if response.status_code == 404 and status == "inactive":
            return RecordResult.ok()  # no such member: not in the segment there either
        return _record(response)

    return await _each(people, one)


async def add(session: Session, segment: str, people: Sequence[SyncPerson]):
    return await _tag(session, segment, people, "active")


async def remove(session: Session, segment: str, people: Sequence[SyncPerson]):
    return await _tag(session, segment, people, "inactive")


async def events(session: Session, sent: Sequence[SyncEvent]) -> list[RecordResult]:
    async def one(event: SyncEvent) -> RecordResult:
        path = f"{session.members}/{member_hash(event.person.email)}/events"
        seen = await session.client.request("GET", path, params={"count": PAGE})
        if seen.status_code < 300:
            ids = {e.get("properties", {}).get("unique_id") for e in seen.json().get("events", [])}
            if event.unique_id in ids:
                return RecordResult.ok()  # delivered before, its answer lost
        properties = {k: str(v) for k, v in event.properties.items()}
        response = await session.client.request(
            "POST",
            path,
            json={
                "name": event_name(event),
                "properties": properties | {"unique_id": event.unique_id},
                "occurred_at": event.time.isoformat(),
            },
        )
        return _record(response)

    return await _each(sent, one)


async def read(session: Session) -> dict[str, RemotePerson]:
    out: dict[str, RemotePerson] = {}
    offset = 0
    while True:
        response = await session.client.request(
            "GET", session.members, params={"count": PAGE, "offset": offset}
        )
        _raise_for_call(response, "reading members")
        body = response.json()
        members = body.get("members", [])
        for m in members:
            email = m["email_address"].strip().lower()
            status = m.get("status")
            out[email] = RemotePerson(
                email=email,
                subscribed=True if status == "subscribed" else False
                if status in ("unsubscribed", "cleaned") else None,
                segments=frozenset(t["name"] for t in m.get("tags", [])),
                remote_id=m.get("id"),
            )  # fmt: skip
        offset += len(members)
        if not members or offset >= body.get("total_items", 0):
            return out


MAILCHIMP = EspConnector(
    name="mailchimp",
    description="Mailchimp audience: members (merge fields, consent), tags, events",
    sync=SyncApi(
        # Ten connections at once per key; no rate headers (429s are retried).
        limits=SyncLimits(
            profiles_per_call=100,
            members_per_call=100,
            events_per_call=50,
            requests_per_second=200.0,
            burst=50,
            concurrency=10,
        ),
        base_url=base_url,
        auth_headers=auth_headers,
        open=open_session,
        upsert=upsert,
        add=add,
        remove=remove,
        read=read,
        events=events,
        memberships=("tag",),
    ),
)


@hookimpl
def register_esp_connectors(register) -> None:
    register(MAILCHIMP)
