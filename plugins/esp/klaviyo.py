"""``klaviyo``: sync to the Klaviyo API (JSON:API, revision ``REVISION``), one list a segment.

Lists: each synced segment is the list named ``options.list_prefix`` (default
``"segflow: "``) + the segment, found by name or created when the session opens.

- upsert: profile bulk import jobs (``/api/profile-bulk-import-jobs``, up
  to 10,000 profiles or 5 MB a job), polled to complete; the job's import
  errors are mapped back to their records (a refused profile fails alone).
  A job takes a list (``relationships.lists``) its profiles join, so the
  people who join segments in the run are imported in the jobs of those
  segments' lists (``SyncApi.adds_on_upsert``; someone joining two is in
  two jobs). Then consent: people with consent are subscribed to
  email marketing (``profile-subscription-bulk-create-jobs``), withdrawals
  unsubscribed (``...-bulk-delete-jobs``), people never asked left as they
  are. No profile ids are read back: nothing but a removal needs them;
- membership: an add is an import job of the addresses into the list; a
  removal looks up the ids it does not know (``GET /api/profiles`` filtered
  by ``any(email, [...])``) and takes them out (``DELETE``)
  ``/api/lists/{id}/relationships/profiles``, 1,000 ids a call;
- events: ``/api/event-bulk-create-jobs`` with the metric named as the event
  and ``unique_id`` set: Klaviyo drops an event whose unique id it already
  has, so a resend is no duplicate;
- delete (erasure): a data privacy deletion job per person
  (``POST /api/data-privacy-deletion-jobs`` by email, 202: Klaviyo deletes
  the profile and its data asynchronously); a 404 counts as deleted;
- read (verify): every profile with its email marketing consent, and the
  members of each synced list.

A call Klaviyo refuses for one of its records (its error's ``source.pointer``
names the record) is sent again without that record, which fails alone.

Limits: Klaviyo allows each endpoint the connector calls (profiles, lists,
jobs, bulk event jobs) 10 requests a second and 150 a minute; the connector
keeps both windows for each group of endpoints apart (``rate_group``), so a
group waiting for its minute does not hold up the others, and pauses a group
when ``RateLimit-Remaining`` reaches 0 that its own windows did not foresee.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

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
    hookimpl,
)

DEFAULT_BASE_URL = "https://a.klaviyo.com"
REVISION = "2024-10-15"
MEDIA_TYPE = "application/vnd.api+json"
DEFAULT_PREFIX = "segflow: "
IMPORT_PROFILES = 10_000
# Under the 5 MB a job takes, leaving room for the envelope.
IMPORT_BYTES = 4_500_000
SUBSCRIPTION_PROFILES = 1_000
MEMBER_IDS = 1_000
EVENT_PROFILES = 1_000
PROFILE_PAGE = 100
MEMBER_PAGE = 1_000
# Klaviyo's M tier (10 a second, 150 a minute), which its reference gives every
# endpoint the connector calls, bulk event jobs included; counted per group.
M_TIER = ((10, 1.0), (150, 60.0))
GROUPS = ("profiles", "lists", "jobs", "event-jobs")
# An upsert call is cut into import jobs of IMPORT_PROFILES, one list a job:
# the more people a call holds, the fewer part-filled jobs its segments leave.
# Its people are answered as their consent jobs complete (``upsert_parts``),
# so a large call holds up no events.
UPSERT_PEOPLE = 10 * IMPORT_PROFILES
LIMITS = SyncLimits(
    profiles_per_call=UPSERT_PEOPLE,
    # An add is an import job of up to IMPORT_PROFILES addresses; a removal
    # call takes MEMBER_IDS ids, and the connector cuts it so.
    members_per_call=IMPORT_PROFILES,
    events_per_call=EVENT_PROFILES,
    requests_per_second=2.5,
    burst=10,
    concurrency=4,
    windows={group: M_TIER for group in GROUPS},
    # A call's import and subscription jobs fill the jobs group's windows; the
    # next call's imports go while its last consent jobs finish.
    upserts_at_once=2,
)
# Klaviyo's own profile fields; any other mapped property is a custom one.
PROFILE_FIELDS = frozenset(
    {"first_name", "last_name", "phone_number", "organization", "locale", "title", "image"}
)
# The answer for each record delivered without an id: one object, not one each.
OK = RecordResult.ok()
POINTER_INDEX = re.compile(r"/data/(?:attributes/[a-z-]+/data/)?(\d+)(?:/|$)")


def auth_headers(target: SyncTarget) -> dict[str, str]:
    return {
        "Authorization": f"Klaviyo-API-Key {target.api_key}",
        "revision": REVISION,
        "accept": MEDIA_TYPE,
        "content-type": MEDIA_TYPE,
    }


def rate_state(response: Any) -> tuple[int, float] | None:
    """(requests left, seconds to the reset) from ``RateLimit-Remaining`` and
    ``RateLimit-Reset``; None when absent (a 429 carries Retry-After instead)."""
    left, reset = (response.headers.get(h) for h in ("RateLimit-Remaining", "RateLimit-Reset"))
    if left is None or reset is None:
        return None
    try:
        return int(left), float(reset)
    except ValueError:
        return None


def rate_group(method: str, path: str) -> str:
    """The endpoint group a request counts in: event-jobs (bulk), events, lists,
    jobs or profiles."""
    path = path.split("://", 1)[-1]
    path = path[path.find("/api/") :] if "/api/" in path else path
    if path.startswith("/api/event-bulk"):
        return "event-jobs"
    if path.startswith("/api/events"):
        return "events"
    if path.startswith("/api/lists"):
        return "lists"
    if "jobs" in path:
        return "jobs"
    return "profiles"


def list_name(target: SyncTarget, segment: str) -> str:
    return str(target.options.get("list_prefix", DEFAULT_PREFIX)) + segment


@dataclass
class Session:
    target: SyncTarget
    client: Any
    lists: dict[str, str] = field(default_factory=dict)  # segment -> list id
    poll: float = 0.05
    job_timeout: float = 1800.0


def _errors(response: Any) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors or [] if isinstance(e, dict)]


def _error_reason(error: dict[str, Any]) -> str:
    pointer = str((error.get("source") or {}).get("pointer") or "")
    named = pointer.rstrip("/").rpartition("/")[2]
    text = str(error.get("detail") or error.get("title") or error.get("code") or "refused")
    return (f"{named}: {text}" if named and not named.isdigit() else text)[:300]


def _reason(response: Any) -> str:
    errors = _errors(response)
    if not errors:
        return f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}: " + "; ".join(_error_reason(e) for e in errors)


def _index(error: dict[str, Any]) -> int | None:
    """The record an error's ``source.pointer`` names, when it names one."""
    pointer = str((error.get("source") or {}).get("pointer") or "")
    found = POINTER_INDEX.match(pointer)
    return int(found.group(1)) if found else None


