"""The Mailchimp Marketing API fake (plugins/esp/fakes/mailchimp.py).

First the official SDK (mailchimp-marketing), pointed at the fake, does every
operation the fake supports and reads back what it wrote: that is the proof
the fake speaks the API. Then raw HTTP (httpx) checks what the SDK hides:
auth failures, validation errors, the simultaneous-connection limit, the
pending-batch limit, what is and is not idempotent, each injected fault, and
paged reads.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import mailchimp_marketing
import pytest
import requests
from mailchimp_marketing.api_client import ApiClientError

from plugins.esp.fakes import make_fake
from plugins.esp.fakes.mailchimp import (
    ACCESS_TOKEN,
    API_KEY,
    DEFAULT_LIST_ID,
    TIERS,
    MailchimpApi,
    subscriber_hash,
)
from plugins.esp.fakes.server import Faults, running

LIST = DEFAULT_LIST_ID
OTHER_KEY = "fedcba9876543210fedcba9876543210-us21"


@pytest.fixture
def served() -> Iterator[tuple[MailchimpApi, str]]:
    api = MailchimpApi(api_keys=(API_KEY, OTHER_KEY))
    with running(api) as url:
        yield api, url
    api.close()


def sdk(url: str, **config: Any) -> Any:
    """The official client, with its host moved from <dc>.api.mailchimp.com to the fake."""
    client = mailchimp_marketing.Client()
    client.set_config({"api_key": API_KEY, **config})
    client.api_client.host = url + "/3.0"
    return client


def raw(url: str, key: str = API_KEY, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=url + "/3.0", auth=("anystring", key), **kwargs)


def problem(response: httpx.Response, status: int, title: str) -> dict[str, Any]:
    """The body of a Mailchimp error answer, checked for its shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"] == title
    assert body["type"].startswith("https://mailchimp.com/developer/")
    assert body["detail"] and body["instance"]
    return body


def sdk_error(exc: pytest.ExceptionInfo[ApiClientError]) -> dict[str, Any]:
    # The SDK hands back problem+json as text: it parses only application/json.
    return json.loads(exc.value.text)


def upsert(client: Any, email: str, **body: Any) -> dict[str, Any]:
    return client.lists.set_list_member(
        LIST, subscriber_hash(email), {"email_address": email, **body}
    )


# -- the official SDK ---------------------------------------------------------------------


