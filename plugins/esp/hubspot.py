"""``hubspot``: sync to HubSpot CRM v3 (contacts, segments as MANUAL lists, custom events).

Auth is a private app's token (``Authorization: Bearer <token>``) with the
contacts, contact schema, lists, behavioural events and event definitions scopes.

- open: the portal id (``GET /account-info/v3/details``, event names need it);
  the mapped contact properties and ``segflow_marketing_consent`` created when
  missing (``GET/POST /crm/v3/properties/contacts``); one MANUAL list per
  synced segment, named ``options.list_prefix`` (default ``segflow: ``) + the
  segment, found by name or created;
- upsert: ``POST /crm/v3/objects/contacts/batch/upsert`` by ``email``, each
  input with ``objectWriteTraceId`` = its index so a 207 maps each refusal back
  to its record; the contact id is the remote id. ``hs_email_optout`` cannot
  be set through the CRM API, so consent goes to the segflow-owned
  ``segflow_marketing_consent`` (``subscribed`` only with consent,
  ``unsubscribed`` on a withdrawal, ``none`` otherwise), for the portal's
  workflows and lists to act on;
- membership: ``PUT /crm/v3/lists/{id}/memberships/add|remove`` with contact
  ids (looked up by email when segflow holds none);
- events: ``POST /events/v3/send/batch``, named ``pe<portal>_<name>`` and with
  ``uuid`` = the segflow unique id, which HubSpot de-duplicates on, so a
  resend is never a second occurrence. HubSpot refuses an occurrence of an
  undefined event or property, so before a batch each event it names is
  defined when missing (``GET/POST /events/v3/event-definitions``, one listing
  per session, with the properties the batch carries, ``POST
  .../{name}/property`` for one it lacks; the definitions scope is needed);
- delete (erasure): ``POST /crm/v3/objects/contacts/gdpr-delete`` by
  ``email``, one contact a call (204); an address HubSpot does not know is
  blocklisted all the same, and a 404 counts as deleted too;
- read (verify): every contact's email and consent property, paged, and each
  synced list's memberships, paged.

Limits: a rolling ten-second window per app (100 requests on starter,
``X-HubSpot-RateLimit-Remaining`` / ``-Interval-Milliseconds`` on every
answer, read in ``rate_state``), kept by the client as a window of its own;
100 inputs per batch upsert and read, 100,000 ids per list membership call,
500 events per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
    hookimpl,
)

if TYPE_CHECKING:
    import httpx

DEFAULT_BASE_URL = "https://api.hubapi.com"
DEFAULT_LIST_PREFIX = "segflow: "
CONSENT = "segflow_marketing_consent"
CONSENT_VALUES = ("subscribed", "unsubscribed", "none")
CONTACTS = "0-1"
BATCH = 100  # inputs per batch upsert / read
EVENT_BATCH = 500
MEMBERS_PAGE = 250
CONTACTS_PAGE = 100
# HubSpot's list membership calls take this many record ids.
MEMBERSHIP_IDS = 100_000
# The smallest tier's rolling window (requests per ten seconds), kept as the API
# counts it until its rate headers tell the app's own.
TEN_SECONDLY = 100
LIMITS = SyncLimits(
    profiles_per_call=BATCH,
    members_per_call=MEMBERSHIP_IDS,
    events_per_call=EVENT_BATCH,
    requests_per_second=9.0,
    burst=10,
    concurrency=4,
    windows={"": ((TEN_SECONDLY, 10.0),)},
)
ALIASES = {"first_name": "firstname", "last_name": "lastname", "phone": "phone"}


def property_name(name: str) -> str:
    """The HubSpot property a mapped property goes to: HubSpot's for the usual
    names, else lower-case letters, digits and ``_``, starting with a letter."""
    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "segflow_" + cleaned
    return cleaned


def short_event_name(name: str) -> str:
    """``Entered segment gold`` -> ``entered_segment_gold`` (a definition's name)."""
    short = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "segflow_event"
    return short if short[0].isalpha() else "e_" + short


def event_name(portal_id: int | str, name: str) -> str:
    """``Entered segment gold`` -> ``pe<portal>_entered_segment_gold``."""
    return f"pe{portal_id}_{short_event_name(name)}"


def list_name(target: SyncTarget, segment: str) -> str:
    return str(target.options.get("list_prefix", DEFAULT_LIST_PREFIX)) + segment


def consent_value(subscribed: bool | None) -> str:
    return "subscribed" if subscribed is True else "unsubscribed" if subscribed is False else "none"


def auth_headers(target: SyncTarget) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"}


def rate_state(response: httpx.Response) -> tuple[int, float] | None:
    left = response.headers.get("X-HubSpot-RateLimit-Remaining")
    interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
    if left is None or interval is None:
        return None
    try:
        return int(left), int(interval) / 1000
    except ValueError:
        return None


def _window(response: httpx.Response) -> tuple[int, float] | None:
    """(requests, seconds) of the app's rolling window, from the rate headers."""
    most = response.headers.get("X-HubSpot-RateLimit-Max")
    interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
    try:
        return (int(most), int(interval) / 1000) if most and interval else None
    except ValueError:
        return None


@dataclass
class Session:
    target: SyncTarget
    client: Any
    portal_id: int = 0
    lists: dict[str, str] = field(default_factory=dict)  # segment -> list id
    names: dict[str, str] = field(default_factory=dict)  # mapped name -> HubSpot property
    # Event definitions: short name -> its property names (None: not listed yet).
    defined: dict[str, set[str]] | None = None
    defining: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Lists this session created: no contact can be in them from before.
    fresh: set[str] = field(default_factory=set)


def _reason(response: httpx.Response) -> str:
    """A refusal in a few words: the message and the properties it names."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return _error_text(body) if isinstance(body, dict) else f"HTTP {response.status_code}"


def _error_text(body: dict[str, Any]) -> str:
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    named = "; ".join(
        ",".join((e.get("context") or {}).get("propertyName") or []) + f": {e.get('message')}"
        for e in errors
        if e.get("message")
    )
    return (named or str(body.get("message") or body.get("category") or "refused"))[:300]


async def _json(session: Session, method: str, path: str, **kwargs: Any) -> Any:
    response = await session.client.request(method, path, **kwargs)
    if response.status_code >= 300:
        raise SyncFailure(f"{method} {path}: {_reason(response)}", response.status_code)
    return response.json() if response.content else None


async def _ensure_properties(session: Session) -> None:
    found = await _json(session, "GET", "/crm/v3/properties/contacts")
    have = {p["name"] for p in found.get("results", [])}
    wanted: list[dict[str, Any]] = [
        {
            "name": name,
            "label": name.replace("_", " ").title(),
            "type": "string",
            "fieldType": "text",
            "groupName": "contactinformation",
        }
        for name in sorted(set(session.names.values()) - have)
    ]
    if CONSENT not in have:
        wanted.append(
            {
                "name": CONSENT,
                "label": "Segflow marketing consent",
                "type": "enumeration",
                "fieldType": "select",
                "groupName": "contactinformation",
                "description": "Email marketing consent as segflow holds it",
                "options": [
                    {"label": v.title(), "value": v, "displayOrder": i}
                    for i, v in enumerate(CONSENT_VALUES)
                ],
            }
        )
    for body in wanted:
        # Names are unique: a create sent twice answers 409 and makes nothing new.
        response = await session.client.request(
            "POST", "/crm/v3/properties/contacts", json=body, idempotent=True
        )
        if response.status_code >= 300 and response.status_code != 409:
            raise SyncFailure(f"creating property {body['name']}: {_reason(response)}")


async def _find_or_create_list(session: Session, name: str) -> str:
    path = f"/crm/v3/lists/object-type-id/{CONTACTS}/name/{quote(name, safe='')}"
    for _ in range(2):
        response = await session.client.request("GET", path)
        if response.status_code == 200:
            return str(response.json()["list"]["listId"])
        if response.status_code != 404:
            raise SyncFailure(f"finding list {name!r}: {_reason(response)}", response.status_code)
        # List names are unique: a create sent twice is refused, never a second list.
        created = await session.client.request(
            "POST", "/crm/v3/lists",
            json={"name": name, "objectTypeId": CONTACTS, "processingType": "MANUAL"},
            idempotent=True,
        )  # fmt: skip
        if created.status_code < 300:
            list_id = str(created.json()["list"]["listId"])
            session.fresh.add(list_id)
            return list_id
        if "LIST_NAME_ALREADY_EXISTS" not in created.text and created.status_code != 409:
            raise SyncFailure(f"creating list {name!r}: {_reason(created)}", created.status_code)
    raise SyncFailure(f"list {name!r}: neither found nor created")


@contextlib.asynccontextmanager
async def open_session(target: SyncTarget, client: Any) -> AsyncIterator[Session]:
    session = Session(target, client)
    session.names = {k: property_name(k) for k in target.properties}
    response = await client.request("GET", "/account-info/v3/details")
    if response.status_code >= 300:
        raise SyncFailure(f"account details: {_reason(response)}", response.status_code)
    session.portal_id = int(response.json()["portalId"])
    window = _window(response)
    if window is not None and hasattr(client, "resize"):
        # The app's own tier (190 on professional): its window, not the smallest.
        client.resize("", (window,))
    await _ensure_properties(session)
    ids = await asyncio.gather(
        *(_find_or_create_list(session, list_name(target, s)) for s in target.segments)
    )
    session.lists = dict(zip(target.segments, ids, strict=True))
    yield session


def _value(value: Any) -> str:
    if value is None:
        return ""  # clears the property
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, default=str)


def _properties(session: Session, person: SyncPerson) -> dict[str, str]:
    out = {session.names.get(k, property_name(k)): _value(v) for k, v in person.properties.items()}
    out[CONSENT] = consent_value(person.subscribed)
    return out


async def upsert(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    inputs = [
        {
            "idProperty": "email",
            "id": p.email,
            "properties": _properties(session, p),
            "objectWriteTraceId": str(i),
        }
        for i, p in enumerate(people)
    ]
    # An upsert by email sent twice updates the same contact.
    response = await session.client.request(
        "POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs}, idempotent=True
    )
    if response.status_code not in (200, 201, 207):
        raise SyncFailure(f"batch upsert: {_reason(response)}", response.status_code)
    body = response.json()
    by_index: dict[int, RecordResult] = {}
    existing: list[tuple[int, str]] = []
    index_of = {p.email.strip().lower(): i for i, p in enumerate(people)}
    for result in body.get("results", []):
        trace = result.get("objectWriteTraceId")
        email = str((result.get("properties") or {}).get("email") or "").lower()
        i = int(trace) if trace is not None and str(trace).isdigit() else index_of.get(email)
        if i is None or i >= len(people):
            continue
        by_index[i] = RecordResult.ok(str(result["id"]))
        if not result.get("new", True) and people[i].remote_id is None:
            existing.append((i, str(result["id"])))
    for error in body.get("errors", []):
        traces = (error.get("context") or {}).get("objectWriteTraceId") or []
        for trace in traces:
            if str(trace).isdigit() and int(trace) < len(people):
                by_index[int(trace)] = RecordResult("failed", _error_text(error))
    if existing:
        # A contact segflow holds no confirmed state for (the state was lost) may
        # still be in synced lists; the engine adds the wanted ones right after.
        cleared = await _clear_lists(session, [cid for _i, cid in existing])
        if cleared is not None:
            for i, _cid in existing:
                by_index[i] = RecordResult("retry", cleared)
    return [
        by_index.get(i, RecordResult("retry", "not in the upsert answer"))
        for i in range(len(people))
    ]


async def _clear_lists(session: Session, ids: list[str]) -> str | None:
    for list_id in session.lists.values():
        if list_id in session.fresh:
            continue
        response = await session.client.request(
            "PUT", f"/crm/v3/lists/{list_id}/memberships/remove", json=ids
        )
        if response.status_code >= 300:
            return f"clearing list {list_id}: {_reason(response)}"
    return None


async def _contact_ids(session: Session, people: Sequence[SyncPerson]) -> dict[str, str]:
    """email -> contact id, for people segflow holds no contact id for."""
    missing = sorted({p.email.strip().lower() for p in people if not p.remote_id})
    found: dict[str, str] = {}
    for start in range(0, len(missing), BATCH):
        chunk = missing[start : start + BATCH]
        response = await session.client.request(
            "POST", "/crm/v3/objects/contacts/batch/read",
            json={"idProperty": "email", "properties": ["email"],
                  "inputs": [{"id": e} for e in chunk]},
            idempotent=True,
        )  # fmt: skip
        if response.status_code not in (200, 207):
            raise SyncFailure(f"reading contacts: {_reason(response)}", response.status_code)
        for result in response.json().get("results", []):
            email = str((result.get("properties") or {}).get("email") or "").lower()
            found[email] = str(result["id"])
    return found


async def _membership(
    session: Session, segment: str, people: Sequence[SyncPerson], action: str
) -> list[RecordResult]:
    list_id = session.lists.get(segment)
    if list_id is None:
        raise SyncFailure(f"segment {segment!r} is not synced by {session.target.name!r}")
    looked_up = await _contact_ids(session, people)
    ids = [p.remote_id or looked_up.get(p.email.strip().lower()) for p in people]
    known = sorted({i for i in ids if i})
    missing: set[str] = set()
    if known:
        # Adding or removing the same ids twice leaves the same list.
        response = await session.client.request(
            "PUT", f"/crm/v3/lists/{list_id}/memberships/{action}", json=known
        )
        if response.status_code >= 300:
            raise SyncFailure(f"list {action}: {_reason(response)}", response.status_code)
        missing = {str(i) for i in response.json().get("recordIdsMissing") or []}
    out = []
    for rid in ids:
        if rid is None or rid in missing:
            # Not in the list either way, so a removal is done; an add is not.
            out.append(RecordResult.ok() if action == "remove" else
                       RecordResult("failed", "contact missing"))  # fmt: skip
        else:
            out.append(RecordResult.ok(rid))
    return out


async def add(session: Session, segment: str, people: Sequence[SyncPerson]) -> list[RecordResult]:
    return await _membership(session, segment, people, "add")


async def remove(
    session: Session, segment: str, people: Sequence[SyncPerson]
) -> list[RecordResult]:
    return await _membership(session, segment, people, "remove")


def _event_body(session: Session, event: SyncEvent) -> dict[str, Any]:
    return {
        "eventName": event_name(session.portal_id, event.name),
        "email": event.person.email,
        "uuid": event.unique_id,
        "occurredAt": event.time.isoformat(),
        "properties": {k: _value(v) for k, v in event.properties.items()},
    }


async def _send_one(session: Session, event: SyncEvent) -> RecordResult:
    try:
        response = await session.client.request(
            "POST", "/events/v3/send", json=_event_body(session, event), idempotent=True
        )
    except SyncFailure as exc:
        return RecordResult("retry", str(exc))
    if response.status_code < 300:
        return RecordResult.ok()
    return RecordResult("failed", _reason(response))


async def _definitions(session: Session) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    after: str | None = None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = await _json(session, "GET", "/events/v3/event-definitions", params=params)
        for d in page.get("results", []):
            found[d["name"]] = {p["name"] for p in d.get("properties", [])}
        after = ((page.get("paging") or {}).get("next") or {}).get("after")
        if not after:
            return found


def _event_property(name: str) -> dict[str, str]:
    return {"name": name, "label": name.replace("_", " ").title(), "type": "string"}


async def _define(session: Session, items: Sequence[SyncEvent]) -> None:
    """Define the events (and properties) the batch names that the portal lacks."""
    wanted: dict[str, set[str]] = {}
    for e in items:
        wanted.setdefault(short_event_name(e.name), set()).update(e.properties)
    labels = {short_event_name(e.name): e.name for e in items}
    async with session.defining:
        if session.defined is None:
            session.defined = await _definitions(session)
        defined = session.defined
        for name, props in sorted(wanted.items()):
            if name not in defined:
                body = {
                    "name": name,
                    "label": labels[name][:100],
                    "description": "Sent by segflow",
                    "primaryObject": "CONTACT",
                    "propertyDefinitions": [_event_property(p) for p in sorted(props)],
                }
                # Names are unique: a create sent twice answers 409 and makes nothing new.
                response = await session.client.request(
                    "POST", "/events/v3/event-definitions", json=body, idempotent=True
                )
                if response.status_code == 409:
                    found = await _json(session, "GET", f"/events/v3/event-definitions/{name}")
                    defined[name] = {p["name"] for p in found.get("properties", [])}
                elif response.status_code >= 300:
                    raise SyncFailure(f"defining event {name}: {_reason(response)}")
                else:
                    defined[name] = set(props)
            for prop in sorted(props - defined[name]):
                response = await session.client.request(
                    "POST", f"/events/v3/event-definitions/{name}/property",
                    json=_event_property(prop), idempotent=True,
                )  # fmt: skip
                if response.status_code >= 300 and response.status_code != 409:
                    raise SyncFailure(f"defining {name}.{prop}: {_reason(response)}")
                defined[name].add(prop)


async def events(session: Session, items: Sequence[SyncEvent]) -> list[RecordResult]:
    await _define(session, items)
    # HubSpot drops an occurrence whose uuid it has seen: resending is safe.
    response = await session.client.request(
        "POST", "/events/v3/send/batch",
        json={"inputs": [_event_body(session, e) for e in items]}, idempotent=True,
    )  # fmt: skip
    if response.status_code < 300:
        return [RecordResult.ok() for _ in items]
    if response.status_code != 400 or len(items) == 1:
        if response.status_code == 400:
            return [RecordResult("failed", _reason(response))]
        raise SyncFailure(f"events: {_reason(response)}", response.status_code)
    # One bad event refuses the whole batch: each alone says which.
    return list(await asyncio.gather(*(_send_one(session, e) for e in items)))


def _subscribed(value: str | None) -> bool | None:
    return True if value == "subscribed" else False if value == "unsubscribed" else None


async def _members(session: Session, list_id: str) -> list[str]:
    ids: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": MEMBERS_PAGE}
        if after:
            params["after"] = after
        page = await _json(session, "GET", f"/crm/v3/lists/{list_id}/memberships", params=params)
        ids.extend(str(r["recordId"]) for r in page.get("results", []))
        after = ((page.get("paging") or {}).get("next") or {}).get("after")
        if not after:
            return ids


async def read(session: Session) -> dict[str, RemotePerson]:
    segments_of: dict[str, set[str]] = {}
    for segment, list_id in session.lists.items():
        for rid in await _members(session, list_id):
            segments_of.setdefault(rid, set()).add(segment)
    found: dict[str, RemotePerson] = {}
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": CONTACTS_PAGE, "properties": f"email,{CONSENT}"}
        if after:
            params["after"] = after
        page = await _json(session, "GET", "/crm/v3/objects/contacts", params=params)
        for c in page.get("results", []):
            props = c.get("properties") or {}
            email = str(props.get("email") or "").strip().lower()
            rid = str(c["id"])
            if not email or (props.get(CONSENT) is None and rid not in segments_of):
                continue  # not a contact segflow synced
            found[email] = RemotePerson(
                email=email,
                subscribed=_subscribed(props.get(CONSENT)),
                segments=frozenset(segments_of.get(rid, ())),
                remote_id=rid,
            )
        after = ((page.get("paging") or {}).get("next") or {}).get("after")
        if not after:
            return found


async def _gdpr_delete(session: Session, person: SyncPerson) -> RecordResult:
    body = {"objectId": person.email, "idProperty": "email"}
    try:
        # Deleting twice leaves the same state: safe to resend after a drop.
        response = await session.client.request(
            "POST", "/crm/v3/objects/contacts/gdpr-delete", json=body, idempotent=True
        )
    except SyncFailure as exc:
        return RecordResult("retry", str(exc))
    if response.status_code < 300 or response.status_code == 404:
        return RecordResult.ok()
    return RecordResult("failed", _reason(response))


async def delete(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    """Erase people for good (GDPR delete: the contact and what is associated with it)."""
    return list(await asyncio.gather(*(_gdpr_delete(session, p) for p in people)))


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
    rate_state=rate_state,
    memberships=("list",),
)


@hookimpl
def register_esp_connectors(register) -> None:
    register(
        EspConnector(
            name="hubspot",
            description="HubSpot CRM v3: contacts, consent property, segments as lists, events",
            sync=SYNC,
        )
    )
