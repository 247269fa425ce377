"""A local fake of the Mailchimp Marketing API v3, on the shared fake server.

What it serves, under ``/3.0`` (the data centre of the key, ``<key>-us21``,
picks the host in production; here every data centre is this one server):

- ``GET /ping``, ``GET /`` (the account);
- audiences: ``GET/POST /lists``, ``GET /lists/{list_id}`` (the fake starts
  with one audience, ``DEFAULT_LIST_ID`` unless told otherwise);
- members: ``PUT/GET/PATCH/DELETE /lists/{id}/members/{subscriber_hash}``
  (upsert by the MD5 of the lower-cased email, ``status_if_new``, merge fields
  validated against the audience's, tags on create), ``POST /lists/{id}/members``,
  ``GET /lists/{id}/members`` (paged with ``count`` and ``offset``),
  ``POST .../actions/delete-permanent``;
- tags: ``POST/GET /lists/{id}/members/{hash}/tags``;
- merge fields: ``GET/POST /lists/{id}/merge-fields``;
- events: ``POST/GET /lists/{id}/members/{hash}/events``;
- batches: ``POST/GET /batches``, ``GET/DELETE /batches/{id}``, the results as
  a tar.gz of JSON files at the batch's ``response_body_url`` (served by the
  fake itself, without auth, as Mailchimp's are pre-signed links).

Auth is HTTP basic with any user name and the API key as password (what the
official SDK sends), ``Authorization: apikey <key>`` or an OAuth ``Bearer``
token. Errors are ``application/problem+json`` with Mailchimp's ``type``,
``title``, ``status``, ``detail``, ``instance`` and, on validation, ``errors``.

Mailchimp has no request-rate limit and sends no rate-limit headers: it allows
at most ``max_connections`` (10) requests in flight per key and answers the
next one 429 ``TooManyRequests``; a client adapts to the 429s. At most 500
batches may be pending; the next is refused 429 too.

Mailchimp has no idempotency key: a member upsert (PUT) is idempotent by
nature, but an event POSTed twice is two events, and so is a batch. The fake
does the same, which is what a connector's tests must face.

Tests read the fake's state through plain-dict methods (``members``,
``member``, ``events``, ``all_events``, ``forgotten``, ``batch``,
``merge_field_tags``, ``in_flight``), not through HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from plugins.esp.fakes.server import FakeApi, Faults, Request, Response

TIERS: tuple[str, ...] = ("default",)

API_KEY = "0123456789abcdef0123456789abcdef-us21"
ACCESS_TOKEN = "fake-mailchimp-oauth-token"
DEFAULT_LIST_ID = "a1b2c3d4e5"
MAX_CONNECTIONS = 10
MAX_PENDING_BATCHES = 500
# Mailchimp's documented maximum page size.
MAX_COUNT = 1000

ERRORS_URL = "https://mailchimp.com/developer/marketing/docs/errors/"
JSON = "application/json; charset=utf-8"
PROBLEM = "application/problem+json; charset=utf-8"
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
MERGE_TYPES = (
    "text",
    "number",
    "address",
    "phone",
    "date",
    "url",
    "imageurl",
    "radio",
    "dropdown",
    "birthday",
    "zip",
)
# A new audience's merge fields, as Mailchimp creates them.
DEFAULT_MERGE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("FNAME", "First Name", "text"),
    ("LNAME", "Last Name", "text"),
    ("ADDRESS", "Address", "address"),
    ("PHONE", "Phone Number", "phone"),
    ("BIRTHDAY", "Birthday", "birthday"),
)
EVENT_NAME = re.compile(r"^[A-Za-z0-9_-]{2,30}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
INVALID = (
    "The resource submitted could not be validated."
    " For field-specific details, see the 'errors' array."
)
TITLES = {
    400: "Bad Request",
    401: "API Key Invalid",
    403: "Forbidden",
    404: "Resource Not Found",
    405: "Method Not Allowed",
    429: "TooManyRequests",
    500: "Internal Server Error",
}
DETAILS = {
    400: "Your request could not be processed.",
    403: "You are not permitted to access this resource.",
    404: "The requested resource could not be found.",
    405: "The requested method and resource are not compatible.",
    429: "You have exceeded the limit of 10 simultaneous connections.",
    500: "An unexpected internal error has occurred. Please contact Support for more information.",
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased email."""
    return hashlib.md5(email.strip().lower().encode()).hexdigest()  # noqa: S324 - Mailchimp's


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class Problem(Exception):
    """An error answer in Mailchimp's problem+json shape."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or DETAILS.get(status, ""))
        self.status = status
        self.title = title or TITLES.get(status, "Error")
        self.detail = detail or DETAILS.get(status, "")
        self.errors = errors

    def response(self) -> Response:
        instance = str(uuid.uuid4())
        body: dict[str, Any] = {
            "type": ERRORS_URL,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return Response(self.status, body, {"X-Request-Id": instance}, PROBLEM)


def _invalid(field_name: str, message: str, detail: str = INVALID) -> Problem:
    return Problem(400, detail, "Invalid Resource", [{"field": field_name, "message": message}])


@dataclass
class Member:
    email: str
    status: str
    merge_fields: dict[str, Any]
    unique_email_id: str
    web_id: int
    contact_id: str
    email_type: str = "html"
    language: str = ""
    vip: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # name -> date added
    events: list[dict[str, Any]] = field(default_factory=list)
    timestamp_signup: str = ""
    timestamp_opt: str = ""
    last_changed: str = ""
    source: str = "API - Generic"


@dataclass
class Audience:
    id: str
    web_id: int
    name: str
    contact: dict[str, Any]
    permission_reminder: str
    campaign_defaults: dict[str, Any]
    email_type_option: bool
    date_created: str
    merge_fields: list[dict[str, Any]] = field(default_factory=list)
    tag_ids: dict[str, int] = field(default_factory=dict)  # tag name -> id
    members: dict[str, Member] = field(default_factory=dict)  # subscriber hash -> member
    forgotten: dict[str, str] = field(default_factory=dict)  # hash -> email, deleted for good
    double_optin: bool = False

    def merge_field(self, tag: str) -> dict[str, Any] | None:
        return next((f for f in self.merge_fields if f["tag"] == tag), None)


@dataclass
class Batch:
    id: str
    operations: list[dict[str, Any]]
    submitted_at: str
    status: str = "pending"
    finished_operations: int = 0
    errored_operations: int = 0
    completed_at: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    archive: bytes = b""
    stopped: bool = False


def _credential(headers: dict[str, str]) -> tuple[str, str] | None:
    """(scheme, secret) from the Authorization header: basic, ``apikey`` or bearer."""
    value = headers.get("authorization", "").strip()
    scheme, _, rest = value.partition(" ")
    scheme = scheme.lower()
    rest = rest.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode()
        except ValueError:
            return ("basic", "")
        return ("key", decoded.partition(":")[2])
    if scheme == "apikey":
        return ("key", rest)
    if scheme == "bearer":
        return ("token", rest)
    return None


class MailchimpApi(FakeApi):
    """The fake Marketing API; see the module's docstring."""

    name = "mailchimp"

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        api_keys: tuple[str, ...] = (API_KEY,),
        access_tokens: tuple[str, ...] = (ACCESS_TOKEN,),
        disabled_keys: tuple[str, ...] = (),
        list_id: str | None = DEFAULT_LIST_ID,
        list_name: str = "segflow audience",
        strict_merge_fields: bool = True,
        max_connections: int = MAX_CONNECTIONS,
        max_pending_batches: int = MAX_PENDING_BATCHES,
        batch_delay: float = 0.05,
        batch_op_seconds: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        """``latency``: seconds each request holds its connection slot after its
        answer is ready (the vendor's own time); ``batch_delay``: seconds a batch
        stays pending; ``batch_op_seconds``: seconds each of its operations takes.
        ``strict_merge_fields``: refuse merge fields the audience does not have
        (Mailchimp was seen to drop them silently; refusing shows the connector's
        mistake instead of losing the value)."""
        super().__init__(faults)
        self.api_keys = set(api_keys)
        self.access_tokens = set(access_tokens)
        self.disabled_keys = set(disabled_keys)
        self.strict_merge_fields = strict_merge_fields
        self.max_connections = max_connections
        self.max_pending_batches = max_pending_batches
        self.batch_delay = batch_delay
        self.batch_op_seconds = batch_op_seconds
        self.latency = latency
        self.lists: dict[str, Audience] = {}
        self.batches: dict[str, Batch] = {}
        self.default_list_id = list_id
        self._ids = iter(range(1, 1 << 62))
        self._slots: dict[str, int] = defaultdict(int)
        self._slots_lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        if list_id is not None:
            self._create_audience(
                {
                    "name": list_name,
                    "contact": {
                        "company": "segflow",
                        "address1": "1 Main St",
                        "city": "Atlanta",
                        "state": "GA",
                        "zip": "30308",
                        "country": "US",
                    },
                    "permission_reminder": "You signed up on our site.",
                    "campaign_defaults": {
                        "from_name": "segflow",
                        "from_email": "news@example.com",
                        "subject": "",
                        "language": "en",
                    },
                    "email_type_option": False,
                },
                list_id,
            )
        self._routes()

    # -- what tests read -----------------------------------------------------------

    def _audience_or_default(self, list_id: str | None) -> Audience:
        key = list_id or self.default_list_id
        if key is None or key not in self.lists:
            raise KeyError(f"no audience {key!r}")
        return self.lists[key]

    def members(
        self, list_id: str | None = None, *, include_archived: bool = False
    ) -> dict[str, dict[str, Any]]:
        """The audience's members by lower-cased email: ``email_address``,
        ``status``, ``merge_fields`` (the values set), ``tags`` (sorted names)."""
        with self.lock:
            audience = self._audience_or_default(list_id)
            return {
                m.email.lower(): self._plain(m)
                for m in audience.members.values()
                if include_archived or m.status != "archived"
            }

    def member(self, email: str, list_id: str | None = None) -> dict[str, Any] | None:
        """One member (archived ones too), or None."""
        with self.lock:
            found = self._audience_or_default(list_id).members.get(subscriber_hash(email))
            return None if found is None else self._plain(found)

    def events(self, email: str, list_id: str | None = None) -> list[dict[str, Any]]:
        """A member's events in the order they were posted."""
        with self.lock:
            found = self._audience_or_default(list_id).members.get(subscriber_hash(email))
            return [] if found is None else [dict(e) for e in found.events]

    def all_events(self, list_id: str | None = None) -> list[dict[str, Any]]:
        """Every event of the audience, each with its member's ``email_address``."""
        with self.lock:
            return [
                {"email_address": m.email, **e}
                for m in self._audience_or_default(list_id).members.values()
                for e in m.events
            ]

    def forgotten(self, list_id: str | None = None) -> set[str]:
        """Emails permanently deleted (they cannot be added back through the API)."""
        with self.lock:
            return set(self._audience_or_default(list_id).forgotten.values())

    def merge_field_tags(self, list_id: str | None = None) -> list[str]:
        with self.lock:
            return [f["tag"] for f in self._audience_or_default(list_id).merge_fields]

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's status and its operations' results (``status_code``,
        ``operation_id``, ``response`` as a JSON string)."""
        with self.lock:
            b = self.batches[batch_id]
            return {**self._batch_body(b, ""), "results": [dict(r) for r in b.results]}

    def snapshot(self, list_id: str | None = None) -> dict[str, Any]:
        """The audience in the shape every fake gives (engine tests, benchmarks):
        ``people`` by lower-cased email with ``subscribed`` (True subscribed,
        False unsubscribed or cleaned, None otherwise), ``segments`` (the tags,
        which the connector names after segflow's segments) and ``properties``
        (the merge fields set); ``events`` as (email, name, the ``unique_id``
        property or None), in the order they were posted per member."""
        with self.lock:
            audience = self._audience_or_default(list_id)
            people: dict[str, Any] = {}
            events: list[tuple[str, str, str | None]] = []
            for m in audience.members.values():
                if m.status == "archived":
                    continue
                email = m.email.lower()
                people[email] = {
                    "subscribed": True if m.status == "subscribed" else
                    False if m.status in ("unsubscribed", "cleaned") else None,
                    "segments": sorted(m.tags),
                    "properties": {k: v for k, v in m.merge_fields.items() if v not in (None, "")},
                }  # fmt: skip
                events.extend(
                    (email, e["name"], (e.get("properties") or {}).get("unique_id"))
                    for e in m.events
                )
            return {"people": people, "events": events}

    def in_flight(self, key: str = API_KEY) -> int:
        """Requests of ``key`` now holding a connection slot."""
        with self._slots_lock:
            return self._slots[key]

    @staticmethod
    def _plain(m: Member) -> dict[str, Any]:
        return {
            "email_address": m.email,
            "id": subscriber_hash(m.email),
            "status": m.status,
            "merge_fields": dict(m.merge_fields),
            "tags": sorted(m.tags),
        }

    # -- auth, limits, error shape -------------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        if request.path.startswith("/_fake/"):
            return None
        credential = _credential(request.headers)
        if credential is None or not credential[1]:
            return Problem(
                401, "Your request did not include an API key.", "API Key Missing"
            ).response()
        kind, secret = credential
        if kind == "token":
            if secret in self.access_tokens:
                return None
        elif secret in self.api_keys or secret in self.disabled_keys:
            if secret in self.disabled_keys:
                return Problem(403, "This account has been disabled.", "User Disabled").response()
            # A client that names a data centre in its Host must name the key's.
            host_dc = request.headers.get("host", "").split(".", 1)[0]
            key_dc = secret.rpartition("-")[2]
            if ".api.mailchimp.com" in request.headers.get("host", "") and host_dc != key_dc:
                return Problem(
                    403,
                    "The API key provided is linked to a different datacenter.",
                    "Wrong Datacenter",
                ).response()
            return None
        return Problem(
            401,
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            "API Key Invalid",
        ).response()

    def too_many(self, request: Request) -> Response:
        # Mailchimp's 429 carries no Retry-After and no rate-limit headers.
        return Problem(429, title="TooManyRequests").response()

    def error(self, status: int, message: str) -> Response:
        if status == 400 and message.startswith("body is not JSON"):
            return Problem(
                400, "We encountered an unspecified JSON parsing error.", "JSON Parse Error"
            ).response()
        if status == 404:
            return Problem(404).response()
        return Problem(status).response()

    def decorate(self, request: Request, response: Response) -> None:
        response.headers.setdefault("X-Request-Id", str(uuid.uuid4()))
        if request.method == "GET" and response.status == 200 and isinstance(response.body, dict):
            fields = request.arg("fields")
            exclude = request.arg("exclude_fields")
            if fields:
                response.body = _include(response.body, _tree(fields))
            if exclude:
                response.body = _exclude(response.body, _tree(exclude))

    def handle(self, request: Request) -> tuple[Response | None, str | None]:
        """Counts the request against its key's simultaneous connections."""
        credential = _credential(request.headers)
        slot = credential[1] if credential and credential[1] else None
        if slot is not None and (slot in self.api_keys or slot in self.access_tokens):
            with self._slots_lock:
                if self._slots[slot] >= self.max_connections:
                    return self.too_many(request), None
                self._slots[slot] += 1
        else:
            slot = None
        try:
            answer = super().handle(request)
            if self.latency:
                time.sleep(self.latency)
            return answer
        finally:
            if slot is not None:
                with self._slots_lock:
                    self._slots[slot] -= 1

    def close(self) -> None:
        """Cancel batches still waiting to run."""
        for timer in self._timers:
            timer.cancel()

    # -- routes ----------------------------------------------------------------------

    def _add(self, method: str, pattern: str, handler: Callable[[Request], Response]) -> None:
        def guarded(request: Request) -> Response:
            try:
                return handler(request)
            except Problem as problem:
                return problem.response()

        self.route(method, pattern)(guarded)

    def _routes(self) -> None:
        member = "/3.0/lists/{list_id}/members/{subscriber_hash}"
        for method, pattern, handler in (
            ("GET", "/3.0", self._root),
            ("GET", "/3.0/ping", self._ping),
            ("GET", "/3.0/lists", self._get_lists),
            ("POST", "/3.0/lists", self._post_list),
            ("GET", "/3.0/lists/{list_id}", self._get_list),
            ("GET", "/3.0/lists/{list_id}/merge-fields", self._get_merge_fields),
            ("POST", "/3.0/lists/{list_id}/merge-fields", self._post_merge_field),
            ("GET", "/3.0/lists/{list_id}/members", self._get_members),
            ("POST", "/3.0/lists/{list_id}/members", self._post_member),
            ("GET", member, self._get_member),
            ("PUT", member, self._put_member),
            ("PATCH", member, self._patch_member),
            ("DELETE", member, self._archive_member),
            ("POST", member + "/actions/delete-permanent", self._delete_permanent),
            ("GET", member + "/tags", self._get_tags),
            ("POST", member + "/tags", self._post_tags),
            ("GET", member + "/events", self._get_events),
            ("POST", member + "/events", self._post_event),
            ("GET", "/3.0/batches", self._get_batches),
            ("POST", "/3.0/batches", self._post_batch),
            ("GET", "/3.0/batches/{batch_id}", self._get_batch),
            ("DELETE", "/3.0/batches/{batch_id}", self._delete_batch),
            ("GET", "/_fake/batch-results/{batch_id}", self._batch_results),
        ):
            self._add(method, pattern, handler)

    # -- helpers ---------------------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids)

    def _audience(self, request: Request) -> Audience:
        audience = self.lists.get(request.params["list_id"])
        if audience is None:
            raise Problem(404)
        return audience

    def _member(self, request: Request) -> tuple[Audience, Member]:
        audience = self._audience(request)
        found = audience.members.get(_hash_param(request.params["subscriber_hash"]))
        if found is None:
            raise Problem(404)
        return audience, found

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            raise Problem(
                400, "We encountered an unspecified JSON parsing error.", "JSON Parse Error"
            ) from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise _invalid("", "Schema describes object, " + _json_type(body) + " found instead")
        return body

    @staticmethod
    def _page(request: Request) -> tuple[int, int]:
        try:
            count = int(request.arg("count", "10") or 10)
            offset = int(request.arg("offset", "0") or 0)
        except ValueError:
            raise Problem(400, "count and offset must be integers.", "Invalid Resource") from None
        if count < 0 or offset < 0:
            raise Problem(400, "count and offset must not be negative.", "Invalid Resource")
        # Mailchimp caps a page at its maximum rather than refusing the request.
        return min(count, MAX_COUNT), offset

    @staticmethod
    def _links(request: Request, path: str) -> list[dict[str, str]]:
        host = request.headers.get("host", "127.0.0.1")
        return [{"rel": "self", "href": f"http://{host}{path}", "method": "GET"}]

    @staticmethod
    def _ok(body: Any, status: int = 200) -> Response:
        return Response(status, body, {}, JSON)

    @staticmethod
    def _no_content() -> Response:
        return Response(204, None, {}, JSON)

    # -- account -------------------------------------------------------------------

    def _root(self, request: Request) -> Response:
        return self._ok(
            {
                "account_id": "fakeaccount",
                "login_id": "fakelogin",
                "account_name": "segflow",
                "email": "owner@example.com",
                "role": "owner",
                "total_subscribers": sum(
                    1
                    for a in self.lists.values()
                    for m in a.members.values()
                    if m.status == "subscribed"
                ),
            }
        )

    def _ping(self, request: Request) -> Response:
        return self._ok({"health_status": "Everything's Chimpy!"})

    # -- audiences -------------------------------------------------------------------

    def _create_audience(self, body: dict[str, Any], list_id: str | None = None) -> Audience:
        errors = [
            {"field": name, "message": "This value should not be blank."}
            for name in ("name", "permission_reminder")
            if not body.get(name)
        ]
        for part, keys in (
            ("contact", ("company", "address1", "city", "state", "zip", "country")),
            ("campaign_defaults", ("from_name", "from_email", "subject", "language")),
        ):
            given = body.get(part)
            if not isinstance(given, dict):
                errors.append({"field": part, "message": "This value should not be blank."})
                continue
            errors += [
                {"field": f"{part}.{k}", "message": "This value should not be blank."}
                for k in keys
                if given.get(k) is None or (k != "subject" and given.get(k) == "")
            ]
        if not isinstance(body.get("email_type_option"), bool):
            errors.append(
                {"field": "email_type_option", "message": "This value should be boolean."}
            )
        if errors:
            raise Problem(400, INVALID, "Invalid Resource", errors)
        new_id = list_id or uuid.uuid4().hex[:10]
        audience = Audience(
            id=new_id,
            web_id=self._next_id(),
            name=body["name"],
            contact=dict(body["contact"]),
            permission_reminder=body["permission_reminder"],
            campaign_defaults=dict(body["campaign_defaults"]),
            email_type_option=body["email_type_option"],
            date_created=_now(),
            double_optin=bool(body.get("double_optin", False)),
        )
        for order, (tag, name, kind) in enumerate(DEFAULT_MERGE_FIELDS, start=1):
            audience.merge_fields.append(_merge_field(new_id, order, tag, name, kind, {}))
        self.lists[new_id] = audience
        return audience

    def _list_body(self, request: Request, a: Audience) -> dict[str, Any]:
        statuses = [m.status for m in a.members.values()]
        return {
            "id": a.id,
            "web_id": a.web_id,
            "name": a.name,
            "contact": a.contact,
            "permission_reminder": a.permission_reminder,
            "use_archive_bar": True,
            "campaign_defaults": a.campaign_defaults,
            "notify_on_subscribe": "",
            "notify_on_unsubscribe": "",
            "date_created": a.date_created,
            "list_rating": 0,
            "email_type_option": a.email_type_option,
            "subscribe_url_short": "",
            "subscribe_url_long": "",
            "beamer_address": "",
            "visibility": "pub",
            "double_optin": a.double_optin,
            "has_welcome": False,
            "marketing_permissions": False,
            "modules": [],
            "stats": {
                "member_count": statuses.count("subscribed"),
                "total_contacts": len(statuses),
                "unsubscribe_count": statuses.count("unsubscribed"),
                "cleaned_count": statuses.count("cleaned"),
                "member_count_since_send": statuses.count("subscribed"),
                "unsubscribe_count_since_send": statuses.count("unsubscribed"),
                "cleaned_count_since_send": statuses.count("cleaned"),
                "campaign_count": 0,
                "merge_field_count": len(a.merge_fields),
                "avg_sub_rate": 0,
                "avg_unsub_rate": 0,
                "target_sub_rate": 0,
                "open_rate": 0,
                "click_rate": 0,
            },
            "_links": self._links(request, f"/3.0/lists/{a.id}"),
        }

    def _get_lists(self, request: Request) -> Response:
        count, offset = self._page(request)
        audiences = list(self.lists.values())
        return self._ok(
            {
                "lists": [self._list_body(request, a) for a in audiences[offset : offset + count]],
                "total_items": len(audiences),
                "constraints": {
                    "may_create": True,
                    "max_instances": 100,
                    "current_total_instances": len(audiences),
                },
                "_links": self._links(request, "/3.0/lists"),
            }
        )

    def _post_list(self, request: Request) -> Response:
        return self._ok(self._list_body(request, self._create_audience(self._body(request))))

    def _get_list(self, request: Request) -> Response:
        return self._ok(self._list_body(request, self._audience(request)))

    # -- merge fields ----------------------------------------------------------------

    def _get_merge_fields(self, request: Request) -> Response:
        audience = self._audience(request)
        count, offset = self._page(request)
        return self._ok(
            {
                "merge_fields": [dict(f) for f in audience.merge_fields[offset : offset + count]],
                "list_id": audience.id,
                "total_items": len(audience.merge_fields),
                "_links": self._links(request, f"/3.0/lists/{audience.id}/merge-fields"),
            }
        )

    def _post_merge_field(self, request: Request) -> Response:
        audience = self._audience(request)
        body = self._body(request)
        errors = [
            {"field": k, "message": "This value should not be blank."}
            for k in ("name", "type")
            if not body.get(k)
        ]
        if body.get("type") and body["type"] not in MERGE_TYPES:
            errors.append(
                {"field": "type", "message": "Value must be one of: " + ", ".join(MERGE_TYPES)}
            )
        if errors:
            raise Problem(400, INVALID, "Invalid Resource", errors)
        tag = str(body.get("tag") or f"MMERGE{len(audience.merge_fields) + 1}").upper()
        if not re.fullmatch(r"[A-Z0-9_]{1,10}", tag):
            raise _invalid("tag", "The tag must be up to 10 letters, digits or underscores.")
        if audience.merge_field(tag) is not None:
            raise Problem(
                400,
                f'A Merge Field with the tag "{tag}" already exists for this list.',
                "Invalid Resource",
            )
        created = _merge_field(
            audience.id,
            len(audience.merge_fields) + 1,
            tag,
            body["name"],
            body["type"],
            body,
        )
        audience.merge_fields.append(created)
        return self._ok(dict(created))

    # -- members ---------------------------------------------------------------------

    def _member_body(self, request: Request, audience: Audience, m: Member) -> dict[str, Any]:
        merge_fields: dict[str, Any] = {f["tag"]: "" for f in audience.merge_fields}
        merge_fields.update(m.merge_fields)
        member_hash = subscriber_hash(m.email)
        return {
            "id": member_hash,
            "email_address": m.email,
            "unique_email_id": m.unique_email_id,
            "contact_id": m.contact_id,
            "full_name": " ".join(
                str(v) for v in (m.merge_fields.get("FNAME"), m.merge_fields.get("LNAME")) if v
            ),
            "web_id": m.web_id,
            "email_type": m.email_type,
            "status": m.status,
            "consents_to_one_to_one_messaging": True,
            "merge_fields": merge_fields,
            "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
            "ip_signup": "",
            "timestamp_signup": m.timestamp_signup,
            "ip_opt": "",
            "timestamp_opt": m.timestamp_opt,
            "member_rating": 2,
            "last_changed": m.last_changed,
            "language": m.language,
            "vip": m.vip,
            "email_client": "",
            "location": {
                "latitude": 0,
                "longitude": 0,
                "gmtoff": 0,
                "dstoff": 0,
                "country_code": "",
                "timezone": "",
            },
            "source": m.source,
            "tags_count": len(m.tags),
            "tags": [{"id": audience.tag_ids[name], "name": name} for name in m.tags],
            "list_id": audience.id,
            "_links": self._links(request, f"/3.0/lists/{audience.id}/members/{member_hash}"),
        }

    def _check_merge_fields(
        self, audience: Audience, given: Any, *, creating: bool, current: dict[str, Any]
    ) -> dict[str, Any]:
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise _invalid(
                "merge_fields", "Schema describes object, " + _json_type(given) + " found instead"
            )
        errors: list[dict[str, str]] = []
        clean: dict[str, Any] = {}
        for tag, value in given.items():
            spec = audience.merge_field(str(tag).upper())
            if spec is None:
                if self.strict_merge_fields:
                    errors.append(
                        {"field": str(tag), "message": f'Merge field "{tag}" does not exist.'}
                    )
                continue
            message = _merge_value_error(spec, value)
            if message:
                errors.append({"field": spec["tag"], "message": message})
            else:
                clean[spec["tag"]] = value
        merged = {**current, **clean}
        for spec in audience.merge_fields:
            if spec["required"] and creating and merged.get(spec["tag"]) in (None, ""):
                errors.append({"field": spec["tag"], "message": "Please enter a value"})
        if errors:
            raise Problem(400, "Your merge fields were invalid.", "Invalid Resource", errors)
        return clean

    def _new_member(
        self, request: Request, audience: Audience, body: dict[str, Any], status: Any
    ) -> Member:
        email = body.get("email_address")
        if not isinstance(email, str) or not email:
            raise _invalid("email_address", "This value should not be blank.")
        if not EMAIL.match(email.strip()):
            raise Problem(400, "Please provide a valid email address.", "Invalid Resource")
        member_hash = subscriber_hash(email)
        if member_hash in audience.forgotten:
            raise Problem(
                400,
                f"{email} was permanently deleted and cannot be re-imported. "
                "The contact must re-subscribe to get back on the list.",
                "Forgotten Email Not Subscribed",
            )
        _check_status(status, "status_if_new" if "status_if_new" in body else "status")
        merge_fields = self._check_merge_fields(
            audience, body.get("merge_fields"), creating=True, current={}
        )
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _invalid("tags", "Schema describes array of strings.")
        now = _now()
        created = Member(
            email=email.strip(),
            status=status,
            merge_fields=merge_fields,
            unique_email_id=uuid.uuid4().hex[:10],
            web_id=self._next_id(),
            contact_id=uuid.uuid4().hex,
            email_type=str(body.get("email_type") or "html"),
            language=str(body.get("language") or ""),
            vip=bool(body.get("vip", False)),
            timestamp_signup=str(body.get("timestamp_signup") or ""),
            timestamp_opt=str(body.get("timestamp_opt") or (now if status == "subscribed" else "")),
            last_changed=now,
        )
        for name in tags:
            self._tag(audience, created, name, now)
        audience.members[member_hash] = created
        return created

    def _update_member(
        self, audience: Audience, found: Member, body: dict[str, Any], member_hash: str
    ) -> None:
        status = body.get("status")
        if status is not None:
            _check_status(status, "status")
        merge_fields = self._check_merge_fields(
            audience, body.get("merge_fields"), creating=False, current=found.merge_fields
        )
        email = body.get("email_address")
        if isinstance(email, str) and email and subscriber_hash(email) != member_hash:
            # A different address renames the member, unless it is taken.
            if not EMAIL.match(email.strip()):
                raise Problem(400, "Please provide a valid email address.", "Invalid Resource")
            if subscriber_hash(email) in audience.members:
                raise Problem(400, f"{email} is already a list member.", "Member Exists")
            del audience.members[member_hash]
            found.email = email.strip()
            audience.members[subscriber_hash(email)] = found
        now = _now()
        if status is not None and status != found.status:
            found.status = status
            if status == "subscribed":
                found.timestamp_opt = now
        found.merge_fields.update(merge_fields)
        for key in ("email_type", "language"):
            if isinstance(body.get(key), str):
                setattr(found, key, body[key])
        if "vip" in body:
            found.vip = bool(body["vip"])
        found.last_changed = now

    def _get_members(self, request: Request) -> Response:
        audience = self._audience(request)
        count, offset = self._page(request)
        status = request.arg("status")
        if status is not None and status not in (*STATUSES, "archived"):
            raise _invalid("status", "Value must be one of: " + ", ".join((*STATUSES, "archived")))
        # Archived members are listed only when asked for by status, as Mailchimp does.
        chosen = [
            m
            for m in audience.members.values()
            if (m.status == status if status else m.status != "archived")
        ]
        return self._ok(
            {
                "members": [
                    self._member_body(request, audience, m) for m in chosen[offset : offset + count]
                ],
                "list_id": audience.id,
                "total_items": len(chosen),
                "_links": self._links(request, f"/3.0/lists/{audience.id}/members"),
            }
        )

    def _get_member(self, request: Request) -> Response:
        audience, found = self._member(request)
        return self._ok(self._member_body(request, audience, found))

    def _post_member(self, request: Request) -> Response:
        audience = self._audience(request)
        body = self._body(request)
        email = body.get("email_address")
        if isinstance(email, str) and subscriber_hash(email) in audience.members:
            existing = audience.members[subscriber_hash(email)]
            if existing.status != "archived":
                raise Problem(
                    400,
                    f"{email} is already a list member. Use PUT to insert or update list members.",
                    "Member Exists",
                )
            del audience.members[subscriber_hash(email)]
        if "status" not in body:
            raise _invalid("status", "This value should not be blank.")
        created = self._new_member(request, audience, body, body["status"])
        return self._ok(self._member_body(request, audience, created))

    def _put_member(self, request: Request) -> Response:
        audience = self._audience(request)
        body = self._body(request)
        member_hash = _hash_param(request.params["subscriber_hash"])
        found = audience.members.get(member_hash)
        if found is not None and found.status == "archived":
            # An archived contact comes back as a new one.
            del audience.members[member_hash]
            found = None
        if found is None:
            email = body.get("email_address")
            if isinstance(email, str) and email and subscriber_hash(email) != member_hash:
                raise _invalid(
                    "email_address", "The email address does not match the subscriber hash."
                )
            status = body.get("status_if_new", body.get("status"))
            if status is None:
                raise _invalid("status_if_new", "This value should not be blank.")
            found = self._new_member(request, audience, body, status)
        else:
            self._update_member(audience, found, body, member_hash)
        return self._ok(self._member_body(request, audience, found))

    def _patch_member(self, request: Request) -> Response:
        audience, found = self._member(request)
        body = self._body(request)
        self._update_member(audience, found, body, _hash_param(request.params["subscriber_hash"]))
        return self._ok(self._member_body(request, audience, found))

    def _archive_member(self, request: Request) -> Response:
        _, found = self._member(request)
        if found.status == "archived":
            raise Problem(404)
        found.status = "archived"
        found.last_changed = _now()
        return self._no_content()

    def _delete_permanent(self, request: Request) -> Response:
        audience, found = self._member(request)
        member_hash = subscriber_hash(found.email)
        del audience.members[member_hash]
        audience.forgotten[member_hash] = found.email
        return self._no_content()

    # -- tags ------------------------------------------------------------------------

    def _tag(self, audience: Audience, m: Member, name: str, when: str) -> None:
        if name not in audience.tag_ids:
            audience.tag_ids[name] = self._next_id()
        m.tags.setdefault(name, when)

    def _get_tags(self, request: Request) -> Response:
        audience, found = self._member(request)
        count, offset = self._page(request)
        tags = [
            {"id": audience.tag_ids[name], "name": name, "date_added": added}
            for name, added in found.tags.items()
        ]
        return self._ok(
            {
                "tags": tags[offset : offset + count],
                "total_items": len(tags),
                "_links": self._links(request, request.path),
            }
        )

    def _post_tags(self, request: Request) -> Response:
        audience, found = self._member(request)
        body = self._body(request)
        tags = body.get("tags")
        if not isinstance(tags, list):
            raise _invalid("tags", "This value should not be blank.")
        errors = []
        for i, tag in enumerate(tags):
            if not isinstance(tag, dict) or not isinstance(tag.get("name"), str) or not tag["name"]:
                errors.append(
                    {"field": f"tags.item:{i}.name", "message": "This value should not be blank."}
                )
            elif tag.get("status") not in ("active", "inactive"):
                errors.append(
                    {
                        "field": f"tags.item:{i}.status",
                        "message": "Value must be one of: active, inactive",
                    }
                )
        if errors:
            raise Problem(400, INVALID, "Invalid Resource", errors)
        now = _now()
        for tag in tags:
            if tag["status"] == "active":
                self._tag(audience, found, tag["name"], now)
            else:
                found.tags.pop(tag["name"], None)
        found.last_changed = now
        return self._no_content()

    # -- events ----------------------------------------------------------------------

    def _get_events(self, request: Request) -> Response:
        _, found = self._member(request)
        count, offset = self._page(request)
        # Newest first, as Mailchimp's activity views list them.
        events = list(reversed(found.events))
        return self._ok(
            {
                "events": [dict(e) for e in events[offset : offset + count]],
                "total_items": len(events),
                "_links": self._links(request, request.path),
            }
        )

    def _post_event(self, request: Request) -> Response:
        _, found = self._member(request)
        body = self._body(request)
        name = body.get("name")
        if not isinstance(name, str) or not EVENT_NAME.match(name):
            raise _invalid(
                "name",
                "Event name must only contain letters, numbers, underscores, and dashes. "
                "Must be 2-30 characters in length.",
            )
        properties = body.get("properties") or {}
        if not isinstance(properties, dict) or not all(
            isinstance(v, str) for v in properties.values()
        ):
            raise _invalid("properties", "Event properties must be an object of string values.")
        occurred_at = body.get("occurred_at") or _now()
        if not isinstance(occurred_at, str) or _parse_time(occurred_at) is None:
            raise _invalid("occurred_at", "The date must be in ISO 8601 format.")
        found.events.append(
            {
                "name": name,
                "properties": dict(properties),
                "occurred_at": occurred_at,
                "is_syncing": bool(body.get("is_syncing", False)),
            }
        )
        return self._no_content()

    # -- batches ---------------------------------------------------------------------

    def _batch_body(self, b: Batch, base: str) -> dict[str, Any]:
        return {
            "id": b.id,
            "status": b.status,
            "total_operations": len(b.operations),
            "finished_operations": b.finished_operations,
            "errored_operations": b.errored_operations,
            "submitted_at": b.submitted_at,
            "completed_at": b.completed_at,
            "response_body_url": (
                f"{base}/_fake/batch-results/{b.id}" if b.status == "finished" and base else ""
            ),
        }

    @staticmethod
    def _base(request: Request) -> str:
        return "http://" + request.headers.get("host", "127.0.0.1")

    def _post_batch(self, request: Request) -> Response:
        body = self._body(request)
        operations = body.get("operations")
        if not isinstance(operations, list):
            raise _invalid("operations", "This value should not be blank.")
        errors = []
        for i, op in enumerate(operations):
            where = f"operations.item:{i}"
            if not isinstance(op, dict):
                errors.append(
                    {
                        "field": where,
                        "message": "Schema describes object, " + _json_type(op) + " found instead",
                    }
                )
                continue
            if op.get("method") not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                errors.append(
                    {
                        "field": f"{where}.method",
                        "message": "Value must be one of: GET, POST, PUT, PATCH, DELETE",
                    }
                )
            if not isinstance(op.get("path"), str) or not op["path"]:
                errors.append(
                    {"field": f"{where}.path", "message": "This value should not be blank."}
                )
            if "body" in op and not isinstance(op["body"], str):
                errors.append(
                    {
                        "field": f"{where}.body",
                        "message": "Schema describes string, "
                        + _json_type(op["body"])
                        + " found instead",
                    }
                )
            if "params" in op and not isinstance(op["params"], dict):
                errors.append(
                    {
                        "field": f"{where}.params",
                        "message": "Schema describes object, "
                        + _json_type(op["params"])
                        + " found instead",
                    }
                )
        if errors:
            raise Problem(400, INVALID, "Invalid Resource", errors)
        pending = sum(1 for b in self.batches.values() if b.status != "finished")
        if pending >= self.max_pending_batches:
            raise Problem(
                429,
                f"You have more than {self.max_pending_batches} pending batches. "
                "Please wait for some of them to finish.",
                "TooManyRequests",
            )
        batch = Batch(
            id=uuid.uuid4().hex[:10],
            operations=[dict(op) for op in operations],
            submitted_at=_now(),
        )
        self.batches[batch.id] = batch
        timer = threading.Timer(self.batch_delay, self._run_batch, args=(batch,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return self._ok(self._batch_body(batch, self._base(request)))

    def _run_batch(self, batch: Batch) -> None:
        with self.lock:
            if batch.stopped:
                return
            batch.status = "started"
        for op in batch.operations:
            if self.batch_op_seconds:
                time.sleep(self.batch_op_seconds)
            with self.lock:
                if batch.stopped:
                    return
                result = self._run_operation(op)
                batch.results.append(result)
                batch.finished_operations += 1
                if result["status_code"] >= 400:
                    batch.errored_operations += 1
        with self.lock:
            batch.archive = _archive(batch)
            batch.completed_at = _now()
            batch.status = "finished"

    def _run_operation(self, op: dict[str, Any]) -> dict[str, Any]:
        path = "/" + op["path"].lstrip("/")
        if not path.startswith("/3.0/") and path != "/3.0":
            path = "/3.0" + path
        request = Request(
            op["method"],
            path.split("?", 1)[0],
            {},
            {k: [str(v)] for k, v in (op.get("params") or {}).items()},
            {"host": "127.0.0.1"},
            str(op.get("body") or "").encode(),
        )
        found = None if path.startswith("/3.0/batches") else self._find(request)
        if found is None:
            response = Problem(404).response()
        else:
            handler, params = found
            request.params = params
            response = handler(request)
            self.decorate(request, response)
        return {
            "status_code": response.status,
            "operation_id": op.get("operation_id"),
            "response": "" if response.body is None else json.dumps(response.body),
        }

    def _get_batches(self, request: Request) -> Response:
        count, offset = self._page(request)
        batches = list(self.batches.values())
        base = self._base(request)
        return self._ok(
            {
                "batches": [self._batch_body(b, base) for b in batches[offset : offset + count]],
                "total_items": len(batches),
                "_links": self._links(request, "/3.0/batches"),
            }
        )

    def _get_batch(self, request: Request) -> Response:
        batch = self.batches.get(request.params["batch_id"])
        if batch is None:
            raise Problem(404)
        return self._ok(self._batch_body(batch, self._base(request)))

    def _delete_batch(self, request: Request) -> Response:
        batch = self.batches.pop(request.params["batch_id"], None)
        if batch is None:
            raise Problem(404)
        batch.stopped = True
        return self._no_content()

    def _batch_results(self, request: Request) -> Response:
        batch = self.batches.get(request.params["batch_id"])
        if batch is None or batch.status != "finished":
            # A pre-signed storage link that does not exist (yet).
            return Response(404, b"NoSuchKey", {}, "application/xml")
        return Response(200, batch.archive, {}, "application/x-gzip")


# -- module helpers -------------------------------------------------------------------


def _hash_param(value: str) -> str:
    """The member id of the path: an MD5 hash, or an email (Mailchimp takes either)."""
    return subscriber_hash(value) if "@" in value else value.lower()


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "object"


def _check_status(status: Any, field_name: str) -> None:
    if status not in STATUSES:
        raise _invalid(field_name, "Value must be one of: " + ", ".join(STATUSES))


def _merge_field(
    list_id: str, order: int, tag: str, name: str, kind: str, body: dict[str, Any]
) -> dict[str, Any]:
    options = dict(body.get("options") or {})
    if kind in ("text",):
        options.setdefault("size", 25)
    if kind in ("birthday",):
        options.setdefault("date_format", "MM/DD")
    if kind in ("date",):
        options.setdefault("date_format", "MM/DD/YYYY")
    return {
        "merge_id": order,
        "tag": tag,
        "name": name,
        "type": kind,
        "required": bool(body.get("required", False)),
        "default_value": str(body.get("default_value") or ""),
        "public": bool(body.get("public", True)),
        "display_order": int(body.get("display_order") or order + 1),
        "options": options,
        "help_text": str(body.get("help_text") or ""),
        "list_id": list_id,
    }


def _merge_value_error(spec: dict[str, Any], value: Any) -> str | None:
    """Mailchimp's message for a merge-field value of the wrong kind, or None."""
    if value in (None, ""):
        return None
    kind = spec["type"]
    if kind == "number":
        if isinstance(value, bool):
            return "Please enter a number"
        try:
            float(value)
        except (TypeError, ValueError):
            return "Please enter a number"
    elif kind == "address":
        if not isinstance(value, dict) or not all(
            value.get(k) for k in ("addr1", "city", "state", "zip")
        ):
            return "Please enter a complete address"
    elif kind in ("radio", "dropdown"):
        if value not in spec["options"].get("choices", []):
            return "Please choose one of the options"
    elif kind == "birthday":
        if not isinstance(value, str) or not re.fullmatch(r"\d{2}/\d{2}", value):
            return "Please enter the date in the format MM/DD"
    elif not isinstance(value, str | int | float):
        return "Please enter a value"
    return None


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _archive(batch: Batch) -> bytes:
    """The results as Mailchimp ships them: a tar.gz of JSON files, each an array
    of ``{status_code, operation_id, response}`` with the response as a string."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        chunk = 500
        for n in range(0, max(len(batch.results), 1), chunk):
            payload = json.dumps(batch.results[n : n + chunk]).encode()
            info = tarfile.TarInfo(f"{batch.id}-{n // chunk}.json")
            info.size = len(payload)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _tree(paths: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in paths.split(","):
        node = tree
        for part in path.strip().split("."):
            if part:
                node = node.setdefault(part, {})
    return tree


def _include(value: Any, tree: dict[str, Any]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [_include(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: _include(value[k], sub) for k, sub in tree.items() if k in value}
    return value


def _exclude(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_exclude(v, tree) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k not in tree:
                out[k] = v
            elif tree[k]:
                out[k] = _exclude(v, tree[k])
        return out
    return value


def make_api(tier: str, faults: Faults) -> MailchimpApi:
    """The fake at ``tier`` (Mailchimp has one: its limits are the same for all)."""
    if tier not in TIERS:
        raise ValueError(f"mailchimp has no tier {tier!r} (tiers: {', '.join(TIERS)})")
    return MailchimpApi(faults)