async def _json(session: Session, method: str, url: str, **kwargs: Any) -> Any:
    response = await session.client.request(method, url, **kwargs)
    if response.status_code >= 300:
        raise SyncFailure(
            f"{method} {url.split('?')[0]}: {_reason(response)}", response.status_code
        )
    return response.json() if response.content else None


async def _pages(session: Session, url: str, params: dict[str, Any] | None) -> AsyncIterator[Any]:
    """Each page's ``data``, following ``links.next`` (an absolute URL with the cursor)."""
    next_url: str | None = url
    while next_url:
        page = await _json(session, "GET", next_url, params=params)
        yield page.get("data") or []
        next_url = (page.get("links") or {}).get("next")
        params = None  # links.next carries them


async def _excluding(
    session: Session,
    method: str,
    path: str,
    items: Sequence[Any],
    body: Callable[[Sequence[Any]], dict[str, Any]],
    *,
    idempotent: bool,
) -> dict[int, str]:
    """Send ``body(items)``; when Klaviyo refuses it naming one of the items,
    send it again without that item. The refused ones: index -> reason."""
    failed: dict[int, str] = {}
    left = list(range(len(items)))
    while left:
        response = await session.client.request(
            method, path, json=body([items[i] for i in left]), idempotent=idempotent
        )
        if response.status_code < 300:
            return failed
        named = [
            (left[n], _error_reason(e))
            for e in _errors(response)
            if (n := _index(e)) is not None and n < len(left)
        ]
        if response.status_code >= 500 or response.status_code in (401, 403, 429) or not named:
            raise SyncFailure(f"{method} {path}: {_reason(response)}", response.status_code)
        for i, why in named:
            failed.setdefault(i, why)
        left = [i for i in left if i not in failed]
    return failed


