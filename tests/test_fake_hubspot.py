"""The HubSpot CRM v3 fake (plugins/esp/fakes/hubspot.py).

First the official SDK (hubspot-api-client), pointed at the fake through its
``host`` setting, does every operation the fake supports and reads back what
it wrote: that is the proof the fake speaks the API. Then raw HTTP (httpx)
checks what the SDK hides: auth and scope failures, validation errors, the
ten-second rate window and its headers, idempotency, each injected fault and
paged reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    PublicGdprDeleteInput,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.lists import ListCreateRequest
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from hubspot.events.send import BehavioralEventHttpCompletionRequest

from plugins.esp.fakes import make_fake
from plugins.esp.fakes.hubspot import ACCESS_TOKEN, PORTAL_ID, SCOPES, TIERS, HubSpotApi
from plugins.esp.fakes.server import Faults, running

EVENT = f"pe{PORTAL_ID}_segment_entered"


@pytest.fixture
def served() -> Iterator[tuple[HubSpotApi, str]]:
    api = HubSpotApi(tier="fast")
    with running(api) as url:
        yield api, url


def sdk(url: str, token: str = ACCESS_TOKEN) -> HubSpot:
    return HubSpot(access_token=token, host=url)


def raw(url: str, token: str = ACCESS_TOKEN, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=5, **kwargs
    )


def define_event(client: httpx.Client, name: str = "segment_entered", *props: str) -> None:
    """Event definitions have no call in the SDK: over plain HTTP, as the connector does."""
    body = {
        "name": name,
        "label": name,
        "primaryObject": "CONTACT",
        "propertyDefinitions": [{"name": p, "label": p, "type": "string"} for p in props],
    }
    assert client.post("/events/v3/event-definitions", json=body).status_code == 201


def upsert_input(email: str, trace: str | None = None, **props: str) -> dict[str, Any]:
    item: dict[str, Any] = {"idProperty": "email", "id": email, "properties": props}
    if trace:
        item["objectWriteTraceId"] = trace
    return item


def test_sdk_contacts_upsert_read_page_and_delete(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    client = sdk(url)
    batch = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            SimplePublicObjectBatchInputUpsert(
                id=f"P{i}@Example.com",
                id_property="email",
                properties={"firstname": f"P{i}"},
                object_write_trace_id=f"t{i}",
            )
            for i in range(3)
        ]
    )
    first = client.crm.contacts.batch_api.upsert(batch)
    assert first.status == "COMPLETE"
    assert sorted((r.properties["email"], r.new) for r in first.results) == [
        (f"p{i}@example.com", True) for i in range(3)
    ]
    assert {r.object_write_trace_id for r in first.results} == {"t0", "t1", "t2"}
    again = client.crm.contacts.batch_api.upsert(batch)
    assert [r.new for r in again.results] == [False] * 3
    assert {r.id for r in again.results} == {r.id for r in first.results}
    assert api.profile("p1@example.com") == {"email": "p1@example.com", "firstname": "P1"}

    read = client.crm.contacts.batch_api.read(
        BatchReadInputSimplePublicObjectId(
            id_property="email",
            inputs=[SimplePublicObjectId(id="p2@example.com")],
            properties=["firstname"],
            properties_with_history=[],
        )
    )
    assert [r.properties["firstname"] for r in read.results] == ["P2"]

    pid = api.contact_id("p0@example.com")
    one = client.crm.contacts.basic_api.get_by_id(pid, properties=["firstname", "email"])
    assert one.properties["firstname"] == "P0" and one.id == pid

    seen, after = [], None
    while True:
        page = client.crm.contacts.basic_api.get_page(limit=2, after=after)
        seen += [r.properties["email"] for r in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
    assert seen == [f"p{i}@example.com" for i in range(3)]

    client.crm.contacts.basic_api.archive(pid)
    with pytest.raises(ContactsApiException) as missing:
        client.crm.contacts.basic_api.get_by_id(pid)
    assert missing.value.status == 404
    client.crm.contacts.basic_api.purge(
        PublicGdprDeleteInput(object_id="p1@example.com", id_property="email")
    )
    assert api.erased() == {"p1@example.com"}
    assert set(api.profiles()) == {"p2@example.com"}


def test_sdk_properties_lists_memberships_and_events(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    client = sdk(url)
    created = client.crm.properties.core_api.create(
        "contacts",
        PropertyCreate(
            name="segflow_consent",
            label="Consent",
            type="enumeration",
            field_type="booleancheckbox",
            group_name="contactinformation",
            options=[
                {"label": "Yes", "value": "true", "hidden": False},
                {"label": "No", "value": "false", "hidden": False},
            ],
        ),
    )
    assert created.name == "segflow_consent"
    names = {p.name for p in client.crm.properties.core_api.get_all("contacts").results}
    assert {"email", "firstname", "segflow_consent"} <= names
    with pytest.raises(PropertiesApiException) as exists:
        client.crm.properties.core_api.create(
            "contacts",
            PropertyCreate(
                name="segflow_consent",
                label="C",
                type="string",
                field_type="text",
                group_name="contactinformation",
            ),
        )
    assert exists.value.status == 409

    ids = [
        r.id
        for r in client.crm.contacts.batch_api.upsert(
            BatchInputSimplePublicObjectBatchInputUpsert(
                inputs=[
                    SimplePublicObjectBatchInputUpsert(
                        id=f"m{i}@example.com",
                        id_property="email",
                        properties={"segflow_consent": "true"},
                    )
                    for i in range(5)
                ]
            )
        ).results
    ]
    made = client.crm.lists.lists_api.create(
        ListCreateRequest(name="segflow gold", object_type_id="0-1", processing_type="MANUAL")
    )
    list_id = made.list.list_id
    assert client.crm.lists.lists_api.get_by_id(list_id).list.name == "segflow gold"
    assert client.crm.lists.lists_api.get_by_name("segflow gold", "0-1").list.list_id == list_id
    added = client.crm.lists.memberships_api.add(list_id, [*ids, "999999"])
    assert sorted(added.records_ids_added) == sorted(ids)
    assert added.record_ids_missing == ["999999"]
    removed = client.crm.lists.memberships_api.remove(list_id, ids[:2])
    assert sorted(removed.record_ids_removed) == sorted(ids[:2])
    members, after = [], None
    while True:
        page = client.crm.lists.memberships_api.get_page(list_id, limit=2, after=after)
        members += [m.record_id for m in page.results]
        if page.paging is None or page.paging.next is None:
            break
        after = page.paging.next.after
    assert sorted(members) == sorted(ids[2:])
    assert api.list_members("segflow gold") == {f"m{i}@example.com" for i in (2, 3, 4)}

    with raw(url) as http:
        define_event(http, "segment_entered", "segment")
    for _ in range(2):  # the same uuid twice: HubSpot keeps the first
        client.events.send.basic_api.send(
            BehavioralEventHttpCompletionRequest(
                event_name=EVENT,
                email="m2@example.com",
                uuid="ev-1",
                properties={"segment": "gold"},
                occurred_at="2026-01-02T03:04:05Z",
            )
        )
    assert [e["properties"] for e in api.events("m2@example.com")] == [{"segment": "gold"}]


def test_auth_and_scope_failures_have_hubspots_bodies() -> None:
    read_only = "pat-na1-readonly"
    api = HubSpotApi(tokens={ACCESS_TOKEN: SCOPES, read_only: frozenset({"crm.lists.read"})})
    with running(api) as url:
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            with httpx.Client(base_url=url, headers=headers) as client:
                r = client.get("/crm/v3/lists/1")
            assert r.status_code == 401
            body = r.json()
            assert body["category"] == "INVALID_AUTHENTICATION" and body["status"] == "error"
            assert body["correlationId"] and body["message"]
        with raw(url, read_only) as client:
            r = client.post(
                "/crm/v3/lists",
                json={"name": "x", "objectTypeId": "0-1", "processingType": "MANUAL"},
            )
        assert r.status_code == 403 and r.json()["category"] == "MISSING_SCOPES"
        assert r.json()["errors"][0]["context"] == {"requiredGranularScopes": ["crm.lists.write"]}
        assert api.lists == {}
        with pytest.raises(ContactsApiException) as refused:
            sdk(url, "wrong").crm.contacts.basic_api.get_page()
        assert refused.value.status == 401


def test_validation_errors_name_the_field(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    with raw(url) as client:
        too_many = [upsert_input(f"x{i}@example.com") for i in range(101)]
        r = client.post("/crm/v3/objects/contacts/batch/upsert", json={"inputs": too_many})
        assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
        assert r.json()["errors"][0]["in"] == "inputs"
        # Without trace ids one bad input fails the batch, and nothing is written.
        r = client.post(
            "/crm/v3/objects/contacts/batch/upsert",
            json={
                "inputs": [
                    upsert_input("a@example.com", firstname="A"),
                    upsert_input("b@example.com", nosuch="1"),
                ]
            },
        )
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
        assert r.json()["errors"][0]["context"] == {"propertyName": ["nosuch"]}
        assert api.profiles() == {}
        # With them, a 207 names the failed input and the others are written.
        r = client.post(
            "/crm/v3/objects/contacts/batch/upsert",
            json={
                "inputs": [
                    upsert_input("a@example.com", "ta", firstname="A"),
                    upsert_input("b@example.com", "tb", nosuch="1"),
                    upsert_input("not-an-email", "tc"),
                ]
            },
        )
        assert r.status_code == 207
        body = r.json()
        assert body["numErrors"] == 2
        failed = {e["context"]["objectWriteTraceId"][0]: e for e in body["errors"]}
        assert set(failed) == {"tb", "tc"}
        assert failed["tb"]["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
        assert "INVALID_EMAIL" in failed["tc"]["message"]
        assert [x["objectWriteTraceId"] for x in body["results"]] == ["ta"]
        assert set(api.profiles()) == {"a@example.com"}
        r = client.post(
            "/crm/v3/objects/contacts/batch/upsert",
            json={"inputs": [upsert_input("a@example.com", hs_email_optout="true")]},
        )
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "READ_ONLY_VALUE"
        r = client.post("/crm/v3/properties/contacts", json={"name": "x", "label": "X"})
        assert r.status_code == 400
        assert {e["in"] for e in r.json()["errors"]} == {"type", "fieldType", "groupName"}
        r = client.post(
            "/crm/v3/lists", json={"name": "l", "objectTypeId": "0-1", "processingType": "DYNAMIC"}
        )
        assert r.status_code == 400 and r.json()["errors"][0]["in"] == "processingType"
        r = client.post("/events/v3/send", json={"eventName": "login", "email": "a@example.com"})
        assert r.status_code == 400 and r.json()["errors"][0]["in"] == "eventName"
        r = client.get("/crm/v3/objects/contacts", params={"limit": 101})
        assert r.status_code == 400 and r.json()["errors"][0]["in"] == "limit"
        r = client.post("/crm/v3/objects/contacts/batch/upsert", content=b"{not json")
        assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
        r = client.get("/crm/v3/lists/object-type-id/0-1/name/nosuch")
        assert r.status_code == 404 and r.json()["category"] == "OBJECT_NOT_FOUND"


def test_events_need_their_definition_and_its_properties(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    occurrence = {"eventName": EVENT, "email": "a@example.com", "properties": {"segment": "g"}}
    with raw(url) as client:
        r = client.post("/events/v3/send", json=occurrence)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "EVENT_NOT_FOUND"
        define_event(client, "segment_entered")
        r = client.post("/events/v3/send", json=occurrence)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "PROPERTY_NOT_FOUND"
        assert r.json()["errors"][0]["in"] == "properties.segment"
        prop = {"name": "segment", "label": "Segment", "type": "string"}
        path = "/events/v3/event-definitions/segment_entered/property"
        assert client.post(path, json=prop).status_code == 201
        assert client.post(path, json=prop).status_code == 409
        assert client.post("/events/v3/send", json=occurrence).status_code == 204
        assert [e["properties"] for e in api.events()] == [{"segment": "g"}]
        again = {"name": "segment_entered", "label": "x", "primaryObject": "CONTACT"}
        r = client.post("/events/v3/event-definitions", json=again)
        assert r.status_code == 409 and r.json()["category"] == "OBJECT_ALREADY_EXISTS"
        for n in range(3):
            define_event(client, f"other_{n}")
        got = client.get("/events/v3/event-definitions/other_1").json()
        assert got["fullyQualifiedName"] == f"pe{PORTAL_ID}_other_1"
        names, after = [], None
        while True:
            page = client.get(
                "/events/v3/event-definitions",
                params={"limit": 2, **({"after": after} if after else {})},
            ).json()
            names += [d["name"] for d in page["results"]]
            after = (page.get("paging") or {}).get("next", {}).get("after")
            if not after:
                break
        assert names == ["segment_entered", "other_0", "other_1", "other_2"]
        assert client.get("/events/v3/event-definitions/nosuch").status_code == 404


def test_the_window_refuses_the_next_request_then_frees() -> None:
    api = HubSpotApi(limit=5, interval=0.6)
    with running(api) as url, raw(url) as client:
        answers = [client.get("/crm/v3/lists/object-type-id/0-1/name/x") for _ in range(6)]
        assert [a.status_code for a in answers] == [404] * 5 + [429]
        assert [a.headers["X-HubSpot-RateLimit-Remaining"] for a in answers[:5]] == [
            "4",
            "3",
            "2",
            "1",
            "0",
        ]
        refused = answers[-1]
        assert refused.headers["X-HubSpot-RateLimit-Max"] == "5"
        assert refused.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "600"
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert body["message"] == "You have reached your ten_secondly_rolling limit."
        time.sleep(0.65)
        assert client.get("/crm/v3/lists/object-type-id/0-1/name/x").status_code == 404


def test_tiers_and_make_fake() -> None:
    assert TIERS[0] == "starter"
    limits = {tier: make_fake("hubspot", tier).max_requests for tier in TIERS}
    assert limits == {"starter": 100, "professional": 190, "fast": 10_000}


def test_upserts_memberships_and_events_are_idempotent(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    with raw(url) as client:
        for _ in range(2):
            r = client.post(
                "/crm/v3/objects/contacts/batch/upsert",
                json={"inputs": [upsert_input("a@example.com", firstname="A")]},
            )
            assert r.status_code == 200
        assert len(api.profiles()) == 1
        list_id = client.post(
            "/crm/v3/lists", json={"name": "g", "objectTypeId": "0-1", "processingType": "MANUAL"}
        ).json()["list"]["listId"]
        cid = api.contact_id("a@example.com")
        first = client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=[cid]).json()
        second = client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=[cid]).json()
        assert first["recordIdsAdded"] == [cid] and second["recordIdsAdded"] == []
        define_event(client)
        event = {"eventName": EVENT, "email": "a@example.com", "uuid": "u1", "properties": {}}
        assert client.post("/events/v3/send", json=event).status_code == 204
        assert client.post("/events/v3/send", json=event).status_code == 204
        assert client.post("/events/v3/send", json=event | {"uuid": "u2"}).status_code == 204
        assert [e["uuid"] for e in api.events()] == ["u1", "u2"]


@pytest.mark.parametrize("kind", ["429", "500", "drop", "drop_after"])
def test_each_fault(kind: str) -> None:
    api = HubSpotApi(Faults(rate=1.0, kinds=(kind,)), tier="fast")
    body = {"inputs": [upsert_input("f@example.com", firstname="F")]}
    with running(api) as url, raw(url) as client:
        if kind in ("drop", "drop_after"):
            with pytest.raises(httpx.TransportError):
                client.post("/crm/v3/objects/contacts/batch/upsert", json=body)
        else:
            r = client.post("/crm/v3/objects/contacts/batch/upsert", json=body)
            assert r.status_code == int(kind) and r.json()["status"] == "error"
            assert "X-HubSpot-RateLimit-Remaining" in r.headers
    assert api.profiles() == (
        {"f@example.com": {"email": "f@example.com", "firstname": "F"}}
        if kind == "drop_after"
        else {}
    )


def test_paged_reads_cover_everything_once(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    with raw(url) as client:
        for start in range(0, 250, 100):
            client.post(
                "/crm/v3/objects/contacts/batch/upsert",
                json={
                    "inputs": [
                        upsert_input(f"u{i}@example.com")
                        for i in range(start, min(start + 100, 250))
                    ]
                },
            )
        ids = [api.contact_id(f"u{i}@example.com") for i in range(250)]
        list_id = client.post(
            "/crm/v3/lists", json={"name": "all", "objectTypeId": "0-1", "processingType": "MANUAL"}
        ).json()["list"]["listId"]
        client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=ids[::-1])
        pages, after = [], None
        while True:
            params = {"limit": 100} | ({"after": after} if after else {})
            r = client.get(f"/crm/v3/lists/{list_id}/memberships", params=params).json()
            pages.append([m["recordId"] for m in r["results"]])
            assert r["total"] == 250
            after = r.get("paging", {}).get("next", {}).get("after")
            if not after:
                break
        assert [len(p) for p in pages] == [100, 100, 50]
        assert sum(pages, []) == sorted(ids, key=int)
        back = client.get(
            f"/crm/v3/lists/{list_id}/memberships",
            params={"limit": 100, "before": r["paging"]["prev"]["before"]},
        ).json()
        assert [m["recordId"] for m in back["results"]] == pages[1]
        got, after = [], None
        while True:
            params = {"limit": 100} | ({"after": after} if after else {})
            r = client.get("/crm/v3/objects/contacts", params=params).json()
            got += [c["id"] for c in r["results"]]
            after = r.get("paging", {}).get("next", {}).get("after")
            if not after:
                break
        assert got == sorted(ids, key=int)


def test_sdk_reads_a_207_per_trace_id(served: tuple[HubSpotApi, str]) -> None:
    api, url = served
    answer = sdk(url).crm.contacts.batch_api.upsert(
        BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(
                    id="ok@example.com",
                    id_property="email",
                    properties={"firstname": "Ok"},
                    object_write_trace_id="t-ok",
                ),
                SimplePublicObjectBatchInputUpsert(
                    id="bad@example.com",
                    id_property="email",
                    properties={"lifecyclestage": "nosuchstage"},
                    object_write_trace_id="t-bad",
                ),
            ]
        )
    )
    assert answer.num_errors == 1
    assert answer.errors[0].context == {"objectWriteTraceId": ["t-bad"]}
    assert answer.errors[0].errors[0].code == "INVALID_OPTION"
    assert [r.object_write_trace_id for r in answer.results] == ["t-ok"]
    assert set(api.profiles()) == {"ok@example.com"}


def test_the_daily_limit_refuses_past_it() -> None:
    api = HubSpotApi(daily=3)
    with running(api) as url, raw(url) as client:
        answers = [client.get("/crm/v3/properties/contacts") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-HubSpot-RateLimit-Daily-Remaining"] for a in answers] == [
        "2",
        "1",
        "0",
        "0",
    ]
    assert answers[-1].json()["policyName"] == "DAILY"


def test_a_slow_answer_times_out_after_taking_effect() -> None:
    api = HubSpotApi(Faults(rate=1.0, kinds=("slow",), slow_seconds=0.5), tier="fast")
    body = {"inputs": [upsert_input("s@example.com")]}
    with running(api) as url, raw(url) as client, pytest.raises(httpx.TimeoutException):
        client.post("/crm/v3/objects/contacts/batch/upsert", json=body, timeout=0.1)
    assert set(api.profiles()) == {"s@example.com"}


def test_an_injected_429_with_room_in_the_window_asks_for_the_least_wait() -> None:
    # Retry-After is the wait for a free slot: with room left that is now, not
    # when the oldest request leaves the ten-second window.
    api = HubSpotApi(tier="fast")
    with running(api) as url, raw(url) as client:
        assert client.get("/crm/v3/lists/object-type-id/0-1/name/x").status_code == 404
        api.faults = Faults(rate=1.0, kinds=("429",))
        refused = client.get("/crm/v3/lists/object-type-id/0-1/name/x")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    full = HubSpotApi(limit=1, interval=30.0)
    with running(full) as url, raw(url) as client:
        client.get("/crm/v3/lists/object-type-id/0-1/name/x")
        assert (
            int(client.get("/crm/v3/lists/object-type-id/0-1/name/x").headers["Retry-After"]) >= 29
        )


def test_sdk_gdpr_delete_of_an_unknown_address_blocklists_it(
    served: tuple[HubSpotApi, str],
) -> None:
    api, url = served
    client = sdk(url)
    client.crm.contacts.basic_api.purge(
        PublicGdprDeleteInput(object_id="Never.Seen@example.com", id_property="email")
    )
    assert api.erased() == {"never.seen@example.com"}
    with pytest.raises(ContactsApiException) as missing:
        client.crm.contacts.basic_api.purge(PublicGdprDeleteInput(object_id="987654"))
    assert missing.value.status == 404


@pytest.mark.parametrize("kind", ["429", "500", "drop"])
def test_a_gdpr_delete_that_meets_a_fault_deletes_nothing(kind: str) -> None:
    api = HubSpotApi(tier="fast")
    body = {"inputs": [upsert_input("g@example.com", firstname="G")]}
    with running(api) as url, raw(url) as client:
        assert client.post("/crm/v3/objects/contacts/batch/upsert", json=body).status_code < 300
        api.faults = Faults(rate=1.0, kinds=(kind,))
        gdpr = {"objectId": "g@example.com", "idProperty": "email"}
        if kind == "drop":
            with pytest.raises(httpx.TransportError):
                client.post("/crm/v3/objects/contacts/gdpr-delete", json=gdpr)
        else:
            r = client.post("/crm/v3/objects/contacts/gdpr-delete", json=gdpr)
            assert r.status_code == int(kind)
    assert "g@example.com" in api.profiles() and api.erased() == set()
