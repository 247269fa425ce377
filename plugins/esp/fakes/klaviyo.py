"""A local fake of the Klaviyo API (JSON:API, revision 2024-10-15 or newer).

What segflow's Klaviyo connector uses: bulk profile import jobs, profiles,
email marketing subscriptions, lists and their members, events (single and
bulk) and data-privacy deletion, with Klaviyo's auth, error bodies, cursor
pagination and per-endpoint-group rate limits (burst per second, steady per
minute) with its ``RateLimit-*`` headers.

State is plain Python on the ``KlaviyoApi`` object; read it with
``profile_by_email``, ``consent``, ``list_members``, ``events_for``, ``state``
and ``snapshot`` (plain dicts), under the API's lock.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugins.esp.fakes.server import FakeApi, Faults, Request, Response

TIERS: tuple[str, ...] = ("default", "fast")

# (burst per second, steady per minute) by endpoint group, from Klaviyo's
# published tiers (M for profiles, lists and jobs, and for bulk event jobs,
# whose reference gives them M; XL for single events). Klaviyo counts in fixed
# windows; the shared sliding windows refuse no less.
LIMITS: dict[str, tuple[int, int]] = {
    "profiles": (10, 150),
    "lists": (10, 150),
    "jobs": (10, 150),
    "events": (350, 3500),
    "event-jobs": (10, 150),
}
MAX_IMPORT_PROFILES = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_RELATIONSHIP_IDS = 1_000
MAX_SUBSCRIPTION_PROFILES = 1_000
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
PROFILE_FIELDS = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _id(prefix: str = "") -> str:
    # Klaviyo's profile ids are 26-character ULID-like strings; the shape is
    # what a client stores, not its content.
    return (prefix + uuid.uuid4().hex.upper())[:26]


def _rel_links(kind: str, rid: str, name: str) -> dict[str, Any]:
    return {
        "links": {
            "self": f"/api/{kind}/{rid}/relationships/{name}/",
            "related": f"/api/{kind}/{rid}/{name}/",
        }
    }


@dataclass
class Job:
    kind: str
    id: str
    total: int
    errors: list[dict[str, Any]]
    polls_left: int
    list_id: str | None
    created: str

    @property
    def status(self) -> str:
        return "complete" if self.polls_left <= 0 else "processing"


class KlaviyoApi(FakeApi):
    name = "klaviyo"

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        limits: dict[str, tuple[int, int]] | None = None,
        burst_seconds: float = 1.0,
        steady_seconds: float = 60.0,
        job_polls: int = 1,
        api_keys: tuple[str, ...] = ("pk_test",),
        read_only_keys: tuple[str, ...] = ("pk_readonly",),
        page_size: int = PAGE_SIZE,
    ) -> None:
        super().__init__(faults)
        # A group left out of ``limits`` keeps Klaviyo's own.
        self.limits = dict(LIMITS) | dict(limits or {})
        self.burst_seconds = burst_seconds
        self.steady_seconds = steady_seconds
        self.job_polls = job_polls  # polls a job answers "processing" before "complete"
        self.api_keys = set(api_keys)
        # A private key whose scopes are all read-only: Klaviyo answers a
        # write with it 403 permission_denied.
        self.read_only_keys = set(read_only_keys)
        self.page_size = page_size
        self.profiles: dict[str, dict[str, Any]] = {}  # id -> attributes
        self.lists: dict[str, dict[str, Any]] = {}  # id -> {"name", "created", "members": [ids]}
        self.events: list[dict[str, Any]] = []
        # Indexes, so a fake of many profiles answers as fast as one of a few.
        self._emails: dict[str, str] = {}  # lower-cased email -> profile id
        self._event_keys: set[tuple[str, str, str]] = set()  # metric, unique_id, profile id
        self._members: dict[str, set[str]] = {}  # list id -> its members' ids
        self.jobs: dict[str, Job] = {}
        self.deleted: list[str] = []  # emails erased by data-privacy jobs
        self._seq = itertools.count(1)
        self._routes()

    # -- read API for tests and verify ----------------------------------------

    def profile_by_email(self, email: str) -> dict[str, Any] | None:
        with self.lock:
            pid = self._by_email(email)
            return None if pid is None else {"id": pid, **self.profiles[pid]}

    def consent(self, email: str) -> str | None:
        """The profile's email marketing consent, or None without a profile."""
        p = self.profile_by_email(email)
        return None if p is None else p["consent"]

    def list_members(self, list_id: str) -> list[str]:
        """The emails of a list's members, in the order they joined."""
        with self.lock:
            return [self.profiles[pid]["email"] for pid in self.lists[list_id]["members"]]

    def list_id(self, name: str) -> str | None:
        with self.lock:
            return next((i for i, v in self.lists.items() if v["name"] == name), None)

    def events_for(self, email: str) -> list[dict[str, Any]]:
        with self.lock:
            pid = self._by_email(email)
            return [dict(e) for e in self.events if e["profile_id"] == pid]

    def state(self) -> dict[str, Any]:
        """The whole remote state as plain data keyed by email and list name."""
        with self.lock:
            return {
                "profiles": {p["email"]: dict(p) for p in self.profiles.values() if p["email"]},
                "lists": {
                    v["name"]: [self.profiles[i]["email"] for i in v["members"]]
                    for v in self.lists.values()
                },
                "events": [dict(e) for e in self.events],
            }

    def snapshot(self, list_prefix: str = "segflow: ") -> dict[str, Any]:
        """The account in the shape every fake gives (engine tests, benchmarks):
        ``people`` by email with ``subscribed`` (True SUBSCRIBED, False
        UNSUBSCRIBED, None otherwise), ``segments`` (the names of the lists
        they are in that start with ``list_prefix``, the prefix taken off) and
        ``properties`` (the profile fields set, but the identifiers, and the
        custom properties); ``events`` as (email, metric name, unique_id)."""
        with self.lock:
            segments: dict[str, list[str]] = {}
            for v in self.lists.values():
                if v["name"].startswith(list_prefix):
                    for pid in v["members"]:
                        segments.setdefault(pid, []).append(v["name"][len(list_prefix) :])
            people: dict[str, Any] = {}
            for pid, p in self.profiles.items():
                if not p["email"]:
                    continue
                fields = {
                    f: p[f]
                    for f in PROFILE_FIELDS
                    if f not in ("email", "external_id") and p.get(f) is not None
                }
                people[p["email"]] = {
                    "subscribed": {"SUBSCRIBED": True, "UNSUBSCRIBED": False}.get(p["consent"]),
                    "segments": sorted(segments.get(pid, [])),
                    "properties": fields | dict(p["properties"]),
                }
            emails = {pid: p["email"] for pid, p in self.profiles.items()}
            events = [
                (emails.get(e["profile_id"]), e["metric"], e["unique_id"]) for e in self.events
            ]
            return {"people": people, "events": events}

    # -- the vendor's shapes ----------------------------------------------------

    def error(
        self, status: int, message: str, code: str = "invalid", pointer: str | None = None
    ) -> Response:
        titles = {
            400: "Invalid input.",
            401: "Not authorized.",
            403: "You do not have permission to perform this action.",
            404: "Not found.",
            405: "Method not allowed.",
            409: "Conflict.",
            413: "Request entity too large.",
            429: "Throttled.",
            500: "A server error occurred.",
        }
        codes = {404: "not_found", 500: "error", 401: "not_authenticated"}
        item: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": status,
            "code": codes.get(status, code) if code == "invalid" else code,
            "title": titles.get(status, "Error."),
            "detail": message,
            "source": {"pointer": pointer or "/data/"},
        }
        return Response(status, {"errors": [item]}, content_type="application/vnd.api+json")

    def authorize(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if not auth or scheme != "Klaviyo-API-Key":
            return self.error(
                401,
                "Missing or invalid authorization scheme. Please use Klaviyo-API-Key.",
                "not_authenticated",
            )
        if key not in self.api_keys | self.read_only_keys:
            return self.error(401, "Incorrect authentication credentials.", "not_authenticated")
        if key in self.read_only_keys and request.method != "GET":
            return self.error(
                403, "You do not have permission to perform this action.", "permission_denied"
            )
        revision = request.headers.get("revision")
        if not revision:
            return self.error(400, "You must specify an API revision.", "invalid", "/revision")
        if revision.split(".")[0] < "2024-10-15":
            return self.error(
                400, f"Invalid revision {revision!r} for this fake.", "invalid", "/revision"
            )
        return None

    def _group(self, request: Request) -> str:
        path = request.path
        if path.startswith("/api/event-bulk"):
            return "event-jobs"
        if path.startswith("/api/events"):
            return "events"
        if path.startswith("/api/lists"):
            return "lists"
        if "jobs" in path:
            return "jobs"
        return "profiles"

    def _windows(self, request: Request) -> list[tuple[str, int, float]]:
        group = self._group(request)
        burst, steady = self.limits[group]
        return [
            (f"{group}:burst", burst, self.burst_seconds),
            (f"{group}:steady", steady, self.steady_seconds),
        ]

    def limit(self, request: Request) -> Response | None:
        windows = self._windows(request)
        # A request counts against both windows only when both have room, so
        # a refusal uses no slot (what Klaviyo's counters do for a 429).
        if all(self.windows.state(k, n, s)[0] > 0 for k, n, s in windows):
            for key, n, seconds in windows:
                self.windows.take(key, n, seconds)
            return None
        return self.too_many(request)

    def too_many(self, request: Request) -> Response:
        windows = self._windows(request)
        waits = [self.windows.state(k, n, s) for k, n, s in windows]
        full = [reset for left, reset in waits if left == 0] or [self.burst_seconds]
        response = self.error(
            429,
            f"Request was throttled. Expected available in {math.ceil(max(full))} second.",
            "throttled",
        )
        del response.body["errors"][0]["source"]
        response.headers["Retry-After"] = str(max(1, math.ceil(max(full))))
        return response

    def decorate(self, request: Request, response: Response) -> None:
        # Klaviyo's docs: every non-429 answer carries the state of the
        # steady window; a 429 carries Retry-After instead.
        if not request.path.startswith("/api/") or response.status == 429:
            return
        key, n, seconds = self._windows(request)[1]
        left, reset = self.windows.state(key, n, seconds)
        response.headers["RateLimit-Limit"] = str(n)
        response.headers["RateLimit-Remaining"] = str(left)
        response.headers["RateLimit-Reset"] = str(math.ceil(reset))

    # -- helpers ------------------------------------------------------------------

    def _by_email(self, email: str | None) -> str | None:
        if not email:
            return None
        email = email.lower()
        pid = self._emails.get(email)
        # An address a profile changed away from still points at it: checked.
        return pid if pid in self.profiles and self.profiles[pid]["email"] == email else None

    def _join(self, list_id: str, pid: str) -> None:
        members = self.lists[list_id]["members"]
        have = self._members.get(list_id)
        if have is None or len(have) != len(members):
            have = self._members[list_id] = set(members)
        if pid not in have:
            members.append(pid)
            have.add(pid)

    def _by_external(self, external_id: str | None) -> str | None:
        if not external_id:
            return None
        return next((i for i, p in self.profiles.items() if p["external_id"] == external_id), None)

    def _profile_resource(self, pid: str) -> dict[str, Any]:
        p = self.profiles[pid]
        attrs = {f: p.get(f) for f in PROFILE_FIELDS}
        attrs.update(
            properties=dict(p["properties"]),
            created=p["created"],
            updated=p["updated"],
            subscriptions={
                "email": {
                    "marketing": {
                        "can_receive_email_marketing": p["consent"] == "SUBSCRIBED",
                        "consent": p["consent"],
                        "consent_timestamp": p.get("consent_timestamp"),
                    }
                }
            },
        )
        return {
            "type": "profile",
            "id": pid,
            "attributes": attrs,
            "relationships": {
                "lists": _rel_links("profiles", pid, "lists"),
                "segments": _rel_links("profiles", pid, "segments"),
            },
            "links": {"self": f"/api/profiles/{pid}/"},
        }

    def _validate_profile(self, attrs: Any, pointer: str) -> Response | None:
        if not isinstance(attrs, dict):
            return self.error(400, "attributes must be an object", pointer=pointer)
        if not any(attrs.get(k) for k in ("email", "phone_number", "external_id")):
            return self.error(
                400,
                "One of `email`, `phone_number`, or `external_id` is required.",
                pointer=f"{pointer}/email",
            )
        email = attrs.get("email")
        if email is not None and (
            not isinstance(email, str) or "@" not in email or "." not in email.split("@")[-1]
        ):
            return self.error(400, f"Invalid email address: {email!r}.", pointer=f"{pointer}/email")
        props = attrs.get("properties")
        if props is not None and not isinstance(props, dict):
            return self.error(400, "properties must be an object", pointer=f"{pointer}/properties")
        return None

    def _upsert(self, attrs: dict[str, Any]) -> tuple[str, bool]:
        """(profile id, created) for a profile keyed by email, then external id."""
        pid = self._by_email(attrs.get("email")) or self._by_external(attrs.get("external_id"))
        now = _now()
        created = pid is None
        if pid is None:
            pid = _id("01K")
            self.profiles[pid] = {
                **{f: None for f in PROFILE_FIELDS},
                "properties": {},
                "consent": "NEVER_SUBSCRIBED",
                "created": now,
            }
        self._apply(pid, attrs)
        return pid, created

    def _apply(self, pid: str, attrs: dict[str, Any]) -> None:
        p = self.profiles[pid]
        for f in PROFILE_FIELDS:
            if f in attrs:
                value = attrs[f]
                p[f] = value.lower() if f == "email" and isinstance(value, str) else value
                if f == "email" and p[f]:
                    self._emails[p[f]] = pid
        # Klaviyo merges properties key by key; a null value removes the key.
        for key, value in (attrs.get("properties") or {}).items():
            if value is None:
                p["properties"].pop(key, None)
            else:
                p["properties"][key] = value
        p["updated"] = _now()

    def _page(
        self, request: Request, items: list[Any], base: str, max_size: int = MAX_PAGE_SIZE
    ) -> tuple[list[Any], dict[str, Any]] | Response:
        size_arg = request.arg("page[size]")
        try:
            size = int(size_arg) if size_arg else min(self.page_size, max_size)
        except ValueError:
            return self.error(400, "page[size] must be an integer", pointer="page[size]")
        if not 1 <= size <= max_size:
            return self.error(
                400, f"page[size] must be between 1 and {max_size}", pointer="page[size]"
            )
        cursor = request.arg("page[cursor]")
        start = 0
        if cursor:
            # Klaviyo's cursors are opaque tokens; an offset in hex is enough
            # for a client that only follows links.next.
            try:
                start = int(cursor.removeprefix("bz"), 16) if cursor.startswith("bz") else -1
            except ValueError:
                start = -1
            if start < 0:
                return self.error(400, "Invalid page cursor.", pointer="page[cursor]")
        # Klaviyo's links are absolute URLs on the host that answered.
        base = f"http://{request.headers.get('host', '127.0.0.1')}{base}"
        links: dict[str, Any] = {"self": base, "next": None, "prev": None}
        if start + size < len(items):
            sep = "&" if "?" in base else "?"
            sized = f"page[size]={size}&" if size_arg else ""
            links["next"] = f"{base}{sep}{sized}page[cursor]=bz{start + size:x}"
        return items[start : start + size], links

    def _data(self, request: Request, kind: str) -> dict[str, Any] | Response:
        body = request.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return self.error(400, "data is required", pointer="/data")
        if data.get("type") != kind:
            return self.error(
                409,
                f"The type in the request body {data.get('type')!r} does not match {kind!r}.",
                "conflict",
                "/data/type",
            )
        return data

    def _job_resource(self, job: Job) -> dict[str, Any]:
        done = job.status == "complete"
        return {
            "type": job.kind,
            "id": job.id,
            "attributes": {
                "status": job.status,
                "created_at": job.created,
                "total_count": job.total,
                "completed_count": job.total - len(job.errors) if done else 0,
                "failed_count": len(job.errors) if done else 0,
                "completed_at": _now() if done else None,
                "expires_at": None,
                "started_at": job.created,
            },
            "relationships": {
                "lists": {"data": [{"type": "list", "id": job.list_id}] if job.list_id else []}
            },
            "links": {"self": f"/api/profile-bulk-import-jobs/{job.id}/"},
        }

    # -- routes -------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.route
        r("POST", "/api/profile-bulk-import-jobs")(self.import_create)
        r("GET", "/api/profile-bulk-import-jobs/{id}")(self.import_get)
        r("GET", "/api/profile-bulk-import-jobs/{id}/import-errors")(self.import_errors)
        r("GET", "/api/profiles")(self.profiles_list)
        r("POST", "/api/profiles")(self.profile_create)
        r("GET", "/api/profiles/{id}")(self.profile_get)
        r("PATCH", "/api/profiles/{id}")(self.profile_update)
        r("POST", "/api/profile-subscription-bulk-create-jobs")(self.subscribe)
        r("POST", "/api/profile-subscription-bulk-delete-jobs")(self.unsubscribe)
        r("GET", "/api/lists")(self.lists_list)
        r("POST", "/api/lists")(self.list_create)
        r("GET", "/api/lists/{id}")(self.list_get)
        r("GET", "/api/lists/{id}/relationships/profiles")(self.members_list)
        r("POST", "/api/lists/{id}/relationships/profiles")(self.members_add)
        r("DELETE", "/api/lists/{id}/relationships/profiles")(self.members_remove)
        r("POST", "/api/events")(self.event_create)
        r("GET", "/api/events")(self.events_list)
        r("POST", "/api/event-bulk-create-jobs")(self.events_bulk)
        r("POST", "/api/data-privacy-deletion-jobs")(self.delete_person)

    def import_create(self, request: Request) -> Response:
        if len(request.body) > MAX_IMPORT_BYTES:
            return self.error(413, "Payload exceeds 5 MB.", "payload_too_large", "/data")
        data = self._data(request, "profile-bulk-import-job")
        if isinstance(data, Response):
            return data
        items = (((data.get("attributes") or {}).get("profiles") or {}).get("data")) or []
        if not items:
            return self.error(400, "profiles is required", pointer="/data/attributes/profiles/data")
        if len(items) > MAX_IMPORT_PROFILES:
            return self.error(
                400,
                f"A job takes at most {MAX_IMPORT_PROFILES} profiles.",
                pointer="/data/attributes/profiles/data",
            )
        lists = (((data.get("relationships") or {}).get("lists") or {}).get("data")) or []
        list_id = lists[0]["id"] if lists else None
        if list_id is not None and list_id not in self.lists:
            return self.error(
                404, f"List {list_id} does not exist.", pointer="/data/relationships/lists"
            )
        errors: list[dict[str, Any]] = []
        for n, item in enumerate(items):
            pointer = f"/data/attributes/profiles/data/{n}/attributes"
            attrs = (item or {}).get("attributes")
            bad = self._validate_profile(attrs, pointer)
            if bad is not None:
                # Klaviyo validates each profile on its own: a bad one is an
                # import error of the job, the others are imported.
                errors.append({**bad.body["errors"][0], "original_payload": attrs})
                continue
            pid, _ = self._upsert(attrs)
            if list_id:
                self._join(list_id, pid)
        job = Job(
            "profile-bulk-import-job",
            _id("JOB"),
            len(items),
            errors,
            self.job_polls,
            list_id,
            _now(),
        )
        self.jobs[job.id] = job
        return Response(202, {"data": self._job_resource(job)})

    def import_get(self, request: Request) -> Response:
        job = self.jobs.get(request.params["id"])
        if job is None:
            return self.error(404, "Job not found.")
        body = {"data": self._job_resource(job)}
        job.polls_left -= 1
        return Response(200, body)

    def import_errors(self, request: Request) -> Response:
        job = self.jobs.get(request.params["id"])
        if job is None:
            return self.error(404, "Job not found.")
        rows = [
            {
                "type": "import-error",
                "id": f"{job.id}-{n}",
                "attributes": {
                    "code": e["code"],
                    "title": e["title"],
                    "detail": e["detail"],
                    "source": e["source"],
                    "original_payload": e["original_payload"],
                },
            }
            for n, e in enumerate(job.errors)
        ]
        page = self._page(request, rows, f"/api/profile-bulk-import-jobs/{job.id}/import-errors/")
        if isinstance(page, Response):
            return page
        return Response(200, {"data": page[0], "links": page[1]})

    def profiles_list(self, request: Request) -> Response:
        ids = list(self.profiles)
        flt = request.arg("filter")
        if flt:
            # Only what the connector asks: equals(FIELD,"...") or
            # any(FIELD,["...", ...]) on email, external_id or id.
            m = re.fullmatch(r'equals\((email|external_id|id),"([^"]*)"\)', flt)
            many = re.fullmatch(r"any\((email|external_id|id),(\[.*\])\)", flt)
            if m is not None:
                field_, values = m.group(1), {m.group(2)}
            elif many is not None:
                field_ = many.group(1)
                try:
                    values = {str(v) for v in json.loads(many.group(2))}
                except ValueError:
                    return self.error(400, f"Invalid filter: {flt}", pointer="filter")
            else:
                return self.error(400, f"Invalid filter: {flt}", pointer="filter")
            if field_ == "email":
                values = {v.lower() for v in values}
            ids = [i for i in ids if (i if field_ == "id" else self.profiles[i][field_]) in values]
        base = "/api/profiles/" + (f"?filter={flt}" if flt else "")
        page = self._page(request, ids, base)
        if isinstance(page, Response):
            return page
        return Response(
            200, {"data": [self._profile_resource(i) for i in page[0]], "links": page[1]}
        )

    def profile_get(self, request: Request) -> Response:
        pid = request.params["id"]
        if pid not in self.profiles:
            return self.error(404, f"A profile with id {pid} does not exist.")
        return Response(200, {"data": self._profile_resource(pid)})

    def profile_create(self, request: Request) -> Response:
        data = self._data(request, "profile")
        if isinstance(data, Response):
            return data
        attrs = data.get("attributes")
        bad = self._validate_profile(attrs, "/data/attributes")
        if bad is not None:
            return bad
        existing = self._by_email(attrs.get("email")) or self._by_external(attrs.get("external_id"))
        if existing is not None:
            # Klaviyo names the profile that holds the identifier in the
            # error's meta, so a client can PATCH it instead.
            response = self.error(
                409, "A profile already exists with one of these identifiers.", "duplicate_profile"
            )
            response.body["errors"][0]["meta"] = {"duplicate_profile_id": existing}
            return response
        pid, _ = self._upsert(attrs)
        return Response(201, {"data": self._profile_resource(pid)})

    def profile_update(self, request: Request) -> Response:
        pid = request.params["id"]
        if pid not in self.profiles:
            return self.error(404, f"A profile with id {pid} does not exist.")
        data = self._data(request, "profile")
        if isinstance(data, Response):
            return data
        if data.get("id") != pid:
            return self.error(
                409, "The id in the body does not match the URL.", "conflict", "/data/id"
            )
        attrs = data.get("attributes") or {}
        if "email" in attrs:
            bad = self._validate_profile(attrs, "/data/attributes")
            if bad is not None:
                return bad
            other = self._by_email(attrs["email"])
            if other is not None and other != pid:
                response = self.error(
                    409, "A profile already exists with this email.", "duplicate_profile"
                )
                response.body["errors"][0]["meta"] = {"duplicate_profile_id": other}
                return response
        self._apply(pid, attrs)
        return Response(200, {"data": self._profile_resource(pid)})

    def _subscription_profiles(
        self, data: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], str | None] | Response:
        attrs = data.get("attributes") or {}
        profiles = ((attrs.get("profiles") or {}).get("data")) or []
        if not profiles:
            return self.error(400, "profiles is required", pointer="/data/attributes/profiles")
        if len(profiles) > MAX_SUBSCRIPTION_PROFILES:
            return self.error(
                400,
                f"A job takes at most {MAX_SUBSCRIPTION_PROFILES} profiles.",
                pointer="/data/attributes/profiles/data",
            )
        lst = ((data.get("relationships") or {}).get("list") or {}).get("data") or {}
        list_id = lst.get("id")
        if list_id is not None and list_id not in self.lists:
            return self.error(
                404, f"List {list_id} does not exist.", pointer="/data/relationships/list"
            )
        return [p.get("attributes") or {} for p in profiles], list_id

    def subscribe(self, request: Request) -> Response:
        data = self._data(request, "profile-subscription-bulk-create-job")
        if isinstance(data, Response):
            return data
        got = self._subscription_profiles(data)
        if isinstance(got, Response):
            return got
        profiles, list_id = got
        for n, attrs in enumerate(profiles):
            marketing = ((attrs.get("subscriptions") or {}).get("email") or {}).get("marketing")
            if (marketing or {}).get("consent") != "SUBSCRIBED":
                return self.error(
                    400,
                    "consent must be SUBSCRIBED",
                    pointer=f"/data/attributes/profiles/data/{n}/attributes/subscriptions"
                    "/email/marketing/consent",
                )
            if not attrs.get("email"):
                return self.error(
                    400,
                    "email is required to subscribe to email marketing",
                    pointer=f"/data/attributes/profiles/data/{n}/attributes/email",
                )
            # An address Klaviyo would not import it does not subscribe either.
            bad = self._validate_profile(
                {"email": attrs["email"]}, f"/data/attributes/profiles/data/{n}/attributes"
            )
            if bad is not None:
                return bad
        for attrs in profiles:
            pid, _ = self._upsert({"email": attrs["email"]})
            p = self.profiles[pid]
            if p["consent"] != "SUBSCRIBED":
                p["consent"] = "SUBSCRIBED"
                p["consent_timestamp"] = _now()
            if list_id:
                self._join(list_id, pid)
        return Response(202)

    def unsubscribe(self, request: Request) -> Response:
        data = self._data(request, "profile-subscription-bulk-delete-job")
        if isinstance(data, Response):
            return data
        got = self._subscription_profiles(data)
        if isinstance(got, Response):
            return got
        profiles, _ = got
        for attrs in profiles:
            pid, _ = self._upsert({"email": attrs.get("email")})
            p = self.profiles[pid]
            # Klaviyo unsubscribes from email marketing account-wide, and
            # leaves list membership as it was.
            p["consent"] = "UNSUBSCRIBED"
            p["consent_timestamp"] = _now()
        return Response(202)

    def _list_resource(self, lid: str) -> dict[str, Any]:
        v = self.lists[lid]
        return {
            "type": "list",
            "id": lid,
            "attributes": {
                "name": v["name"],
                "created": v["created"],
                "updated": v["created"],
                "opt_in_process": "single_opt_in",
            },
            "links": {"self": f"/api/lists/{lid}/"},
        }

    def lists_list(self, request: Request) -> Response:
        ids = list(self.lists)
        page = self._page(request, ids, "/api/lists/", max_size=10)
        if isinstance(page, Response):
            return page
        return Response(200, {"data": [self._list_resource(i) for i in page[0]], "links": page[1]})

    def list_get(self, request: Request) -> Response:
        lid = request.params["id"]
        if lid not in self.lists:
            return self.error(404, f"A list with id {lid} does not exist.")
        return Response(200, {"data": self._list_resource(lid)})

    def list_create(self, request: Request) -> Response:
        data = self._data(request, "list")
        if isinstance(data, Response):
            return data
        name = (data.get("attributes") or {}).get("name")
        if not isinstance(name, str) or not name.strip():
            return self.error(400, "name is required", pointer="/data/attributes/name")
        lid = _id("L")[:6]
        self.lists[lid] = {"name": name, "created": _now(), "members": []}
        return Response(201, {"data": self._list_resource(lid)})

    def members_list(self, request: Request) -> Response:
        lid = request.params["id"]
        if lid not in self.lists:
            return self.error(404, f"A list with id {lid} does not exist.")
        base = f"/api/lists/{lid}/relationships/profiles/"
        page = self._page(request, self.lists[lid]["members"], base, max_size=1000)
        if isinstance(page, Response):
            return page
        return Response(
            200, {"data": [{"type": "profile", "id": i} for i in page[0]], "links": page[1]}
        )

    def _member_ids(self, request: Request) -> list[str] | Response:
        lid = request.params["id"]
        if lid not in self.lists:
            return self.error(404, f"A list with id {lid} does not exist.")
        body = request.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data:
            return self.error(400, "data must be a list of profiles", pointer="/data")
        if len(data) > MAX_RELATIONSHIP_IDS:
            return self.error(
                400, f"At most {MAX_RELATIONSHIP_IDS} profiles a request.", pointer="/data"
            )
        ids = []
        for n, item in enumerate(data):
            pid = (item or {}).get("id")
            if (item or {}).get("type") != "profile" or pid not in self.profiles:
                return self.error(400, f"Invalid profile id {pid!r}.", pointer=f"/data/{n}/id")
            ids.append(pid)
        return ids

    def members_add(self, request: Request) -> Response:
        ids = self._member_ids(request)
        if isinstance(ids, Response):
            return ids
        for pid in ids:
            self._join(request.params["id"], pid)
        return Response(204)

    def members_remove(self, request: Request) -> Response:
        ids = self._member_ids(request)
        if isinstance(ids, Response):
            return ids
        lst = self.lists[request.params["id"]]
        gone = set(ids)
        lst["members"] = [m for m in lst["members"] if m not in gone]
        self._members.pop(request.params["id"], None)
        return Response(204)

    def _store_event(self, attrs: Any, pointer: str) -> Response | None:
        if not isinstance(attrs, dict):
            return self.error(400, "attributes must be an object", pointer=pointer)
        metric = ((attrs.get("metric") or {}).get("data") or {}).get("attributes") or {}
        name = metric.get("name")
        if not isinstance(name, str) or not name:
            return self.error(
                400, "metric name is required", pointer=f"{pointer}/metric/data/attributes/name"
            )
        pattrs = ((attrs.get("profile") or {}).get("data") or {}).get("attributes") or {}
        bad = self._validate_profile(pattrs, f"{pointer}/profile/data/attributes")
        if bad is not None:
            return bad
        props = attrs.get("properties")
        if not isinstance(props, dict):
            return self.error(400, "properties is required", pointer=f"{pointer}/properties")
        unique_id = attrs.get("unique_id") or str(uuid.uuid4())
        pid, _ = self._upsert(pattrs)
        # Klaviyo drops an event whose unique_id it already has for the same
        # metric and profile, and still answers 202.
        key = (name, unique_id, pid)
        if key in self._event_keys:
            return None
        self._event_keys.add(key)
        self.events.append(
            {
                "id": str(next(self._seq)),
                "metric": name,
                "profile_id": pid,
                "properties": props,
                "time": attrs.get("time") or _now(),
                "value": attrs.get("value"),
                "unique_id": unique_id,
            }
        )
        return None

    def event_create(self, request: Request) -> Response:
        data = self._data(request, "event")
        if isinstance(data, Response):
            return data
        bad = self._store_event(data.get("attributes"), "/data/attributes")
        return bad or Response(202)

    def events_bulk(self, request: Request) -> Response:
        data = self._data(request, "event-bulk-create-job")
        if isinstance(data, Response):
            return data
        items = ((data.get("attributes") or {}).get("events-bulk-create") or {}).get("data") or []
        if not items:
            return self.error(
                400, "events-bulk-create is required", pointer="/data/attributes/events-bulk-create"
            )
        if len(items) > 1000:
            return self.error(
                400, "At most 1000 profiles a job.", pointer="/data/attributes/events-bulk-create"
            )
        for n, item in enumerate(items):
            a = (item or {}).get("attributes") or {}
            profile = a.get("profile") or {}
            for m, ev in enumerate(((a.get("events") or {}).get("data")) or []):
                ea = dict((ev or {}).get("attributes") or {})
                ea["profile"] = profile
                bad = self._store_event(
                    ea, f"/data/attributes/events-bulk-create/data/{n}/events/data/{m}/attributes"
                )
                if bad is not None:
                    return bad
        return Response(202)

    def events_list(self, request: Request) -> Response:
        rows = [
            {
                "type": "event",
                "id": e["id"],
                "attributes": {
                    "timestamp": int(datetime.fromisoformat(e["time"]).timestamp()),
                    "datetime": e["time"],
                    "uuid": e["unique_id"],
                    "event_properties": e["properties"],
                },
                "relationships": {
                    "profile": {"data": {"type": "profile", "id": e["profile_id"]}},
                    "metric": {"data": {"type": "metric", "id": e["metric"]}},
                },
                "links": {"self": f"/api/events/{e['id']}/"},
            }
            for e in self.events
        ]
        page = self._page(request, rows, "/api/events/", max_size=200)
        if isinstance(page, Response):
            return page
        return Response(200, {"data": page[0], "links": page[1]})

    def delete_person(self, request: Request) -> Response:
        data = self._data(request, "data-privacy-deletion-job")
        if isinstance(data, Response):
            return data
        prof = ((data.get("attributes") or {}).get("profile") or {}).get("data") or {}
        pa = prof.get("attributes") or {}
        given = [k for k in ("email", "phone_number") if pa.get(k)]
        given += ["id"] if prof.get("id") else []
        if len(given) > 1:
            # Klaviyo's docs: one identifier a request, else an error.
            return self.error(
                400,
                f"Only one identifier may be given; got {', '.join(given)}.",
                pointer="/data/attributes/profile/data",
            )
        pid = (
            prof.get("id")
            or self._by_email(pa.get("email"))
            or self._by_external(pa.get("external_id"))
        )
        if pid is None and not (pa.get("email") or pa.get("phone_number")):
            return self.error(
                400,
                "A profile id, email or phone number is required.",
                pointer="/data/attributes/profile/data",
            )
        if pid in self.profiles:
            self.deleted.append(self.profiles[pid]["email"])
            del self.profiles[pid]
            for v in self.lists.values():
                v["members"] = [m for m in v["members"] if m != pid]
            self._members.clear()
            self.events = [e for e in self.events if e["profile_id"] != pid]
            self._event_keys = {k for k in self._event_keys if k[2] != pid}
        return Response(202)


def make_api(tier: str = "default", faults: Faults | None = None, **overrides: Any) -> KlaviyoApi:
    """The Klaviyo fake at ``tier`` ("fast": every limit times a hundred)."""
    if tier not in TIERS:
        raise ValueError(f"no tier {tier!r} ({', '.join(TIERS)})")
    if tier == "fast" and "limits" not in overrides:
        overrides["limits"] = {k: (b * 100, s * 100) for k, (b, s) in LIMITS.items()}
    return KlaviyoApi(faults, **overrides)