def test_sdk_ping_account_and_audiences(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    client = sdk(url)
    assert client.ping.get() == {"health_status": "Everything's Chimpy!"}
    assert client.root.get_root()["account_name"]

    lists = client.lists.get_all_lists()
    assert [a["id"] for a in lists["lists"]] == [LIST]
    assert lists["total_items"] == 1

    created = client.lists.create_list(
        {
            "name": "Second audience",
            "contact": {
                "company": "Acme",
                "address1": "2 High St",
                "city": "Leeds",
                "state": "West Yorkshire",
                "zip": "LS1",
                "country": "GB",
            },
            "permission_reminder": "You bought from us.",
            "campaign_defaults": {
                "from_name": "Acme",
                "from_email": "hello@example.com",
                "subject": "",
                "language": "en",
            },
            "email_type_option": True,
        }
    )
    assert created["id"] in api.lists
    assert client.lists.get_list(created["id"])["name"] == "Second audience"
    assert client.lists.get_all_lists(fields=["lists.id", "total_items"]) == {
        "lists": [{"id": LIST}, {"id": created["id"]}],
        "total_items": 2,
    }
    assert [f["tag"] for f in client.lists.get_list_merge_fields(created["id"])["merge_fields"]][
        :2
    ] == ["FNAME", "LNAME"]

    with pytest.raises(ApiClientError) as exc:
        client.lists.create_list({"name": "No contact", "email_type_option": False})
    assert exc.value.status_code == 400
    fields = {e["field"] for e in sdk_error(exc)["errors"]}
    assert {"contact", "campaign_defaults", "permission_reminder"} <= fields
    assert len(api.lists) == 2


def test_sdk_member_upsert_update_and_read_back(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    client = sdk(url)
    email = "Ann.Lee@Example.com"
    created = upsert(
        client,
        email,
        status_if_new="subscribed",
        merge_fields={"FNAME": "Ann", "LNAME": "Lee"},
        tags=["vip", "imported"],
    )
    assert created["id"] == subscriber_hash("ann.lee@example.com")
    assert created["status"] == "subscribed"
    assert created["merge_fields"]["FNAME"] == "Ann"
    assert sorted(t["name"] for t in created["tags"]) == ["imported", "vip"]

    # status_if_new is for new members only; status changes an existing one;
    # merge fields not sent are kept; tags on an update are not applied.
    updated = upsert(
        client,
        email,
        status_if_new="subscribed",
        status="unsubscribed",
        merge_fields={"LNAME": "Lee-Smith"},
        tags=["ignored"],
    )
    assert updated["status"] == "unsubscribed"
    read = client.lists.get_list_member(LIST, subscriber_hash(email))
    assert read["status"] == "unsubscribed"
    assert read["merge_fields"]["FNAME"] == "Ann"
    assert read["merge_fields"]["LNAME"] == "Lee-Smith"
    assert api.member(email) == {
        "email_address": email,
        "id": subscriber_hash(email),
        "status": "unsubscribed",
        "merge_fields": {"FNAME": "Ann", "LNAME": "Lee-Smith"},
        "tags": ["imported", "vip"],
    }

    patched = client.lists.update_list_member(
        LIST, subscriber_hash(email), {"status": "subscribed"}
    )
    assert patched["status"] == "subscribed"
    assert client.lists.get_list(LIST)["stats"]["member_count"] == 1

    added = client.lists.add_list_member(
        LIST, {"email_address": "bo@example.com", "status": "pending"}
    )
    assert added["status"] == "pending"
    with pytest.raises(ApiClientError) as exc:
        client.lists.add_list_member(LIST, {"email_address": "bo@example.com", "status": "pending"})
    assert exc.value.status_code == 400
    assert sdk_error(exc)["title"] == "Member Exists"

    with pytest.raises(ApiClientError) as exc:
        client.lists.get_list_member(LIST, subscriber_hash("nobody@example.com"))
    assert exc.value.status_code == 404
    assert sdk_error(exc)["title"] == "Resource Not Found"
    assert set(api.members()) == {"ann.lee@example.com", "bo@example.com"}


def test_sdk_pages_through_members(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    client = sdk(url)
    emails = {f"p{i:02}@example.com" for i in range(23)}
    for email in sorted(emails):
        upsert(client, email, status_if_new="subscribed")
    seen: list[str] = []
    offset = 0
    while True:
        page = client.lists.get_list_members_info(LIST, count=10, offset=offset)
        assert page["total_items"] == 23
        if not page["members"]:
            break
        assert len(page["members"]) <= 10
        seen += [m["email_address"] for m in page["members"]]
        offset += 10
    assert len(seen) == 23 and set(seen) == emails
    assert offset == 30
    assert set(api.members()) == emails


def test_sdk_tags_merge_fields_and_events(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    client = sdk(url)
    email = "cy@example.com"
    member_hash = subscriber_hash(email)
    upsert(client, email, status_if_new="subscribed", tags=["old"])

    client.lists.update_list_member_tags(
        LIST,
        member_hash,
        {"tags": [{"name": "seg-vip", "status": "active"}, {"name": "old", "status": "inactive"}]},
    )
    tags = client.lists.get_list_member_tags(LIST, member_hash)
    assert [t["name"] for t in tags["tags"]] == ["seg-vip"]
    assert tags["total_items"] == 1
    assert api.member(email)["tags"] == ["seg-vip"]

    field = client.lists.add_list_merge_field(
        LIST, {"name": "Score", "type": "number", "tag": "score"}
    )
    assert field["tag"] == "SCORE"
    tags_now = [f["tag"] for f in client.lists.get_list_merge_fields(LIST)["merge_fields"]]
    assert "SCORE" in tags_now
    assert api.merge_field_tags() == tags_now
    assert upsert(client, email, merge_fields={"SCORE": 42})["merge_fields"]["SCORE"] == 42
    with pytest.raises(ApiClientError) as exc:
        upsert(client, email, merge_fields={"SCORE": "many"})
    assert sdk_error(exc)["errors"] == [{"field": "SCORE", "message": "Please enter a number"}]
    with pytest.raises(ApiClientError) as exc:
        client.lists.add_list_merge_field(LIST, {"name": "Again", "type": "text", "tag": "SCORE"})
    assert exc.value.status_code == 400

    for n in ("1", "2"):
        client.lists.create_list_member_event(
            LIST,
            member_hash,
            {
                "name": "segment_entered",
                "properties": {"segment": "vip", "run": n},
                "occurred_at": f"2026-01-0{n}T10:00:00+00:00",
                "is_syncing": True,
            },
        )
    events = client.lists.get_list_member_events(LIST, member_hash)
    assert events["total_items"] == 2
    assert {e["properties"]["run"] for e in events["events"]} == {"1", "2"}
    assert [e["properties"]["run"] for e in api.events(email)] == ["1", "2"]
    assert all(e["is_syncing"] for e in api.events(email))


def test_sdk_archive_and_permanent_delete(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    client = sdk(url)
    upsert(client, "gone@example.com", status_if_new="subscribed")
    upsert(client, "forgotten@example.com", status_if_new="subscribed")

    client.lists.delete_list_member(LIST, subscriber_hash("gone@example.com"))
    assert client.lists.get_list_member(LIST, subscriber_hash("gone@example.com"))["status"] == (
        "archived"
    )
    listed = client.lists.get_list_members_info(LIST)
    assert [m["email_address"] for m in listed["members"]] == ["forgotten@example.com"]
    archived = client.lists.get_list_members_info(LIST, status="archived")
    assert [m["email_address"] for m in archived["members"]] == ["gone@example.com"]
    assert "gone@example.com" not in api.members()
    # An archived contact can be added back.
    assert upsert(client, "gone@example.com", status_if_new="pending")["status"] == "pending"

    client.lists.delete_list_member_permanent(LIST, subscriber_hash("forgotten@example.com"))
    with pytest.raises(ApiClientError) as exc:
        client.lists.get_list_member(LIST, subscriber_hash("forgotten@example.com"))
    assert exc.value.status_code == 404
    with pytest.raises(ApiClientError) as exc:
        upsert(client, "forgotten@example.com", status_if_new="subscribed")
    assert sdk_error(exc)["title"] == "Forgotten Email Not Subscribed"
    assert api.forgotten() == {"forgotten@example.com"}
    assert api.member("forgotten@example.com") is None


def test_sdk_batch_runs_and_its_results_download() -> None:
    api = MailchimpApi(batch_delay=0.1, batch_op_seconds=0.05)
    with running(api) as url:
        client = sdk(url)
        emails = [f"b{i}@example.com" for i in range(4)]
        operations = [
            {
                "method": "PUT",
                "path": f"/lists/{LIST}/members/{subscriber_hash(e)}",
                "operation_id": f"put-{i}",
                "body": json.dumps({"email_address": e, "status_if_new": "subscribed"}),
            }
            for i, e in enumerate(emails)
        ]
        operations.append(
            {
                "method": "POST",
                "path": f"/lists/{LIST}/members/{subscriber_hash(emails[0])}/tags",
                "operation_id": "tag-0",
                "body": json.dumps({"tags": [{"name": "seg-a", "status": "active"}]}),
            }
        )
        operations.append(
            {
                "method": "GET",
                "path": f"/lists/{LIST}/members",
                "params": {"count": 2},
                "operation_id": "read",
            }
        )
        operations.append({"method": "GET", "path": "/lists/missing", "operation_id": "bad"})
        started = client.batches.start({"operations": operations})
        assert started["status"] == "pending"
        assert started["total_operations"] == len(operations)
        assert started["response_body_url"] == ""

        statuses = [started["status"]]
        for _ in range(200):
            status = client.batches.status(started["id"])
            statuses.append(status["status"])
            if status["status"] == "finished":
                break
            time.sleep(0.01)
        assert statuses[-1] == "finished"
        assert "started" in statuses
        assert statuses.index("started") > 0
        assert status["finished_operations"] == len(operations)
        assert status["errored_operations"] == 1
        assert status["completed_at"]
        assert [b["id"] for b in client.batches.list()["batches"]] == [started["id"]]

        archive = requests.get(status["response_body_url"], timeout=5)
        assert archive.status_code == 200
        results: list[dict[str, Any]] = []
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
            for entry in tar.getmembers():
                results += json.loads(tar.extractfile(entry).read())
        by_id = {r["operation_id"]: r for r in results}
        assert set(by_id) == {op["operation_id"] for op in operations}
        assert by_id["put-2"]["status_code"] == 200
        assert json.loads(by_id["put-2"]["response"])["email_address"] == emails[2]
        assert by_id["tag-0"]["status_code"] == 204 and by_id["tag-0"]["response"] == ""
        read = json.loads(by_id["read"]["response"])
        assert read["total_items"] == 4 and len(read["members"]) == 2
        assert by_id["bad"]["status_code"] == 404
        assert set(api.members()) == set(emails)
        assert api.member(emails[0])["tags"] == ["seg-a"]
        assert api.batch(started["id"])["errored_operations"] == 1

        client.batches.delete_request(started["id"])
        assert client.batches.list()["total_items"] == 0
    api.close()


def test_sdk_oauth_token_and_bad_key(served: tuple[MailchimpApi, str]) -> None:
    _, url = served
    client = mailchimp_marketing.Client()
    client.set_config({"access_token": ACCESS_TOKEN, "server": "us21"})
    client.api_client.host = url + "/3.0"
    assert client.ping.get()["health_status"]

    bad = sdk(url, api_key="00000000000000000000000000000000-us21")
    with pytest.raises(ApiClientError) as exc:
        bad.ping.get()
    assert exc.value.status_code == 401
    assert sdk_error(exc)["title"] == "API Key Invalid"


# -- raw HTTP: what the SDK hides ----------------------------------------------------------


def test_auth_failures_have_mailchimps_bodies() -> None:
    api = MailchimpApi(disabled_keys=("dddddddddddddddddddddddddddddddd-us21",))
    with running(api) as url:
        assert httpx.get(url + "/3.0/ping").status_code == 401
        problem(httpx.get(url + "/3.0/ping"), 401, "API Key Missing")
        problem(
            httpx.get(url + "/3.0/ping", auth=("x", "ffffffffffffffffffffffffffffffff-us21")),
            401,
            "API Key Invalid",
        )
        problem(
            httpx.get(url + "/3.0/ping", headers={"Authorization": "Bearer not-a-token"}),
            401,
            "API Key Invalid",
        )
        problem(
            httpx.get(url + "/3.0/ping", auth=("x", "dddddddddddddddddddddddddddddddd-us21")),
            403,
            "User Disabled",
        )
        # A client that sends its data centre must send the key's.
        problem(
            httpx.get(
                url + "/3.0/ping", auth=("x", API_KEY), headers={"Host": "us1.api.mailchimp.com"}
            ),
            403,
            "Wrong Datacenter",
        )
        for headers in (
            {"Host": "us21.api.mailchimp.com"},
            {"Authorization": f"apikey {API_KEY}"},
            {"Authorization": f"Bearer {ACCESS_TOKEN}"},
        ):
            auth = None if "Authorization" in headers else ("x", API_KEY)
            assert httpx.get(url + "/3.0/ping", headers=headers, auth=auth).status_code == 200
        # The refused requests changed nothing and reached no handler.
        assert api.members() == {}


def test_validation_errors_name_the_field(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    new = subscriber_hash("new@example.com")
    with raw(url) as http:
        body = problem(
            http.put(
                f"/lists/{LIST}/members/{new}",
                json={
                    "email_address": "new@example.com",
                    "status_if_new": "subscribed",
                    "merge_fields": {"FNAME": "N", "SHOE_SIZE": "9"},
                },
            ),
            400,
            "Invalid Resource",
        )
        assert body["detail"] == "Your merge fields were invalid."
        assert [e["field"] for e in body["errors"]] == ["SHOE_SIZE"]

        body = problem(
            http.put(f"/lists/{LIST}/members/{new}", json={"email_address": "new@example.com"}),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "status_if_new"

        body = problem(
            http.put(
                f"/lists/{LIST}/members/{new}",
                json={"email_address": "new@example.com", "status_if_new": "maybe"},
            ),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "status_if_new"

        body = problem(
            http.put(
                f"/lists/{LIST}/members/{subscriber_hash('x@example.com')}",
                json={"email_address": "new@example.com", "status_if_new": "subscribed"},
            ),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "email_address"

        bad_email = subscriber_hash("not-an-email")
        problem(
            http.put(
                f"/lists/{LIST}/members/{bad_email}",
                json={"email_address": "not-an-email", "status_if_new": "subscribed"},
            ),
            400,
            "Invalid Resource",
        )
        problem(
            http.put(f"/lists/{LIST}/members/{new}", content=b"{not json"),
            400,
            "JSON Parse Error",
        )
        problem(http.get(f"/lists/nolist/members/{new}"), 404, "Resource Not Found")
        assert api.members() == {}

        assert (
            http.put(
                f"/lists/{LIST}/members/{new}",
                json={"email_address": "new@example.com", "status_if_new": "subscribed"},
            ).status_code
            == 200
        )
        body = problem(
            http.post(f"/lists/{LIST}/members/{new}/events", json={"name": "x"}),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "name"
        body = problem(
            http.post(
                f"/lists/{LIST}/members/{new}/tags",
                json={"tags": [{"name": "a", "status": "on"}]},
            ),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "tags.item:0.status"
        body = problem(
            http.post(
                "/batches",
                json={"operations": [{"method": "PUT", "path": "/lists", "body": {"a": 1}}]},
            ),
            400,
            "Invalid Resource",
        )
        assert body["errors"][0]["field"] == "operations.item:0.body"
    assert api.events("new@example.com") == []
    assert api.member("new@example.com")["tags"] == []
    assert api.batches == {}


def test_an_eleventh_simultaneous_request_gets_429() -> None:
    api = MailchimpApi(api_keys=(API_KEY, OTHER_KEY), latency=1.0)
    with running(api) as url:
        answers: list[int] = []

        def ping() -> None:
            answers.append(
                httpx.get(url + "/3.0/ping", auth=("x", API_KEY), timeout=10).status_code
            )

        threads = [threading.Thread(target=ping) for _ in range(10)]
        for n, t in enumerate(threads, start=1):
            t.start()
            deadline = time.monotonic() + 5
            while api.in_flight() < n and time.monotonic() < deadline:
                time.sleep(0.002)
        assert api.in_flight() == 10

        refused = httpx.get(url + "/3.0/ping", auth=("x", API_KEY), timeout=10)
        body = problem(refused, 429, "TooManyRequests")
        assert "10 simultaneous connections" in body["detail"]
        # Mailchimp sends no rate-limit headers and no Retry-After.
        assert "retry-after" not in refused.headers
        assert not [h for h in refused.headers if "ratelimit" in h.lower()]
        # The limit is per key.
        assert httpx.get(url + "/3.0/ping", auth=("x", OTHER_KEY), timeout=10).status_code == 200

        for t in threads:
            t.join()
        assert answers == [200] * 10
        assert api.in_flight() == 0
        assert httpx.get(url + "/3.0/ping", auth=("x", API_KEY), timeout=10).status_code == 200


def test_at_most_the_pending_batches_allowed() -> None:
    api = MailchimpApi(max_pending_batches=2, batch_delay=0.3)
    with running(api) as url, raw(url) as http:
        op = {"operations": [{"method": "GET", "path": "/ping"}]}
        first = http.post("/batches", json=op).json()
        assert http.post("/batches", json=op).status_code == 200
        problem(http.post("/batches", json=op), 429, "TooManyRequests")
        assert len(api.batches) == 2
        deadline = time.monotonic() + 5
        while http.get(f"/batches/{first['id']}").json()["status"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert http.post("/batches", json=op).status_code == 200
        assert len(api.batches) == 3
        problem(http.get("/batches/nosuchbatch"), 404, "Resource Not Found")
    api.close()


def test_upsert_is_idempotent_events_are_not(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    member = f"/lists/{LIST}/members/{subscriber_hash('twice@example.com')}"
    body = {
        "email_address": "twice@example.com",
        "status_if_new": "subscribed",
        "merge_fields": {"FNAME": "T"},
    }
    with raw(url) as http:
        first = http.put(member, json=body).json()
        second = http.put(member, json=body).json()
        assert first["id"] == second["id"] and first["web_id"] == second["web_id"]
        assert list(api.members()) == ["twice@example.com"]
        event = {"name": "segment_entered", "properties": {"segment": "a"}}
        assert http.post(member + "/events", json=event).status_code == 204
        assert http.post(member + "/events", json=event).status_code == 204
    # No idempotency key: a resent event is a second event.
    assert len(api.events("twice@example.com")) == 2


@pytest.mark.parametrize("kind", ["429", "500", "drop", "drop_after", "slow"])
def test_each_fault(kind: str) -> None:
    api = MailchimpApi(Faults(rate=1.0, kinds=(kind,), slow_seconds=0.5))
    email = "fault@example.com"
    body = {"email_address": email, "status_if_new": "subscribed"}
    path = f"/lists/{LIST}/members/{subscriber_hash(email)}"
    with running(api) as url, raw(url, timeout=0.2 if kind == "slow" else 5) as http:
        if kind in ("429", "500"):
            title = "TooManyRequests" if kind == "429" else "Internal Server Error"
            problem(http.put(path, json=body), int(kind), title)
            assert api.member(email) is None
        elif kind == "drop":
            with pytest.raises(httpx.TransportError):
                http.put(path, json=body)
            assert api.member(email) is None
        else:
            # The request took effect; the client cannot tell.
            with pytest.raises(httpx.TransportError):
                http.put(path, json=body)
            assert api.member(email)["status"] == "subscribed"
        # A slow answer is logged once the fake has tried to send it.
        deadline = time.monotonic() + 5
        while not api.log and time.monotonic() < deadline:
            time.sleep(0.01)
    assert api.log[-1][2] == kind


def test_paged_and_filtered_reads(served: tuple[MailchimpApi, str]) -> None:
    api, url = served
    with raw(url) as http:
        for i in range(5):
            email = f"r{i}@example.com"
            status = "subscribed" if i % 2 == 0 else "unsubscribed"
            http.put(
                f"/lists/{LIST}/members/{subscriber_hash(email)}",
                json={"email_address": email, "status_if_new": status},
            )
        default = http.get(f"/lists/{LIST}/members").json()
        assert default["total_items"] == 5 and len(default["members"]) == 5
        page = http.get(f"/lists/{LIST}/members", params={"count": 2, "offset": 2}).json()
        assert [m["email_address"] for m in page["members"]] == ["r2@example.com", "r3@example.com"]
        past = http.get(f"/lists/{LIST}/members", params={"count": 2, "offset": 9}).json()
        assert past["members"] == [] and past["total_items"] == 5
        subscribed = http.get(f"/lists/{LIST}/members", params={"status": "subscribed"}).json()
        assert subscribed["total_items"] == 3
        assert {m["status"] for m in subscribed["members"]} == {"subscribed"}
        slim = http.get(
            f"/lists/{LIST}/members",
            params={"fields": "members.email_address,members.status,total_items", "count": 1},
        ).json()
        assert slim == {
            "members": [{"email_address": "r0@example.com", "status": "subscribed"}],
            "total_items": 5,
        }
        lean = http.get(
            f"/lists/{LIST}/members", params={"exclude_fields": "members._links,_links", "count": 1}
        ).json()
        assert "_links" not in lean and "_links" not in lean["members"][0]
        assert lean["members"][0]["email_address"] == "r0@example.com"
        problem(
            http.get(f"/lists/{LIST}/members", params={"count": "ten"}), 400, "Invalid Resource"
        )
    assert len(api.members()) == 5


def test_make_fake_builds_the_mailchimp_fake() -> None:
    assert TIERS == ("default",)
    api = make_fake("mailchimp")
    assert isinstance(api, MailchimpApi)
    assert list(api.lists) == [DEFAULT_LIST_ID]
    assert api.max_connections == 10 and api.max_pending_batches == 500
