"""A local fake of the HubSpot CRM v3 API, on the shared fake server.

What it serves (one portal, ``PORTAL_ID``):

- contacts: ``POST /crm/v3/objects/contacts/batch/upsert`` (by ``email`` or a
  unique property, up to 100 inputs; 207 with per-input errors when every
  input carries an ``objectWriteTraceId``, else one bad input fails the batch
  with 400 and nothing is written), ``POST .../batch/read``,
  ``GET /crm/v3/objects/contacts`` (paged with ``after``),
  ``GET/DELETE /crm/v3/objects/contacts/{id}``, ``POST .../gdpr-delete``;
- properties: ``GET/POST /crm/v3/properties/contacts``,
  ``GET /crm/v3/properties/contacts/{name}``;
- lists (v3): ``POST /crm/v3/lists``, ``GET/DELETE /crm/v3/lists/{listId}``,
  ``GET /crm/v3/lists/object-type-id/0-1/name/{name}``,
  ``PUT /crm/v3/lists/{listId}/memberships/add|remove|add-and-remove``,
  ``GET /crm/v3/lists/{listId}/memberships`` (paged, by record id);
- custom behavioural events: ``POST /events/v3/send`` and ``/events/v3/send/batch``,
  de-duplicated on ``uuid`` per event name as HubSpot documents (the first
  occurrence is kept, later ones are dropped; the answer is 204 either way,
  as HubSpot processes events after answering); an occurrence must name a
  defined event (its ``fullyQualifiedName``, ``pe<portal>_<name>``) and only
  its defined properties (or HubSpot's own ``hs_`` ones), else 400;
- event definitions: ``GET/POST /events/v3/event-definitions`` (paged with
  ``after``), ``GET /events/v3/event-definitions/{name}``, ``POST
  .../{name}/property``; a name already defined answers 409;
- ``GET /account-info/v3/details`` (the portal id an event name needs).

Auth is ``Authorization: Bearer <private app token>``; each token has scopes,
and a call without its scope gets 403 ``MISSING_SCOPES``. Rate limits are per
token over a rolling ten-second window (``TIERS``) plus a daily count per
portal, with ``X-HubSpot-RateLimit-*`` headers on every authenticated answer.

Tests read the state through plain-dict methods (``profiles``, ``profile``,
``list_members``, ``list_id``, ``events``, ``erased``, ``property_names``,
``snapshot``).
"""

from __future__ import annotations

import base64
import bisect
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from plugins.esp.fakes.server import FakeApi, Faults, Request, Response

TIERS: tuple[str, ...] = ("starter", "professional", "fast")
# Requests per ten-second window per private app, and per day per portal.
TEN_SECONDLY = {"starter": 100, "professional": 190, "fast": 10_000}
DAILY = {"starter": 250_000, "professional": 625_000, "fast": 100_000_000}
INTERVAL_SECONDS = 10.0