async def _find_lists(session: Session) -> dict[str, str]:
    found: dict[str, str] = {}
    async for page in _pages(session, "/api/lists", {"fields[list]": "name"}):
        for item in page:
            found.setdefault(item["attributes"]["name"], item["id"])
    return found


async def _create_list(session: Session, name: str) -> str:
    body = {"data": {"type": "list", "attributes": {"name": name}}}
    for _ in range(3):
        try:
            created = await _json(session, "POST", "/api/lists", json=body, idempotent=False)
            return created["data"]["id"]
        except TransportFailure:
            # It may have been created: a second POST would make a second list.
            there = (await _find_lists(session)).get(name)
            if there is not None:
                return there
    raise SyncFailure(f"creating the list {name!r}: the connection kept dropping")


@contextlib.asynccontextmanager
async def open_session(target: SyncTarget, client: Any) -> AsyncIterator[Session]:
    if target.membership != "list":
        raise UsageError(f"connector {target.name!r}: Klaviyo membership is by list")
    session = Session(target, client)
    existing = await _find_lists(session)
    for segment in target.segments:
        name = list_name(target, segment)
        session.lists[segment] = existing.get(name) or await _create_list(session, name)
    yield session


# -- upsert ----------------------------------------------------------------------------


def _value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


def _profile(person: SyncPerson) -> dict[str, Any]:
    attributes: dict[str, Any] = {"email": person.email}
    custom: dict[str, Any] = {}
    for name, value in person.properties.items():
        if name in PROFILE_FIELDS:
            attributes[name] = _value(value)
        else:
            custom[name] = _value(value)
    if custom:
        attributes["properties"] = custom
    return {"type": "profile", "attributes": attributes}


def _encoded(
    people: Sequence[SyncPerson], profile: Callable[[SyncPerson], dict[str, Any]] | None = None
) -> list[bytes]:
    """Each person's profile as the JSON an import job carries, encoded once:
    it sizes the jobs and makes their bodies."""
    make = profile or _profile
    return [orjson.dumps(make(p), default=str) for p in people]


def _jobs(encoded: Sequence[bytes]) -> list[list[int]]:
    """Record indexes per import job: at most IMPORT_PROFILES and IMPORT_BYTES each."""
    jobs: list[list[int]] = [[]]
    size = 0
    for i, profile in enumerate(encoded):
        n = len(profile) + 1
        if jobs[-1] and (len(jobs[-1]) >= IMPORT_PROFILES or size + n > IMPORT_BYTES):
            jobs.append([])
            size = 0
        jobs[-1].append(i)
        size += n
    return [j for j in jobs if j]


