"""The Klaviyo fake: driven by Klaviyo's official SDK (proof it speaks the
API), then raw HTTP for what the SDK hides (auth, errors, rate limits,
faults, paging)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from klaviyo_api import KlaviyoAPI

from plugins.esp.fakes.klaviyo import KlaviyoApi, make_api
from plugins.esp.fakes.server import Faults, running

KEY = "pk_test"
HEADERS = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": "2024-10-15"}


@pytest.fixture
def served() -> Iterator[tuple[KlaviyoApi, str]]:
    api = make_api("fast")
    with running(api) as url:
        yield api, url


def sdk(url: str) -> KlaviyoAPI:
    return KlaviyoAPI(KEY, max_delay=0.1, max_retries=1, test_host=url)


def profile_body(email: str, **attrs: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": {"email": email, **attrs}}}


def import_body(emails: list[str], list_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "profile-bulk-import-job",
        "attributes": {
            "profiles": {
                "data": [
                    {"type": "profile", "attributes": {"email": e, "properties": {"n": i}}}
                    for i, e in enumerate(emails)
                ]
            }
        },
    }
    if list_id:
        data["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
    return {"data": data}


def subscription_body(kind: str, emails: list[str], list_id: str) -> dict[str, Any]:
    consent = "SUBSCRIBED" if kind.endswith("create-job") else "UNSUBSCRIBED"
    return {
        "data": {
            "type": kind,
            "attributes": {
                "profiles": {
                    "data": [
                        {
                            "type": "profile",
                            "attributes": {
                                "email": e,
                                "subscriptions": {"email": {"marketing": {"consent": consent}}},
                            },
                        }
                        for e in emails
                    ]
                }
            },
            "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
        }
    }


def event_body(email: str, metric: str, unique_id: str, **props: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "event",
            "attributes": {
                "properties": props,
                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "time": "2025-01-02T03:04:05+00:00",
                "unique_id": unique_id,
            },
        }
    }


# -- (a) the official SDK ------------------------------------------------------------


def test_sdk_profiles_import_lists_and_consent(served: tuple[KlaviyoApi, str]) -> None:
    api, url = served
    k = sdk(url)
    lid = k.Lists.create_list({"data": {"type": "list", "attributes": {"name": "VIP"}}}).data.id
    assert [x.attributes.name for x in k.Lists.get_lists().data] == ["VIP"]

    created = k.Profiles.create_profile(
        profile_body("Ann@X.com", first_name="Ann", properties={"tier": "gold"})
    )
    pid = created.data.id
    assert k.Profiles.get_profile(pid).data.attributes.first_name == "Ann"
    k.Profiles.update_profile(
        pid,
        {
            "data": {
                "type": "profile",
                "id": pid,
                "attributes": {"last_name": "Lee", "properties": {"tier": "silver"}},
            }
        },
    )
    assert api.profile_by_email("ann@x.com")["last_name"] == "Lee"
    assert api.profile_by_email("ann@x.com")["properties"] == {"tier": "silver"}

    emails = [f"u{i}@x.com" for i in range(5)]
    job = k.Profiles.bulk_import_profiles(import_body(emails + ["not-an-email"], lid)).data
    assert job.attributes.status == "processing"
    polled = [k.Profiles.get_bulk_import_profiles_job(job.id).data.attributes for _ in range(2)]
    assert [p.status for p in polled] == ["processing", "complete"]
    assert (polled[-1].completed_count, polled[-1].failed_count) == (5, 1)
    errors = k.Profiles.get_errors_for_bulk_import_profiles_job(job.id).data
    assert [e.attributes.original_payload["email"] for e in errors] == ["not-an-email"]
    assert api.list_members(lid) == emails

    found = k.Profiles.get_profiles(filter='equals(email,"u3@x.com")').data
    assert [p.attributes.properties for p in found] == [{"n": 3}]

    k.Lists.add_profiles_to_list(lid, {"data": [{"type": "profile", "id": pid}]})
    members = k.Lists.get_profile_ids_for_list(lid)
    assert pid in [m.id for m in members.data]
    k.Lists.remove_profiles_from_list(lid, {"data": [{"type": "profile", "id": pid}]})
    assert "ann@x.com" not in api.list_members(lid)

    k.Profiles.bulk_subscribe_profiles(
        subscription_body("profile-subscription-bulk-create-job", ["u1@x.com", "new@x.com"], lid)
    )
    assert api.consent("u1@x.com") == "SUBSCRIBED"
    assert api.consent("new@x.com") == "SUBSCRIBED"
    assert api.consent("u2@x.com") == "NEVER_SUBSCRIBED"
    assert "new@x.com" in api.list_members(lid)
    k.Profiles.bulk_unsubscribe_profiles(
        subscription_body("profile-subscription-bulk-delete-job", ["u1@x.com"], lid)
    )
    assert api.consent("u1@x.com") == "UNSUBSCRIBED"
    marketing = (
        k.Profiles.get_profiles(
            filter='equals(email,"u1@x.com")', additional_fields_profile=["subscriptions"]
        )
        .data[0]
        .attributes.subscriptions.email.marketing
    )
    assert marketing.consent == "UNSUBSCRIBED"

    k.Data_Privacy.request_profile_deletion(
        {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {
                    "profile": {"data": {"type": "profile", "attributes": {"email": "u2@x.com"}}}
                },
            }
        }
    )
    assert api.profile_by_email("u2@x.com") is None
    assert "u2@x.com" not in api.list_members(lid)


def test_sdk_events_single_bulk_and_paging(served: tuple[KlaviyoApi, str]) -> None:
    api, url = served
    api.page_size = 2
    k = sdk(url)
    k.Events.create_event(event_body("a@x.com", "Placed Order", "o-1", total=10))
    k.Events.create_event(event_body("a@x.com", "Placed Order", "o-1", total=99))
    assert [e["properties"] for e in api.events_for("a@x.com")] == [{"total": 10}]
    k.Events.bulk_create_events(
        {
            "data": {
                "type": "event-bulk-create-job",
                "attributes": {
                    "events-bulk-create": {
                        "data": [
                            {
                                "type": "event-bulk-create",
                                "attributes": {
                                    "profile": {
                                        "data": {
                                            "type": "profile",
                                            "attributes": {"email": "b@x.com"},
                                        }
                                    },
                                    "events": {
                                        "data": [
                                            event_body("b@x.com", "Viewed", f"v-{i}", i=i)["data"]
                                            for i in range(3)
                                        ]
                                    },
                                },
                            }
                        ]
                    }
                },
            }
        }
    )
    assert [e["unique_id"] for e in api.events_for("b@x.com")] == ["v-0", "v-1", "v-2"]
    seen: list[str] = []
    page = k.Events.get_events()
    while True:
        seen += [e.attributes.uuid for e in page.data]
        if not page.links.next:
            break
        # The SDK strips an https link to its cursor; over http the caller does.
        cursor = parse_qs(urlsplit(page.links.next).query)["page[cursor]"][0]
        page = k.Events.get_events(page_cursor=cursor)
    assert seen == ["o-1", "v-0", "v-1", "v-2"]


# -- (b) raw HTTP ---------------------------------------------------------------------


def test_auth_and_revision(served: tuple[KlaviyoApi, str]) -> None:
    api, url = served
    for headers in ({"revision": "2024-10-15"}, {**HEADERS, "Authorization": "Klaviyo-API-Key x"}):
        r = httpx.get(f"{url}/api/profiles", headers=headers)
        assert r.status_code == 401
        assert r.json()["errors"][0]["code"] == "not_authenticated"
    r = httpx.get(f"{url}/api/profiles", headers={"Authorization": HEADERS["Authorization"]})
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"]["pointer"] == "/revision"
    assert httpx.get(f"{url}/api/profiles", headers=HEADERS).status_code == 200
    read_only = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_readonly"}
    assert httpx.get(f"{url}/api/profiles", headers=read_only).status_code == 200
    r = httpx.post(f"{url}/api/profiles", headers=read_only, json=profile_body("a@x.com"))
    assert r.status_code == 403
    assert r.json()["errors"][0]["code"] == "permission_denied"
    assert api.profiles == {}


def test_validation_errors_name_the_field(served: tuple[KlaviyoApi, str]) -> None:
    api, url = served
    c = httpx.Client(base_url=url, headers=HEADERS)
    r = c.post("/api/profiles", json=profile_body("nope"))
    assert r.status_code == 400
    err = r.json()["errors"][0]
    assert set(err) >= {"id", "status", "code", "title", "detail", "source"}
    assert err["source"]["pointer"] == "/data/attributes/email"
    assert api.profiles == {}

    first = c.post("/api/profiles", json=profile_body("a@x.com")).json()["data"]["id"]
    dup = c.post("/api/profiles", json=profile_body("A@x.com"))
    assert dup.status_code == 409
    assert dup.json()["errors"][0]["meta"]["duplicate_profile_id"] == first

    lid = c.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "L"}}})
    lid = lid.json()["data"]["id"]
    too_many = {"data": [{"type": "profile", "id": first}] * 1001}
    r = c.post(f"/api/lists/{lid}/relationships/profiles", json=too_many)
    assert r.status_code == 400 and api.list_members(lid) == []
    r = c.post("/api/profile-bulk-import-jobs", json=import_body(["a@x.com"] * 10_001))
    assert r.status_code == 400
    big = import_body(["a@x.com"])
    big["data"]["attributes"]["profiles"]["data"][0]["attributes"]["properties"] = {
        "blob": "x" * (5 * 1024 * 1024)
    }
    assert c.post("/api/profile-bulk-import-jobs", json=big).status_code == 413
    r = c.post("/api/events", json=event_body("a@x.com", "", "u"))
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"]["pointer"].endswith("/metric/data/attributes/name")


def test_pagination_of_list_members(served: tuple[KlaviyoApi, str]) -> None:
    api, url = served
    c = httpx.Client(base_url=url, headers=HEADERS)
    lid = c.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "L"}}})
    lid = lid.json()["data"]["id"]
    emails = [f"m{i:02}@x.com" for i in range(25)]
    c.post("/api/profile-bulk-import-jobs", json=import_body(emails, lid))
    ids: list[str] = []
    link: str | None = f"/api/lists/{lid}/relationships/profiles?page[size]=10"
    pages = 0
    while link:
        body = c.get(link).json()
        ids += [d["id"] for d in body["data"]]
        link = body["links"]["next"]
        pages += 1
    assert pages == 3
    assert [api.profiles[i]["email"] for i in ids] == emails
    assert c.get(f"/api/lists/{lid}/relationships/profiles?page[cursor]=@@").status_code == 400


def test_rate_limit_burst_window() -> None:
    api = make_api(
        "default",
        limits={"profiles": (3, 100), "lists": (3, 100), "jobs": (3, 100), "events": (3, 100)},
        burst_seconds=0.5,
    )
    with running(api) as url:
        c = httpx.Client(base_url=url, headers=HEADERS)
        answers = [c.get("/api/profiles") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        # The headers tell the steady window's state, as Klaviyo's do.
        assert [r.headers["RateLimit-Remaining"] for r in answers[:3]] == ["99", "98", "97"]
        assert answers[0].headers["RateLimit-Limit"] == "100"
        refused = answers[3]
        assert int(refused.headers["Retry-After"]) >= 1
        err = refused.json()["errors"][0]
        assert (err["status"], err["code"]) == (429, "throttled")
        assert {"id", "title", "detail"} <= set(err)
        # Another group has its own windows.
        assert c.get("/api/lists").status_code == 200
        time.sleep(0.55)
        assert c.get("/api/profiles").status_code == 200


def test_rate_limit_steady_window() -> None:
    api = make_api(
        "default",
        limits={"profiles": (100, 5), "lists": (1, 1), "jobs": (1, 1), "events": (1, 1)},
        steady_seconds=0.6,
    )
    with running(api) as url:
        c = httpx.Client(base_url=url, headers=HEADERS)
        codes = [c.get("/api/profiles").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        assert httpx.get(f"{url}/api/profiles", headers=HEADERS).headers["Retry-After"] == "1"
        time.sleep(0.65)
        assert c.get("/api/profiles").status_code == 200


def faulty(kind: str) -> KlaviyoApi:
    return make_api("fast", Faults(rate=1.0, seed=1, kinds=(kind,)))


@pytest.mark.parametrize("kind", ["429", "500"])
def test_refusing_faults_change_nothing(kind: str) -> None:
    api = faulty(kind)
    with running(api) as url:
        r = httpx.post(f"{url}/api/profiles", headers=HEADERS, json=profile_body("a@x.com"))
        assert r.status_code == int(kind)
        assert r.json()["errors"][0]["status"] == int(kind)
        if kind == "429":
            assert "Retry-After" in r.headers
    assert api.profiles == {}


def test_drop_changes_nothing_and_drop_after_changes_state() -> None:
    for kind, stored in (("drop", 0), ("drop_after", 1)):
        api = faulty(kind)
        with running(api) as url:
            with pytest.raises(httpx.TransportError):
                httpx.post(
                    f"{url}/api/events",
                    headers=HEADERS,
                    json=event_body("a@x.com", "Paid", "p-1"),
                )
            assert len(api.events) == stored, kind
            api.faults.rate = 0.0
            # A retry with the same unique_id after a lost answer stores nothing twice.
            r = httpx.post(
                f"{url}/api/events", headers=HEADERS, json=event_body("a@x.com", "Paid", "p-1")
            )
            assert r.status_code == 202
        assert len(api.events) == 1, kind
        assert api.log[0][2] == kind


def test_slow_answers_late_but_takes_effect() -> None:
    api = make_api("fast", Faults(rate=1.0, seed=1, kinds=("slow",), slow_seconds=0.4))
    with running(api) as url, pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{url}/api/profiles", headers=HEADERS, json=profile_body("a@x.com"), timeout=0.1
        )
    assert api.profile_by_email("a@x.com") is not None


def test_tiers_through_make_fake() -> None:
    from plugins.esp.fakes import make_fake

    default, fast = make_fake("klaviyo"), make_fake("klaviyo", "fast")
    assert all(fast.limits[g] == (b * 100, s * 100) for g, (b, s) in default.limits.items())
    assert default.limits["events"] == (350, 3500)


def deletion_body(**profile: Any) -> dict[str, Any]:
    data = {"type": "profile", **profile}
    return {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {"profile": {"data": data}},
        }
    }


def test_sdk_data_privacy_deletion_by_each_identifier_and_its_errors(
    served: tuple[KlaviyoApi, str],
) -> None:
    from openapi_client.exceptions import ApiException

    api, url = served
    k = sdk(url)
    k.Profiles.create_profile(profile_body("gone@x.com"))
    kept = k.Profiles.create_profile(profile_body("kept@x.com")).data.id
    by_id = k.Profiles.create_profile(profile_body("by-id@x.com")).data.id
    k.Events.create_event(event_body("gone@x.com", "Paid", "g-1"))
    assert len(api.events) == 1
    k.Data_Privacy.request_profile_deletion(deletion_body(attributes={"email": "gone@x.com"}))
    k.Data_Privacy.request_profile_deletion(deletion_body(id=by_id, attributes={}))
    assert api.profile_by_email("gone@x.com") is None and api.events == []
    assert api.profile_by_email("by-id@x.com") is None
    assert api.profile_by_email("kept@x.com")["id"] == kept
    assert api.deleted == ["gone@x.com", "by-id@x.com"]
    # An address it does not know: accepted, nothing to delete.
    k.Data_Privacy.request_profile_deletion(deletion_body(attributes={"email": "nobody@x.com"}))
    assert api.deleted == ["gone@x.com", "by-id@x.com"]
    with pytest.raises(ApiException) as two:
        k.Data_Privacy.request_profile_deletion(
            deletion_body(attributes={"email": "kept@x.com", "phone_number": "+15005550006"})
        )
    assert two.value.status == 400 and "one identifier" in two.value.body
    assert api.profile_by_email("kept@x.com") is not None


@pytest.mark.parametrize("kind", ["429", "500"])
def test_a_refused_deletion_deletes_nothing(kind: str) -> None:
    api = faulty(kind)
    api.faults.rate = 0.0
    with running(api) as url:
        httpx.post(f"{url}/api/profiles", headers=HEADERS, json=profile_body("a@x.com"))
        api.faults.rate = 1.0
        body = deletion_body(attributes={"email": "a@x.com"})
        r = httpx.post(f"{url}/api/data-privacy-deletion-jobs", headers=HEADERS, json=body)
        assert r.status_code == int(kind)
    assert api.profile_by_email("a@x.com") is not None and api.deleted == []