PORTAL_ID = 4242424
ACCESS_TOKEN = "pat-na1-11111111-2222-4333-8444-555555555555"
SCOPES = frozenset(
    {
        "crm.objects.contacts.read",
        "crm.objects.contacts.write",
        "crm.schemas.contacts.read",
        "crm.schemas.contacts.write",
        "crm.lists.read",
        "crm.lists.write",
        "analytics.behavioral_events.send",
        "behavioral_events.event_definitions.read_write",
    }
)
MAX_BATCH = 100
MAX_EVENT_BATCH = 500
MAX_MEMBERSHIP_IDS = 100_000
CONTACTS = "0-1"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TYPES = {
    "string": {"text", "textarea", "file", "phonenumber", "html"},
    "number": {"number", "calculation_equation"},
    "date": {"date"},
    "datetime": {"date"},
    "bool": {"booleancheckbox"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox", "calculation_equation"},
}
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and"
    " you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubSpotError(Exception):
    """An error answer in HubSpot's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str = "VALIDATION_ERROR",
        errors: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.category = status, message, category
        self.errors, self.extra = errors, extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            "category": self.category,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body | self.extra

    def response(self) -> Response:
        return Response(self.status, self.body())


def _invalid(message: str, where: str, code: str = "INVALID_INPUT") -> HubSpotError:
    return HubSpotError(400, message, errors=[{"message": message, "code": code, "in": where}])


@dataclass
class Prop:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str = "contactinformation"
    description: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    has_unique_value: bool = False
    read_only: bool = False
    hubspot_defined: bool = False
    created_at: str = field(default_factory=_now)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": self.group_name,
            "description": self.description,
            "options": self.options,
            "hasUniqueValue": self.has_unique_value,
            "hidden": False,
            "formField": not self.read_only,
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hubspotDefined": self.hubspot_defined,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "archived": False,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        }


BOOL_OPTIONS = [
    {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": False},
    {"label": "No", "value": "false", "displayOrder": 1, "hidden": False},
]
DEFAULT_PROPERTIES = (
    Prop("email", "Email", "string", "text", has_unique_value=True, hubspot_defined=True),
    Prop("firstname", "First Name", "string", "text", hubspot_defined=True),
    Prop("lastname", "Last Name", "string", "text", hubspot_defined=True),
    Prop("phone", "Phone Number", "string", "phonenumber", hubspot_defined=True),
    Prop("company", "Company Name", "string", "text", hubspot_defined=True),
    Prop("city", "City", "string", "text", hubspot_defined=True),
    Prop("country", "Country/Region", "string", "text", hubspot_defined=True),
    Prop(
        "lifecyclestage",
        "Lifecycle Stage",
        "enumeration",
        "radio",
        options=[
            {"label": v.title(), "value": v, "displayOrder": i, "hidden": False}
            for i, v in enumerate(("subscriber", "lead", "customer", "other"))
        ],
        hubspot_defined=True,
    ),
    # HubSpot does not let the CRM API set the global opt-out: subscriptions are
    # changed through the communication preferences API, so the fake refuses it.
    Prop(
        "hs_email_optout",
        "Unsubscribed from all email",
        "enumeration",
        "booleancheckbox",
        options=BOOL_OPTIONS,
        read_only=True,
        hubspot_defined=True,
    ),
    Prop("hs_object_id", "Record ID", "number", "number", read_only=True, hubspot_defined=True),
    Prop("createdate", "Create Date", "datetime", "date", read_only=True, hubspot_defined=True),
    Prop(
        "lastmodifieddate",
        "Last Modified Date",
        "datetime",
        "date",
        read_only=True,
        hubspot_defined=True,
    ),
)
# What a contact read returns when no properties are asked for.
DEFAULT_READ = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")


@dataclass
class Contact:
    id: int
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False
    archived_at: str | None = None


@dataclass
class HubList:
    id: int
    name: str
    processing_type: str
    created_at: str
    updated_at: str
    members: dict[int, str] = field(default_factory=dict)  # record id -> added at
    version: int = 1

    def body(self) -> dict[str, Any]:
        return {
            "listId": str(self.id),
            "listVersion": self.version,
            "name": self.name,
            "objectTypeId": CONTACTS,
            "processingType": self.processing_type,
            "processingStatus": "COMPLETE",
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "filtersUpdatedAt": self.created_at,
            "createdById": "1",
            "updatedById": "1",
            "size": len(self.members),
            "additionalProperties": {"hs_list_size": str(len(self.members))},
        }


class HubSpotApi(FakeApi):
    """The fake CRM v3 API; see the module's docstring."""

    name = "hubspot"

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        tier: str = TIERS[0],
        tokens: dict[str, frozenset[str]] | None = None,
        limit: int | None = None,
        interval: float = INTERVAL_SECONDS,
        daily: int | None = None,
        portal_id: int = PORTAL_ID,
    ) -> None:
        """``limit`` and ``interval`` override the tier's ten-second window (tests
        use a small one); ``tokens`` maps each valid token to its scopes."""
        super().__init__(faults)
        if tier not in TIERS:
            raise ValueError(f"hubspot has no tier {tier!r} (tiers: {', '.join(TIERS)})")
        self.tier = tier
        self.tokens = dict(tokens) if tokens is not None else {ACCESS_TOKEN: SCOPES}
        self.max_requests = limit if limit is not None else TEN_SECONDLY[tier]
        self.interval = interval
        self.daily_max = daily if daily is not None else DAILY[tier]
        self.portal_id = portal_id
        self.daily_count: dict[str, int] = {}
        self.props: dict[str, Prop] = {p.name: Prop(**p.__dict__) for p in DEFAULT_PROPERTIES}
        self.contacts: dict[int, Contact] = {}
        self._order: list[int] = []  # live contact ids, ascending
        self._unique: dict[str, dict[str, int]] = {"email": {}}  # property -> value -> id
        self.lists: dict[int, HubList] = {}
        self._events: list[dict[str, Any]] = []
        self._event_ids: set[tuple[str, str]] = set()
        # name -> definition, in creation order (the listing's order)
        self.definitions: dict[str, dict[str, Any]] = {}
        self._erased: set[str] = set()
        self._next_contact = 101
        self._next_list = 1
        self._routes()

    # -- what tests read -------------------------------------------------------------

    def profiles(self) -> dict[str, dict[str, str]]:
        """Live contacts: email -> properties (without HubSpot's own)."""
        with self.lock:
            return {
                c.properties["email"]: self._own(c)
                for c in self.contacts.values()
                if not c.archived and "email" in c.properties
            }

    def profile(self, email: str) -> dict[str, str] | None:
        with self.lock:
            cid = self._unique["email"].get(email.strip().lower())
            return None if cid is None else self._own(self.contacts[cid])

    def contact_id(self, email: str) -> str | None:
        with self.lock:
            cid = self._unique["email"].get(email.strip().lower())
            return None if cid is None else str(cid)

    def list_id(self, name: str) -> str | None:
        with self.lock:
            found = self._list_by_name(name)
            return None if found is None else str(found.id)

    def list_members(self, name: str) -> set[str]:
        """The emails of the members of the list named ``name``."""
        with self.lock:
            found = self._list_by_name(name)
            if found is None:
                raise KeyError(name)
            return {self.contacts[i].properties.get("email", str(i)) for i in found.members}

    def events(self, email: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Accepted event occurrences (after de-duplication), oldest first."""
        with self.lock:
            return [
                dict(e)
                for e in self._events
                if (email is None or e["email"] == email.lower())
                and (name is None or e["eventName"] == name)
            ]

    def snapshot(
        self, prefix: str = "segflow: ", consent: str = "segflow_marketing_consent"
    ) -> dict[str, Any]:
        """The portal in the shape every fake gives (engine tests, benchmarks):
        ``people`` by lower-cased email with ``subscribed`` (the ``consent``
        property: True ``subscribed``, False ``unsubscribed``, None otherwise),
        ``segments`` (the lists named ``prefix`` + a segment, as the connector
        names them, without the prefix) and ``properties`` (the contact's own,
        without email, the consent property and HubSpot's read-only ones);
        ``events`` as (email, event name, uuid), oldest first."""
        with self.lock:
            segments: dict[int, list[str]] = {}
            for hub_list in self.lists.values():
                if hub_list.name.startswith(prefix):
                    for cid in hub_list.members:
                        segments.setdefault(cid, []).append(hub_list.name[len(prefix) :])
            people: dict[str, Any] = {}
            for c in self.contacts.values():
                email = c.properties.get("email")
                if c.archived or not email:
                    continue
                value = c.properties.get(consent)
                people[email] = {
                    "subscribed": True if value == "subscribed" else
                    False if value == "unsubscribed" else None,
                    "segments": sorted(segments.get(c.id, [])),
                    "properties": {
                        k: v for k, v in self._own(c).items()
                        if k not in ("email", consent) and not self.props[k].read_only
                    },
                }  # fmt: skip
            events = [(e["email"], e["eventName"], e["uuid"]) for e in self._events]
            return {"people": people, "events": events}

    def erased(self) -> set[str]:
        """Emails deleted for good (or blocklisted, when unknown) through gdpr-delete."""
        with self.lock:
            return set(self._erased)

    def property_names(self) -> list[str]:
        with self.lock:
            return sorted(self.props)

    @staticmethod
    def _own(c: Contact) -> dict[str, str]:
        skip = {"hs_object_id", "createdate", "lastmodifieddate"}
        return {k: v for k, v in c.properties.items() if k not in skip}

    # -- auth, limits, errors ---------------------------------------------------------

    @staticmethod
    def _token(request: Request) -> str | None:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if kind.lower() == "bearer" and token.strip() else None

    def authorize(self, request: Request) -> Response | None:
        token = self._token(request)
        if token is None or token not in self.tokens:
            return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION").response()
        needed = _scope(request)
        if needed and needed not in self.tokens[token]:
            return HubSpotError(
                403,
                "This app hasn't been granted all required scopes to make this call."
                " Read more about required scopes here: https://developers.hubspot.com/scopes.",
                "MISSING_SCOPES",
                [
                    {
                        "message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [needed]},
                    }
                ],
                links={"scopes": "https://developers.hubspot.com/scopes"},
            ).response()
        return None

    def limit(self, request: Request) -> Response | None:
        token = self._token(request) or ""
        today = datetime.now(UTC).date().isoformat()
        if self.daily_count.get(today, 0) >= self.daily_max:
            return self._refused("daily", "DAILY", request)
        if not self.windows.take(token, self.max_requests, self.interval):
            return self._refused("ten_secondly_rolling", "TEN_SECONDLY_ROLLING", request)
        self.daily_count[today] = self.daily_count.get(today, 0) + 1
        return None

    def _refused(self, limit_name: str, policy: str, request: Request) -> Response:
        # HubSpot's 429 has no "category"; its errorType and policyName say which limit.
        body = {
            "status": "error",
            "message": f"You have reached your {limit_name} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
        }
        left, reset = self.windows.state(
            self._token(request) or "", self.max_requests, self.interval
        )
        # An injected refusal with room in the window: a slot is free at once, not
        # when the oldest request leaves it.
        reset = reset if left <= 0 else 0.0
        # HubSpot's docs promise only the rate headers; Retry-After (whole seconds
        # until the window frees a slot) is given too, as clients look for it.
        return Response(429, body, {"Retry-After": str(max(1, math.ceil(reset)))})

    def too_many(self, request: Request) -> Response:
        return self._refused("ten_secondly_rolling", "TEN_SECONDLY_ROLLING", request)

    def error(self, status: int, message: str) -> Response:
        if status == 400:
            return HubSpotError(400, f"Invalid input JSON: {message}", errors=[]).response()
        if status == 404:
            return HubSpotError(404, message, "OBJECT_NOT_FOUND").response()
        return HubSpotError(
            status, "internal error", "INTERNAL_ERROR" if status >= 500 else "ERROR"
        ).response()

    def handle(self, request: Request) -> tuple[Response | None, str | None]:
        response, fault = super().handle(request)
        token = self._token(request)
        if response is not None:
            response.headers["X-HubSpot-Correlation-Id"] = str(uuid.uuid4())
            if token in self.tokens:
                with self.lock:
                    left, _reset = self.windows.state(token, self.max_requests, self.interval)
                    used_today = self.daily_count.get(datetime.now(UTC).date().isoformat(), 0)
                response.headers.update(
                    {
                        "X-HubSpot-RateLimit-Max": str(self.max_requests),
                        "X-HubSpot-RateLimit-Remaining": str(left),
                        "X-HubSpot-RateLimit-Interval-Milliseconds": str(
                            round(self.interval * 1000)
                        ),
                        "X-HubSpot-RateLimit-Daily": str(self.daily_max),
                        "X-HubSpot-RateLimit-Daily-Remaining": str(
                            max(0, self.daily_max - used_today)
                        ),
                    }
                )
        return response, fault

    # -- routes ----------------------------------------------------------------------

    def _add(self, method: str, pattern: str, handler: Callable[[Request], Response]) -> None:
        def guarded(request: Request) -> Response:
            try:
                return handler(request)
            except HubSpotError as exc:
                return exc.response()

        self.route(method, pattern)(guarded)

    def _routes(self) -> None:
        c = "/crm/v3/objects/contacts"
        self._add("POST", c + "/batch/upsert", self._upsert)
        self._add("POST", c + "/batch/read", self._batch_read)
        self._add("POST", c + "/gdpr-delete", self._gdpr_delete)
        self._add("GET", c, self._get_contacts)
        self._add("GET", c + "/{contact_id}", self._get_contact)
        self._add("DELETE", c + "/{contact_id}", self._archive_contact)
        self._add("GET", "/crm/v3/properties/{object_type}", self._get_properties)
        self._add("POST", "/crm/v3/properties/{object_type}", self._create_property)
        self._add("GET", "/crm/v3/properties/{object_type}/{name}", self._get_property)
        self._add("POST", "/crm/v3/lists", self._create_list)
        self._add("GET", "/crm/v3/lists/object-type-id/{object_type}/name/{name}", self._by_name)
        self._add("GET", "/crm/v3/lists/{list_id}", self._get_list)
        self._add("DELETE", "/crm/v3/lists/{list_id}", self._delete_list)
        self._add("PUT", "/crm/v3/lists/{list_id}/memberships/add", self._add_members)
        self._add("PUT", "/crm/v3/lists/{list_id}/memberships/remove", self._remove_members)
        self._add("PUT", "/crm/v3/lists/{list_id}/memberships/add-and-remove", self._add_remove)
        self._add("GET", "/crm/v3/lists/{list_id}/memberships", self._get_members)
        self._add("POST", "/events/v3/send", self._send_event)
        self._add("POST", "/events/v3/send/batch", self._send_events)
        d = "/events/v3/event-definitions"
        self._add("GET", d, self._list_definitions)
        self._add("POST", d, self._create_definition)
        self._add("GET", d + "/{event_name}", self._get_definition)
        self._add("POST", d + "/{event_name}/property", self._add_event_property)
        self._add("GET", "/account-info/v3/details", self._account)

    # -- contacts ----------------------------------------------------------------------

    @staticmethod
    def _object(request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise _invalid("Invalid input JSON: expected an object", "body")
        return body

    def _inputs(self, body: dict[str, Any], maximum: int = MAX_BATCH) -> list[Any]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise _invalid("Some required fields were not set: [inputs]", "inputs", "REQUIRED")
        if len(inputs) > maximum:
            raise _invalid(
                f"Batch input size must be at most {maximum}; got {len(inputs)}.",
                "inputs",
                "TOO_MANY_INPUTS",
            )
        return inputs

    def _lookup(self, id_property: str, value: str) -> Contact | None:
        if id_property == "hs_object_id":
            c = self.contacts.get(int(value)) if value.isdigit() else None
        else:
            key = value.strip().lower() if id_property == "email" else value
            cid = self._unique.get(id_property, {}).get(key)
            c = self.contacts.get(cid) if cid is not None else None
        return c if c is not None and not c.archived else None

    def _check_values(self, properties: dict[str, Any]) -> list[dict[str, Any]]:
        """HubSpot's property validation results, one per bad value."""
        bad = []
        for name, value in properties.items():
            prop = self.props.get(name)
            text = _text(value)
            if prop is None:
                bad.append((name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'))
            elif prop.read_only:
                bad.append((name, "READ_ONLY_VALUE", f'"{name}" is a read only property'))
            elif text in ("", None):
                continue
            elif name == "email" and not EMAIL.match(text):
                bad.append((name, "INVALID_EMAIL", f"Email address {text} is invalid"))
            elif prop.type == "number" and not _is_number(text):
                # Docs silent on the code; HubSpot names the decimal parse.
                bad.append((name, "INVALID_DECIMAL", f"{text} is not a valid decimal"))
            elif prop.type in ("enumeration", "bool"):
                allowed = {o["value"] for o in prop.options} or {"true", "false"}
                wrong = [v for v in text.split(";") if v not in allowed]
                if wrong:
                    bad.append(
                        (
                            name,
                            "INVALID_OPTION",
                            f"{wrong[0]} was not one of the allowed options: {sorted(allowed)}",
                        )
                    )
            elif prop.type in ("date", "datetime") and not _is_date(text, prop.type):
                bad.append((name, "INVALID_DATE", f"{text} is not a valid {prop.type}"))
        return [
            {"isValid": False, "message": m, "error": code, "name": n, "localizedErrorMessage": m}
            for n, code, m in bad
        ]

    def _invalid_values(self, results: list[dict[str, Any]], trace: str | None) -> HubSpotError:
        import json

        return HubSpotError(
            400,
            "Property values were not valid: " + json.dumps(results),
            errors=[
                {
                    "message": r["message"],
                    "code": r["error"],
                    "context": {"propertyName": [r["name"]]},
                }
                for r in results
            ],
            context={"objectWriteTraceId": [trace]} if trace else {},
            links={},
        )

    def _upsert(self, request: Request) -> Response:
        started = _now()
        inputs = self._inputs(self._object(request))
        partial = all(isinstance(i, dict) and i.get("objectWriteTraceId") for i in inputs)
        plans: list[tuple[int, dict[str, Any]] | HubSpotError] = []
        seen: set[str] = set()
        for n, item in enumerate(inputs):
            trace = item.get("objectWriteTraceId") if isinstance(item, dict) else None
            try:
                plans.append((n, self._plan_upsert(n, item, seen)))
            except HubSpotError as exc:
                if not partial:
                    raise
                exc.extra.setdefault("context", {"objectWriteTraceId": [trace]})
                exc.extra["context"]["objectWriteTraceId"] = [trace]
                exc.extra.setdefault("links", {})
                if exc.errors is None:
                    exc.errors = []
                plans.append(exc)
        results, errors = [], []
        for plan in plans:
            if isinstance(plan, HubSpotError):
                body = plan.body()
                body.pop("correlationId")
                errors.append(body)
                continue
            _n, p = plan
            results.append(self._apply_upsert(p))
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now(),
        }
        if errors:
            body |= {"numErrors": len(errors), "errors": errors}
            return Response(207, body)
        return Response(200, body)

    def _plan_upsert(self, n: int, item: Any, seen: set[str]) -> dict[str, Any]:
        where = f"inputs[{n}]"
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be an object", where)
        id_property = item.get("idProperty")
        value = item.get("id")
        if not isinstance(value, str) or not value:
            raise _invalid(f"Some required fields were not set: [{where}.id]", f"{where}.id")
        if id_property not in self._unique:
            raise _invalid(
                f"{where}.idProperty: {id_property!r} is not a unique property of contacts",
                f"{where}.idProperty",
            )
        properties = item.get("properties")
        if not isinstance(properties, dict):
            raise _invalid(
                f"Some required fields were not set: [{where}.properties]", f"{where}.properties"
            )
        key = value.strip().lower() if id_property == "email" else value
        if key in seen:
            raise _invalid(f"Duplicate IDs found in batch input: [{value}]", f"{where}.id")
        seen.add(key)
        wanted = dict(properties)
        if id_property == "email":
            if not EMAIL.match(key):
                raise self._invalid_values(
                    [
                        {
                            "isValid": False,
                            "message": f"Email address {value} is invalid",
                            "error": "INVALID_EMAIL",
                            "name": "email",
                            "localizedErrorMessage": f"Email address {value} is invalid",
                        }
                    ],
                    item.get("objectWriteTraceId"),
                )
            wanted["email"] = key
        else:
            wanted[id_property] = key
        bad = self._check_values(wanted)
        if bad:
            raise self._invalid_values(bad, item.get("objectWriteTraceId"))
        return {
            "id_property": id_property,
            "key": key,
            "properties": wanted,
            "trace": item.get("objectWriteTraceId"),
        }

    def _apply_upsert(self, plan: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        contact = self._lookup(plan["id_property"], plan["key"])
        new = contact is None
        if contact is None:
            cid = self._next_contact
            self._next_contact += 1
            contact = Contact(cid, {"hs_object_id": str(cid), "createdate": now}, now, now)
            self.contacts[cid] = contact
            self._order.append(cid)
        for name, value in plan["properties"].items():
            text = _text(value)
            old = contact.properties.get(name)
            if name in self._unique and old is not None:
                self._unique[name].pop(old, None)
            if text in ("", None):
                contact.properties.pop(name, None)
            else:
                contact.properties[name] = text.lower() if name == "email" else text
                if name in self._unique:
                    self._unique[name][contact.properties[name]] = contact.id
        contact.updated_at = contact.properties["lastmodifieddate"] = now
        result = self._contact_body(contact, list(plan["properties"]))
        result["new"] = new
        if plan["trace"]:
            result["objectWriteTraceId"] = plan["trace"]
        return result

    def _contact_body(self, c: Contact, names: list[str] | None = None) -> dict[str, Any]:
        wanted = set(names or DEFAULT_READ) | {"hs_object_id", "createdate", "lastmodifieddate"}
        body: dict[str, Any] = {
            "id": str(c.id),
            "properties": {n: c.properties.get(n) for n in sorted(wanted) if n in self.props},
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
            "archived": c.archived,
        }
        if c.archived:
            body["archivedAt"] = c.archived_at
        return body

    @staticmethod
    def _names(request: Request) -> list[str] | None:
        values = request.query.get("properties")
        if not values:
            return None
        return [n for v in values for n in v.split(",") if n]

    def _batch_read(self, request: Request) -> Response:
        started = _now()
        body = self._object(request)
        inputs = self._inputs(body)
        id_property = body.get("idProperty") or "hs_object_id"
        if id_property != "hs_object_id" and id_property not in self._unique:
            raise _invalid(f"idProperty: {id_property!r} is not a unique property", "idProperty")
        names = body.get("properties") or None
        results, missing = [], []
        for n, item in enumerate(inputs):
            value = item.get("id") if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise _invalid(f"Some required fields were not set: [inputs[{n}].id]", "inputs")
            c = self._lookup(id_property, value)
            if c is None:
                missing.append(value)
            else:
                results.append(self._contact_body(c, names))
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now(),
        }
        if not missing:
            return Response(200, out)
        out["numErrors"] = 1
        out["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not"
                " exist. Check that ids are valid.",
                "context": {"ids": missing},
                "errors": [],
                "links": {},
            }
        ]
        return Response(207, out)

    def _page_limit(self, request: Request, default: int, maximum: int) -> int:
        raw = request.arg("limit", str(default)) or str(default)
        if not raw.isdigit() or not 1 <= int(raw) <= maximum:
            # Docs silent; refusing shows a client's wrong page size instead of capping it.
            raise _invalid(f"limit must be between 1 and {maximum}; got {raw}", "limit")
        return int(raw)

    def _get_contacts(self, request: Request) -> Response:
        limit = self._page_limit(request, 10, 100)
        archived = request.arg("archived", "false") == "true"
        after = request.arg("after")
        if after is not None and not after.isdigit():
            raise _invalid(f"after: {after!r} is not a valid cursor", "after")
        ids = (
            self._order
            if not archived
            else sorted(i for i, c in self.contacts.items() if c.archived)
        )
        start = bisect.bisect_left(ids, int(after)) if after is not None else 0
        page = ids[start : start + limit]
        names = self._names(request)
        body: dict[str, Any] = {
            "results": [self._contact_body(self.contacts[i], names) for i in page]
        }
        if start + limit < len(ids):
            nxt = str(ids[start + limit])
            link = f"/crm/v3/objects/contacts?after={nxt}&limit={limit}"
            body["paging"] = {"next": {"after": nxt, "link": link}}
        return Response(200, body)

    def _get_contact(self, request: Request) -> Response:
        value = unquote(request.params["contact_id"])
        id_property = request.arg("idProperty") or "hs_object_id"
        archived = request.arg("archived", "false") == "true"
        c = None
        if id_property == "hs_object_id" and value.isdigit():
            c = self.contacts.get(int(value))
            c = c if c is not None and c.archived == archived else None
        elif id_property in self._unique and not archived:
            c = self._lookup(id_property, value)
        if c is None:
            raise HubSpotError(
                404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND"
            )
        return Response(200, self._contact_body(c, self._names(request)))

    def _archive(self, c: Contact) -> None:
        c.archived, c.archived_at = True, _now()
        for name, index in self._unique.items():
            if index.get(c.properties.get(name, "")) == c.id:
                del index[c.properties[name]]
        self._order.remove(c.id)
        for hub_list in self.lists.values():
            hub_list.members.pop(c.id, None)

    def _archive_contact(self, request: Request) -> Response:
        value = request.params["contact_id"]
        c = self.contacts.get(int(value)) if value.isdigit() else None
        # HubSpot answers 204 for an id that is already gone: archiving is idempotent.
        if c is not None and not c.archived:
            self._archive(c)
        return Response(204)

    def _gdpr_delete(self, request: Request) -> Response:
        body = self._object(request)
        object_id = body.get("objectId")
        if not isinstance(object_id, str) or not object_id:
            raise _invalid("Some required fields were not set: [objectId]", "objectId", "REQUIRED")
        id_property = body.get("idProperty") or "hs_object_id"
        c = self._lookup(id_property, object_id)
        if c is None and id_property == "email":
            # HubSpot's docs: an address it does not know is blocklisted, so
            # it cannot come back; the answer is the same 204.
            self._erased.add(object_id.strip().lower())
            return Response(204)
        if c is None:
            raise HubSpotError(404, "Object not found.", "OBJECT_NOT_FOUND")
        email = c.properties.get("email")
        self._archive(c)
        del self.contacts[c.id]
        if email:
            self._erased.add(email)
        return Response(204)

    # -- properties ----------------------------------------------------------------------

    @staticmethod
    def _contacts_only(request: Request) -> None:
        if request.params["object_type"] not in ("contacts", "contact", CONTACTS):
            raise HubSpotError(
                400, f"Unable to infer object type from: {request.params['object_type']}"
            )

    def _get_properties(self, request: Request) -> Response:
        self._contacts_only(request)
        return Response(200, {"results": [p.body() for p in self.props.values()]})

    def _get_property(self, request: Request) -> Response:
        self._contacts_only(request)
        prop = self.props.get(request.params["name"])
        if prop is None:
            raise HubSpotError(
                404, f"Property {request.params['name']} does not exist", "OBJECT_NOT_FOUND"
            )
        return Response(200, prop.body())

    def _create_property(self, request: Request) -> Response:
        self._contacts_only(request)
        body = self._object(request)
        missing = [
            k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)
        ]
        if missing:
            raise HubSpotError(
                400,
                f"Some required fields were not set: {missing}",
                errors=[
                    {"message": f"{k} is required", "code": "REQUIRED", "in": k} for k in missing
                ],
            )
        name, kind, field_type = body["name"], body["type"], body["fieldType"]
        if not PROPERTY_NAME.match(str(name)):
            raise _invalid(
                f"Property name {name!r} must start with a lower-case letter and hold only"
                " lower-case letters, digits and underscores",
                "name",
            )
        if kind not in TYPES:
            raise _invalid(f"type {kind!r} is not one of {sorted(TYPES)}", "type")
        if field_type not in TYPES[kind]:
            raise _invalid(f"fieldType {field_type!r} is not valid for type {kind!r}", "fieldType")
        options = body.get("options") or []
        if kind == "enumeration" and not options:
            raise _invalid("An enumeration property needs options", "options")
        # Docs silent on the 409's category; HubSpot uses OBJECT_ALREADY_EXISTS for it.
        if name in self.props:
            raise HubSpotError(
                409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        prop = Prop(
            name,
            body["label"],
            kind,
            field_type,
            group_name=body["groupName"],
            description=body.get("description") or "",
            options=[
                {
                    "label": o.get("label", ""),
                    "value": o.get("value", ""),
                    "displayOrder": o.get("displayOrder", i),
                    "hidden": bool(o.get("hidden", False)),
                }
                for i, o in enumerate(options)
            ],
            has_unique_value=bool(body.get("hasUniqueValue")),
        )
        self.props[name] = prop
        if prop.has_unique_value:
            self._unique[name] = {}
        return Response(201, prop.body())

    # -- lists ---------------------------------------------------------------------------

    def _list_by_name(self, name: str) -> HubList | None:
        # List names are unique regardless of case in HubSpot.
        return next((x for x in self.lists.values() if x.name.lower() == name.lower()), None)

    def _list(self, request: Request) -> HubList:
        value = request.params["list_id"]
        found = self.lists.get(int(value)) if value.isdigit() else None
        if found is None:
            raise HubSpotError(404, f"List does not exist with id {value}", "OBJECT_NOT_FOUND")
        return found

    def _create_list(self, request: Request) -> Response:
        body = self._object(request)
        missing = [k for k in ("name", "objectTypeId", "processingType") if not body.get(k)]
        if missing:
            raise HubSpotError(
                400,
                f"Some required fields were not set: {missing}",
                errors=[
                    {"message": f"{k} is required", "code": "REQUIRED", "in": k} for k in missing
                ],
            )
        if body["objectTypeId"] != CONTACTS:
            raise _invalid(
                f"objectTypeId {body['objectTypeId']!r}: the fake has contacts (0-1) only",
                "objectTypeId",
            )
        if body["processingType"] not in ("MANUAL", "SNAPSHOT"):
            # The fake evaluates no filters, so it takes only lists changed by API.
            raise _invalid(
                f"processingType {body['processingType']!r}: the fake has MANUAL and SNAPSHOT",
                "processingType",
            )
        if self._list_by_name(body["name"]) is not None:
            raise _invalid(
                f"A list named {body['name']!r} already exists", "name", "LIST_NAME_ALREADY_EXISTS"
            )
        now = _now()
        hub_list = HubList(self._next_list, body["name"], body["processingType"], now, now)
        self._next_list += 1
        self.lists[hub_list.id] = hub_list
        return Response(200, {"list": hub_list.body()})

    def _get_list(self, request: Request) -> Response:
        return Response(200, {"list": self._list(request).body()})

    def _by_name(self, request: Request) -> Response:
        name = unquote(request.params["name"])
        found = self._list_by_name(name) if request.params["object_type"] == CONTACTS else None
        if found is None:
            raise HubSpotError(404, f"List does not exist with name {name}", "OBJECT_NOT_FOUND")
        return Response(200, {"list": found.body()})

    def _delete_list(self, request: Request) -> Response:
        del self.lists[self._list(request).id]
        return Response(204)

    def _ids(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise _invalid(f"{where} must be a JSON array of record ids", where)
        if len(value) > MAX_MEMBERSHIP_IDS:
            raise _invalid(f"{where}: at most {MAX_MEMBERSHIP_IDS} record ids a call", where)
        return [str(v) for v in value]

    def _change(self, hub_list: HubList, add: list[str], remove: list[str]) -> dict[str, Any]:
        added, removed, missing = [], [], []
        now = _now()
        for rid in add:
            c = self.contacts.get(int(rid)) if rid.isdigit() else None
            if c is None or c.archived:
                missing.append(rid)
            elif c.id not in hub_list.members:
                hub_list.members[c.id] = now
                added.append(rid)
        for rid in remove:
            c = self.contacts.get(int(rid)) if rid.isdigit() else None
            if c is None or c.archived:
                missing.append(rid)
            elif hub_list.members.pop(c.id, None) is not None:
                removed.append(rid)
        if added or removed:
            hub_list.updated_at = now
        # The reference pages spell it recordIdsAdded; HubSpot's OpenAPI spec (and so
        # the official SDK) spells it recordsIdsAdded. Both are given.
        return {
            "recordIdsAdded": added,
            "recordsIdsAdded": added,
            "recordIdsRemoved": removed,
            "recordIdsMissing": missing,
        }

    def _members_body(self, request: Request) -> tuple[HubList, Any]:
        hub_list = self._list(request)
        body = request.json()
        if hub_list.processing_type not in ("MANUAL", "SNAPSHOT"):
            raise _invalid("Only MANUAL and SNAPSHOT lists take membership changes", "listId")
        return hub_list, body

    def _add_members(self, request: Request) -> Response:
        hub_list, body = self._members_body(request)
        return Response(200, self._change(hub_list, self._ids(body, "body"), []))

    def _remove_members(self, request: Request) -> Response:
        hub_list, body = self._members_body(request)
        return Response(200, self._change(hub_list, [], self._ids(body, "body")))

    def _add_remove(self, request: Request) -> Response:
        hub_list, body = self._members_body(request)
        if not isinstance(body, dict):
            raise _invalid("body must be an object", "body")
        add = self._ids(body.get("recordIdsToAdd", []), "recordIdsToAdd")
        remove = self._ids(body.get("recordIdsToRemove", []), "recordIdsToRemove")
        return Response(200, self._change(hub_list, add, remove))

    def _get_members(self, request: Request) -> Response:
        hub_list = self._list(request)
        limit = self._page_limit(request, 100, 250)
        ids = sorted(hub_list.members)
        after, before = request.arg("after"), request.arg("before")
        if after is not None:
            start = bisect.bisect_right(ids, _cursor(after))
            page = ids[start : start + limit]
        elif before is not None:
            end = bisect.bisect_left(ids, _cursor(before))
            start = max(0, end - limit)
            page = ids[start:end]
        else:
            start, page = 0, ids[:limit]
        body: dict[str, Any] = {
            "results": [
                {"recordId": str(i), "membershipTimestamp": hub_list.members[i]} for i in page
            ],
            "total": len(ids),
        }
        paging: dict[str, Any] = {}
        if page and start + len(page) < len(ids):
            paging["next"] = {"after": _token_for(page[-1])}
        if page and start > 0:
            paging["prev"] = {"before": _token_for(page[0])}
        if paging:
            body["paging"] = paging
        return Response(200, body)

    # -- events --------------------------------------------------------------------------

    def _event(self, item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be an object", where)
        name = item.get("eventName")
        if not isinstance(name, str) or not name:
            raise _invalid(
                f"Some required fields were not set: [{where}eventName]", f"{where}eventName"
            )
        prefix = f"pe{self.portal_id}_"
        definition = self.definitions.get(name[len(prefix) :]) if name.startswith(prefix) else None
        if definition is None:
            raise _invalid(
                f"Event {name!r} is not defined (names are pe{self.portal_id}_<name>)",
                f"{where}eventName",
                "EVENT_NOT_FOUND",
            )
        properties = item.get("properties", {})
        if not isinstance(properties, dict):
            raise _invalid(f"{where}properties must be an object", f"{where}properties")
        defined = {p["name"] for p in definition["properties"]}
        unknown = sorted(k for k in properties if k not in defined and not k.startswith("hs_"))
        if unknown:
            raise _invalid(
                f"Property {unknown[0]!r} is not defined on event {name!r}",
                f"{where}properties.{unknown[0]}",
                "PROPERTY_NOT_FOUND",
            )
        occurred = item.get("occurredAt")
        if occurred is not None and not _is_date(str(occurred), "datetime"):
            raise _invalid(
                f"{where}occurredAt: {occurred!r} is not a date-time", f"{where}occurredAt"
            )
        email, object_id = item.get("email"), item.get("objectId")
        if not (email or object_id or item.get("utk")):
            raise _invalid(
                "One of email, objectId or utk is required to associate the event", where
            )
        if email is not None and not EMAIL.match(str(email)):
            raise _invalid(f"Email address {email} is invalid", f"{where}email", "INVALID_EMAIL")
        if object_id is not None:
            c = self._lookup("hs_object_id", str(object_id))
            if c is None:
                raise _invalid(f"No contact with id {object_id}", f"{where}objectId")
            email = c.properties.get("email")
        return {
            "eventName": name,
            "email": str(email).lower() if email else None,
            "objectId": str(object_id) if object_id is not None else None,
            "properties": dict(properties),
            "occurredAt": occurred or _now(),
            "uuid": item.get("uuid") or str(uuid.uuid4()),
        }

    def _record(self, event: dict[str, Any]) -> None:
        key = (event["eventName"], event["uuid"])
        if key in self._event_ids:
            return
        self._event_ids.add(key)
        if event["email"] and self._lookup("email", event["email"]) is None:
            # HubSpot creates the contact an event's email names.
            self._apply_upsert(
                {
                    "id_property": "email",
                    "key": event["email"],
                    "properties": {"email": event["email"]},
                    "trace": None,
                }
            )
        self._events.append(event)

    def _send_event(self, request: Request) -> Response:
        self._record(self._event(self._object(request), ""))
        return Response(204)

    def _send_events(self, request: Request) -> Response:
        inputs = self._inputs(self._object(request), MAX_EVENT_BATCH)
        events = [self._event(item, f"inputs[{n}].") for n, item in enumerate(inputs)]
        for event in events:
            self._record(event)
        return Response(204)

    # -- event definitions ------------------------------------------------------------

    def _definition_body(self, definition: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": definition["id"],
            "name": definition["name"],
            "fullyQualifiedName": f"pe{self.portal_id}_{definition['name']}",
            "labels": {"singular": definition["label"], "plural": None},
            "description": definition["description"],
            "primaryObject": "CONTACT",
            "archived": False,
            "properties": [dict(p) for p in definition["properties"]],
            "createdAt": definition["createdAt"],
        }

    @staticmethod
    def _event_property(item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be an object", where)
        missing = [k for k in ("name", "label", "type") if not item.get(k)]
        if missing:
            raise _invalid(f"Some required fields were not set: {missing}", where, "REQUIRED")
        if not PROPERTY_NAME.match(str(item["name"])) or str(item["name"]).startswith("hs_"):
            raise _invalid(f"Property name {item['name']!r} is not valid", f"{where}.name")
        if item["type"] not in ("string", "number", "enumeration", "datetime", "bool"):
            raise _invalid(f"type {item['type']!r} is not a valid event property type", where)
        return {"name": item["name"], "label": item["label"], "type": item["type"]}

    def _list_definitions(self, request: Request) -> Response:
        limit = self._page_limit(request, 20, 100)
        after = request.arg("after")
        if after is not None and not after.isdigit():
            raise _invalid(f"after: {after!r} is not a valid cursor", "after")
        search = request.arg("searchString")
        found = [d for d in self.definitions.values() if not search or search.lower() in d["name"]]
        start = int(after or 0)
        body: dict[str, Any] = {
            "results": [self._definition_body(d) for d in found[start : start + limit]]
        }
        if start + limit < len(found):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return Response(200, body)

    def _create_definition(self, request: Request) -> Response:
        body = self._object(request)
        missing = [k for k in ("label", "name", "primaryObject") if not body.get(k)]
        if missing:
            raise _invalid(f"Some required fields were not set: {missing}", "body", "REQUIRED")
        name = str(body["name"])
        if not PROPERTY_NAME.match(name):
            raise _invalid(
                f"Event name {name!r} must hold only lower-case letters, digits and underscores",
                "name",
            )
        if str(body["primaryObject"]).upper() not in ("CONTACT", "0-1"):
            raise _invalid("primaryObject: this fake knows only CONTACT", "primaryObject")
        if name in self.definitions:
            raise HubSpotError(
                409, f"An event named '{name}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        given = body.get("propertyDefinitions") or []
        if not isinstance(given, list):
            raise _invalid("propertyDefinitions must be a list", "propertyDefinitions")
        props = [self._event_property(p, f"propertyDefinitions[{n}]") for n, p in enumerate(given)]
        definition = {
            "id": str(len(self.definitions) + 1000),
            "name": name,
            "label": str(body["label"]),
            "description": str(body.get("description") or ""),
            "properties": props,
            "createdAt": _now(),
        }
        self.definitions[name] = definition
        return Response(201, self._definition_body(definition))

    def _definition(self, request: Request) -> dict[str, Any]:
        name = unquote(request.params["event_name"])
        definition = self.definitions.get(name)
        if definition is None:
            raise HubSpotError(404, f"Event '{name}' does not exist.", "OBJECT_NOT_FOUND")
        return definition

    def _get_definition(self, request: Request) -> Response:
        return Response(200, self._definition_body(self._definition(request)))

    def _add_event_property(self, request: Request) -> Response:
        definition = self._definition(request)
        prop = self._event_property(self._object(request), "body")
        if any(p["name"] == prop["name"] for p in definition["properties"]):
            raise HubSpotError(
                409, f"Property '{prop['name']}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        definition["properties"].append(prop)
        return Response(201, dict(prop))

    def _account(self, request: Request) -> Response:
        return Response(
            200,
            {
                "portalId": self.portal_id,
                "accountType": "STANDARD",
                "timeZone": "Etc/UTC",
                "companyCurrency": "USD",
                "additionalCurrencies": [],
                "utcOffset": "+00:00",
                "utcOffsetMilliseconds": 0,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            },
        )


def _scope(request: Request) -> str | None:
    path, write = request.path, request.method != "GET"
    if path.startswith("/crm/v3/objects/contacts"):
        read = path.endswith("/batch/read")
        return "crm.objects.contacts.write" if write and not read else "crm.objects.contacts.read"
    if path.startswith("/crm/v3/properties"):
        return "crm.schemas.contacts.write" if write else "crm.schemas.contacts.read"
    if path.startswith("/crm/v3/lists"):
        return "crm.lists.write" if write else "crm.lists.read"
    if path.startswith("/events/v3/send"):
        return "analytics.behavioral_events.send"
    if path.startswith("/events/v3/event-definitions"):
        return "behavioral_events.event_definitions.read_write"
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_date(text: str, kind: str) -> bool:
    if text.isdigit():
        # A date is midnight UTC in epoch milliseconds; a datetime any instant.
        return kind == "datetime" or int(text) % 86_400_000 == 0
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return kind == "datetime" or (parsed.hour, parsed.minute, parsed.second) == (0, 0, 0)


def _token_for(record_id: int) -> str:
    return base64.urlsafe_b64encode(str(record_id).encode()).decode().rstrip("=")


def _cursor(token: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except ValueError:
        raise _invalid(f"{token!r} is not a paging cursor", "after") from None


def make_api(tier: str, faults: Faults) -> HubSpotApi:
    """The fake at ``tier``: starter, professional, or fast (for tests)."""
    return HubSpotApi(faults, tier=tier)