def _import_body(encoded: Sequence[bytes], list_id: str | None) -> bytes:
    lists = b""
    if list_id is not None:
        lists = b',"relationships":' + orjson.dumps(
            {"lists": {"data": [{"type": "list", "id": list_id}]}}
        )
    return (
        b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['
        + b",".join(encoded)
        + b"]}}"
        + lists
        + b"}}"
    )


async def _import(
    session: Session,
    people: Sequence[SyncPerson],
    encoded: Sequence[bytes],
    list_id: str | None = None,
) -> dict[int, str]:
    """One import job of ``people`` (``encoded``: their profiles' JSON), adding
    them to ``list_id`` when given, polled to complete: the refused records,
    index -> reason."""
    body = _import_body(encoded, list_id)
    # Importing the same profiles twice leaves the same profiles.
    job = await _json(
        session, "POST", "/api/profile-bulk-import-jobs", content=body, idempotent=True
    )
    job_id = job["data"]["id"]
    wait, waited = session.poll, 0.0
    while True:
        state = await _json(session, "GET", f"/api/profile-bulk-import-jobs/{job_id}")
        status = state["data"]["attributes"]["status"]
        if status == "complete":
            break
        if status in ("cancelled", "failed"):
            raise SyncFailure(f"profile import job {job_id}: {status}")
        if waited > session.job_timeout:
            # Its records are retried next run; importing them again is harmless.
            raise SyncFailure(f"profile import job {job_id}: still {status}")
        await asyncio.sleep(wait)
        waited += wait
        wait = min(wait * 2, 5.0)
    failed: dict[int, str] = {}
    if not state["data"]["attributes"].get("failed_count"):
        return failed
    by_email = {p.email.lower(): i for i, p in enumerate(people)}
    url = f"/api/profile-bulk-import-jobs/{job_id}/import-errors"
    async for page in _pages(session, url, {}):
        for row in page:
            error = row.get("attributes") or {}
            i = _index(error)
            email = str((error.get("original_payload") or {}).get("email") or "").lower()
            if email in by_email:
                i = by_email[email]
            if i is not None and i < len(people):
                failed.setdefault(i, _error_reason(error))
    return failed


def _consent_body(kind: str, consent: str) -> Callable[[Sequence[SyncPerson]], dict[str, Any]]:
    def body(people: Sequence[SyncPerson]) -> dict[str, Any]:
        marketing = {"consent": consent}
        profiles = [
            {
                "type": "profile",
                "attributes": {
                    "email": p.email,
                    "subscriptions": {"email": {"marketing": marketing}},
                },
            }
            for p in people
        ]
        return {"data": {"type": kind, "attributes": {"profiles": {"data": profiles}}}}

    return body


async def _consent(session: Session, people: Sequence[SyncPerson]) -> dict[int, str]:
    """Subscribe those with consent, unsubscribe withdrawals; never subscribe
    someone segflow holds no consent for. The refused ones: index -> reason."""
    failed: dict[int, str] = {}
    plans = (
        (True, "/api/profile-subscription-bulk-create-jobs",
         "profile-subscription-bulk-create-job", "SUBSCRIBED"),
        (False, "/api/profile-subscription-bulk-delete-jobs",
         "profile-subscription-bulk-delete-job", "UNSUBSCRIBED"),
    )  # fmt: skip

    async def job(part: list[int], path: str, kind: str, consent: str) -> None:
        # Subscribing or unsubscribing twice leaves the same consent.
        refused = await _excluding(
            session, "POST", path, [people[i] for i in part],
            _consent_body(kind, consent), idempotent=True,
        )  # fmt: skip
        failed.update({part[n]: why for n, why in refused.items()})

    jobs = []
    for wanted, path, kind, consent in plans:
        indexes = [i for i, p in enumerate(people) if p.subscribed is wanted]
        for start in range(0, len(indexes), SUBSCRIPTION_PROFILES):
            jobs.append(job(indexes[start : start + SUBSCRIPTION_PROFILES], path, kind, consent))
    await _all(jobs)
    return failed


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def profile_ids(session: Session, emails: Sequence[str]) -> dict[str, str]:
    """Lower-cased email -> Klaviyo profile id, for those that have a profile."""
    found: dict[str, str] = {}
    unique = sorted({e.lower() for e in emails})

    async def look_up(part: Sequence[str]) -> None:
        params = {
            "filter": f"any(email,[{','.join(_quoted(e) for e in part)}])",
            "page[size]": PROFILE_PAGE,
            "fields[profile]": "email",
        }
        async for page in _pages(session, "/api/profiles", params):
            for item in page:
                email = (item.get("attributes") or {}).get("email")
                if email:
                    found[email.lower()] = item["id"]

    # All at once: the client paces them by the group's connections and windows.
    parts = [unique[i : i + PROFILE_PAGE] for i in range(0, len(unique), PROFILE_PAGE)]
    await _all(look_up(part) for part in parts)
    return found


async def _all(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Await every call side by side; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _imports(
    session: Session,
    people: Sequence[SyncPerson],
    parts: Iterable[tuple[str | None, list[int]]],
    profile: Callable[[SyncPerson], dict[str, Any]] | None = None,
) -> list[Awaitable[dict[int, str]]]:
    """Import jobs of ``people`` for each (list id or None, record indexes):
    each job's refused records as indexes into ``people``."""

    encoded = _encoded(people, profile)

    async def job(part: list[int], list_id: str | None) -> dict[int, str]:
        refused = await _import(
            session, [people[i] for i in part], [encoded[i] for i in part], list_id
        )
        return {part[n]: why for n, why in refused.items()}

    calls = []
    for list_id, indexes in parts:
        for chunk in _jobs([encoded[i] for i in indexes]):
            calls.append(job([indexes[n] for n in chunk], list_id))
    return calls


def _import_parts(
    session: Session, people: Sequence[SyncPerson]
) -> list[tuple[str | None, list[int]]]:
    """(list id or None, record indexes): the people joining each segment go
    in that segment's list's jobs, those joining none in jobs of their own."""
    joining: dict[str, list[int]] = {}
    for i, person in enumerate(people):
        for segment in sorted(person.add_to):
            joining.setdefault(segment, []).append(i)
    parts: list[tuple[str | None, list[int]]] = [
        (None, [i for i, p in enumerate(people) if not p.add_to])
    ]
    parts += [(session.lists[segment], ix) for segment, ix in sorted(joining.items())]
    return [(lid, ix) for lid, ix in parts if ix]


class _Jobs:
    """Jobs side by side, each answered on ``done`` as (kind, record indexes,
    refused records or the exception) when it completes."""

    def __init__(self) -> None:
        self.done: asyncio.Queue[tuple[str, list[int], Any]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.open = 0

    def start(self, kind: str, indexes: list[int], call: Awaitable[dict[int, str]]) -> None:
        async def run() -> None:
            try:
                outcome: Any = await call
            except Exception as exc:  # noqa: BLE001 - raised where the answers are read
                outcome = exc
            self.done.put_nowait((kind, indexes, outcome))

        self.tasks.append(asyncio.ensure_future(run()))
        self.open += 1

    async def next(self) -> tuple[str, list[int], dict[int, str]]:
        kind, indexes, outcome = await self.done.get()
        self.open -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return kind, indexes, outcome

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


async def upsert_parts(
    session: Session, people: Sequence[SyncPerson]
) -> AsyncIterator[tuple[list[int], list[RecordResult]]]:
    """Import the people, each into the lists of the segments they join
    (``add_to``: a job adds its profiles to one list, so one who joins two
    is imported twice, harmlessly), jobs side by side. Once all of a
    person's import jobs are complete, their consent goes, in jobs of
    SUBSCRIPTION_PROFILES, and each consent job's people are answered when it
    completes: their events can go while the call's later jobs run. No
    profile ids are read back: the lists are joined by email, and a removal
    looks its ids up. A job that fails after its retries fails the call (its
    records not answered yet are retried)."""
    jobs = _Jobs()
    failed: dict[int, str] = {}
    # Consent follows a completed import: a profile Klaviyo refused is not subscribed.
    ready: dict[bool, list[int]] = {True: [], False: []}

    def answers(indexes: list[int]) -> list[RecordResult]:
        return [RecordResult("failed", failed[i]) if i in failed
                else RecordResult.ok(people[i].remote_id) for i in indexes]  # fmt: skip

    try:
        left = await _start_imports(session, people, jobs)
        imports = jobs.open
        while jobs.open:
            kind, indexes, refused = await jobs.next()
            for n, why in refused.items():
                failed.setdefault(indexes[n], why)
            if kind == "consent":
                yield indexes, answers(indexes)
                continue
            imports -= 1
            settled = []
            for i in indexes:
                left[i] -= 1
                if left[i] == 0:
                    if i in failed or people[i].subscribed is None:
                        settled.append(i)  # no consent to set
                    else:
                        ready[bool(people[i].subscribed)].append(i)
            for queue in ready.values():
                while len(queue) >= SUBSCRIPTION_PROFILES or (queue and not imports):
                    part, queue[:] = queue[:SUBSCRIPTION_PROFILES], queue[SUBSCRIPTION_PROFILES:]
                    jobs.start("consent", part, _consent(session, [people[i] for i in part]))
            if settled:
                yield settled, answers(settled)
    finally:
        jobs.cancel()


async def _start_imports(
    session: Session, people: Sequence[SyncPerson], jobs: _Jobs
) -> dict[int, int]:
    """Start the people's import jobs; how many each person is in."""
    left: dict[int, int] = {}
    encoded: dict[int, bytes] = {}
    for list_id, indexes in _import_parts(session, people):
        new = [i for i in indexes if i not in encoded]
        encoded.update(zip(new, _encoded([people[i] for i in new]), strict=True))
        for chunk in _jobs([encoded[i] for i in indexes]):
            part = [indexes[n] for n in chunk]
            for i in part:
                left[i] = left.get(i, 0) + 1
            call = _import(session, [people[i] for i in part], [encoded[i] for i in part], list_id)
            jobs.start("import", part, call)
            # Its request goes out while the next lists' profiles are encoded.
            await asyncio.sleep(0)
    return left


async def upsert(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    """``upsert_parts``, answered all at once."""
    results: list[RecordResult | None] = [None] * len(people)
    async for indexes, answered in upsert_parts(session, people):
        for i, result in zip(indexes, answered, strict=True):
            results[i] = result
    return [r if r is not None else RecordResult("retry", "not answered") for r in results]


# -- membership ------------------------------------------------------------------------


def _members_body(people: Sequence[SyncPerson]) -> dict[str, Any]:
    return {"data": [{"type": "profile", "id": p.remote_id} for p in people]}


def _email_only(person: SyncPerson) -> dict[str, Any]:
    return {"type": "profile", "attributes": {"email": person.email}}


async def add(session: Session, segment: str, people: Sequence[SyncPerson]) -> list[RecordResult]:
    """Import jobs of the people's email addresses into the segment's list: no
    profile ids needed, and an import leaves the other fields as they are."""
    list_id = session.lists[segment]
    jobs = _imports(session, people, [(list_id, list(range(len(people))))], _email_only)
    failed: dict[int, str] = {}
    for refused in await _all(jobs):
        failed.update(refused)
    return [
        RecordResult("failed", failed[i]) if i in failed else RecordResult.ok(p.remote_id)
        for i, p in enumerate(people)
    ]


async def remove(
    session: Session, segment: str, people: Sequence[SyncPerson]
) -> list[RecordResult]:
    path = f"/api/lists/{session.lists[segment]}/relationships/profiles"
    unknown = [p.email for p in people if not p.remote_id]
    ids = await profile_ids(session, unknown) if unknown else {}
    people = [p if p.remote_id else replace(p, remote_id=ids.get(p.email.lower())) for p in people]
    known = [i for i, p in enumerate(people) if p.remote_id]
    failed: dict[int, str] = {}
    for start in range(0, len(known), MEMBER_IDS):
        part = known[start : start + MEMBER_IDS]
        # Removing a member twice leaves the same list.
        refused = await _excluding(
            session, "DELETE", path, [people[i] for i in part], _members_body, idempotent=True
        )
        failed.update({part[n]: why for n, why in refused.items()})
    # No profile with the address: no member to take out.
    return [
        RecordResult("failed", failed[i]) if i in failed else RecordResult.ok(p.remote_id)
        for i, p in enumerate(people)
    ]


# -- events ----------------------------------------------------------------------------


def _event(event: SyncEvent) -> dict[str, Any]:
    return {
        "type": "event",
        "attributes": {
            "metric": {"data": {"type": "metric", "attributes": {"name": event.name}}},
            "properties": {k: _value(v) for k, v in event.properties.items()},
            "time": event.time.isoformat(),
            "unique_id": event.unique_id,
        },
    }


def _events_body(groups: Sequence[tuple[str, list[SyncEvent]]]) -> dict[str, Any]:
    items = [
        {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "events": {"data": [_event(e) for e in evs]},
            },
        }
        for email, evs in groups
    ]
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {"events-bulk-create": {"data": items}},
        }
    }


async def events(session: Session, items: Sequence[SyncEvent]) -> list[RecordResult]:
    by_email: dict[str, list[SyncEvent]] = {}
    for event in items:
        by_email.setdefault(event.person.email.lower(), []).append(event)
    groups = list(by_email.items())
    failed: dict[str, str] = {}

    async def job(part: list[tuple[str, list[SyncEvent]]]) -> None:
        # Klaviyo drops an event whose unique_id it already has: a resend is no duplicate.
        refused = await _excluding(
            session, "POST", "/api/event-bulk-create-jobs", part, _events_body, idempotent=True
        )
        for n, why in refused.items():
            failed.update({e.unique_id: why for e in part[n][1]})

    await _all(
        job(groups[start : start + EVENT_PROFILES])
        for start in range(0, len(groups), EVENT_PROFILES)
    )
    return [
        RecordResult("failed", failed[e.unique_id]) if e.unique_id in failed else OK for e in items
    ]


# -- delete ----------------------------------------------------------------------------


def _deletion_body(person: SyncPerson) -> dict[str, Any]:
    profile = {"data": {"type": "profile", "attributes": {"email": person.email}}}
    return {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": profile}}}


async def _delete_one(session: Session, person: SyncPerson) -> RecordResult:
    try:
        # A second request for the same address deletes nothing more: safe to resend.
        response = await session.client.request(
            "POST", "/api/data-privacy-deletion-jobs", json=_deletion_body(person),
            idempotent=True,
        )  # fmt: skip
    except SyncFailure as exc:
        return RecordResult("retry", str(exc))
    if response.status_code < 300 or response.status_code == 404:
        return RecordResult.ok()
    return RecordResult("failed", _reason(response))


async def delete(session: Session, people: Sequence[SyncPerson]) -> list[RecordResult]:
    """Erase people for good: one deletion job each (Klaviyo takes one identifier a job)."""
    return list(await asyncio.gather(*(_delete_one(session, p) for p in people)))


# -- read ------------------------------------------------------------------------------


def _subscribed(consent: str | None) -> bool | None:
    if consent == "SUBSCRIBED":
        return True
    if consent == "UNSUBSCRIBED":
        return False
    return None


async def read(session: Session) -> dict[str, RemotePerson]:
    segments_of: dict[str, set[str]] = {}
    for segment, list_id in session.lists.items():
        url = f"/api/lists/{list_id}/relationships/profiles"
        async for page in _pages(session, url, {"page[size]": MEMBER_PAGE}):
            for item in page:
                segments_of.setdefault(item["id"], set()).add(segment)
    found: dict[str, RemotePerson] = {}
    params = {"page[size]": PROFILE_PAGE, "additional-fields[profile]": "subscriptions"}
    async for page in _pages(session, "/api/profiles", params):
        for item in page:
            attributes = item.get("attributes") or {}
            email = (attributes.get("email") or "").strip().lower()
            if not email:
                continue
            marketing = ((attributes.get("subscriptions") or {}).get("email") or {}).get(
                "marketing"
            ) or {}
            found[email] = RemotePerson(
                email=email,
                subscribed=_subscribed(marketing.get("consent")),
                segments=frozenset(segments_of.get(item["id"], ())),
                remote_id=item["id"],
            )
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
    rate_state=rate_state,
    memberships=("list",),
    rate_group=rate_group,
    adds_on_upsert=True,
    upsert_parts=upsert_parts,
)


@hookimpl
def register_esp_connectors(register) -> None:
    register(
        EspConnector(
            name="klaviyo",
            description="Klaviyo: profiles by bulk import, consent, segments as lists, events",
            sync=SYNC,
        )
    )
