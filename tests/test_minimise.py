"""Data minimisation at ingestion (core.privacy.minimise): allow-lists per
event type, scrubbing of URLs and free text, IP truncation.

- every ingest path (Event objects, plain dicts, a bulk load, ``segflow
  import`` reading segflow.toml) stores the same minimised events, and the
  caller's own Event is left as it was;
- what was dropped or rewritten is in the report, per type and property,
  and in ``ingest_minimised``; a re-sent event is still a duplicate;
- the scrubber replaces emails, phone numbers and secret query values and
  leaves dates, prices and order numbers alone;
- a bad ``[privacy]`` section is an error naming the field.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from core.config import ConfigError, load_settings
from core.db import open_db
from core.db.tables import EVENTS, INGEST_MINIMISED, PROFILES
from core.ingestion import Event, ingest
from core.privacy.minimise import OFF, Minimiser, scrub_text, truncate_ip
from core.privacy.settings import MinimiseSettings

POLICY = {
    "allow": {"page_view": ["title", "context"], "default": ["plan"]},
    "scrub": True,
    "ip": "truncate",
}
TOML = """
[privacy.minimise]
allow = {page_view = ["title", "context"], default = ["plan"]}
scrub = true
ip = "truncate"
"""


def _events(prefix: str) -> list[dict]:
    return [
        {
            "type": "page_view",
            "user_id": f"{prefix}-1",
            "ts": "2026-11-01T10:00:00Z",
            "url": "https://shop.example.com/p?id=7&token=s3cr3t&email=jo%40example.com",
            "properties": {
                "title": "Call +44 20 7946 0958 or write to jo@example.com",
                "context": {"ip": "203.0.113.77", "locale": "en"},
                "referrer": "https://mail.example.com/?sid=abc",
                "phone": "(555) 123-4567",
            },
        },
        {
            "type": "add_to_cart",
            "user_id": f"{prefix}-1",
            "ts": "2026-11-01T10:01:00Z",
            "product_id": "p-1",
            "properties": {"plan": "order 2026-11-01 #123456789 at 19.99", "coupon": "X"},
        },
        {
            "type": "identify",
            "user_id": f"{prefix}-1",
            "ts": "2026-11-01T09:00:00Z",
            "traits": {"email": "jo@example.com", "phone": "+44 20 7946 0958"},
        },
    ]


EXPECTED = {
    "page_view": (
        "https://shop.example.com/p?id=7&token=[redacted]&email=[redacted]",
        {
            "title": "Call [phone] or write to [email]",
            "context": {"ip": "203.0.113.0", "locale": "en"},
        },
    ),
    "add_to_cart": (None, {"plan": "order 2026-11-01 #123456789 at 19.99"}),
    # traits are the profile: neither the default list nor scrubbing applies
    "identify": (None, {"email": "jo@example.com", "phone": "+44 20 7946 0958"}),
}
COUNTS = {
    "dropped": {"add_to_cart": {"coupon": 1}, "page_view": {"phone": 1, "referrer": 1}},
    "ip": {"page_view": {"context.ip": 1}},
    "scrubbed": {"page_view": {"title": 1, "url": 1}},
}


def _stored(engine, prefix: str) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EVENTS.c.type, EVENTS.c.url, EVENTS.c.properties)
            .join(PROFILES, PROFILES.c.id == EVENTS.c.profile_id)
            .where(PROFILES.c.user_id == f"{prefix}-1")
        ).all()
    return {t: (url, props) for t, url, props in rows}


def test_every_ingest_path_stores_the_same_minimised_events(sqlite_url, run, tmp_path):
    engine = open_db(sqlite_url)
    policy = Minimiser.from_settings(MinimiseSettings.model_validate(POLICY))

    plain = ingest(engine, _events("plain"), minimise=policy)
    assert plain.as_dict()["minimised"] == COUNTS
    assert plain.dropped == 3

    models = [Event.model_validate(e) for e in _events("model")]
    before = [m.model_dump() for m in models]
    assert ingest(engine, models, minimise=policy).as_dict()["minimised"] == COUNTS
    assert [m.model_dump() for m in models] == before, "the caller's events were changed"

    ingest(engine, _events("bulk"), minimise=policy, bulk=True)

    (tmp_path / "segflow.toml").write_text(TOML)
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps(e) + "\n" for e in _events("cli")))
    status, out, err = run("--db", sqlite_url, "import", str(lines))
    assert status == 0, err
    assert "minimised ([privacy.minimise]): dropped add_to_cart.coupon 1, " in out
    lines.write_text("".join(json.dumps(e) + "\n" for e in _events("json")))
    status, out, err = run("--db", sqlite_url, "import", str(lines), "--json")
    assert json.loads(out)[str(lines)]["minimised"] == COUNTS

    for prefix in ("plain", "model", "bulk", "cli", "json"):
        assert _stored(engine, prefix) == EXPECTED, prefix

    # the message id is the sent content's: sending it again is a duplicate
    again = ingest(engine, _events("plain"), minimise=policy)
    assert again.duplicates == 3 and again.accepted == 0

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                INGEST_MINIMISED.c.source, INGEST_MINIMISED.c.type,
                INGEST_MINIMISED.c.property, INGEST_MINIMISED.c.action,
                INGEST_MINIMISED.c.count,
            )
        ).all()  # fmt: skip
    persisted = {(s, t, p, a): n for s, t, p, a, n in rows}
    assert persisted[("api", "page_view", "referrer", "dropped")] == 3  # plain, model, bulk
    from_files = {k[0] for k in persisted} - {"api"}
    assert len(from_files) == 1, persisted
    assert persisted[(from_files.pop(), "page_view", "referrer", "dropped")] == 2
    assert persisted[("api", "page_view", "context.ip", "ip")] == 3
    assert ("api", "identify", "email", "dropped") not in persisted

    # no policy: everything as sent
    ingest(engine, _events("off"), minimise=OFF)
    assert _stored(engine, "off")["page_view"][1]["referrer"] == "https://mail.example.com/?sid=abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail JO.Smith+x@Example.co.uk now", "mail [email] now"),
        ("/reset?password=hunter2&next=/", "/reset?password=[redacted]&next=/"),
        ("/cb#access_token=eyJ.a.b&state=1", "/cb#access_token=[redacted]&state=1"),
        ("https://x.io/?API_KEY=abc;lang=en", "https://x.io/?API_KEY=[redacted];lang=en"),
        ("ring +1 (415) 555-2671 or 415.555.2671", "ring [phone] or [phone]"),
        ("u=jo%40example.com", "u=[email]"),
        # left alone: dates, times, prices, order numbers, keys that only look alike
        ("2026-12-03T10:00:00Z order 1234567890 total 1,299.00", None),
        ("/search?keyword=shoes&monkey=1", None),
    ],
)
def test_scrubbing_replaces_personal_and_secret_text_only(text, expected):
    assert scrub_text(text) == (text if expected is None else expected)


def test_ip_addresses_truncate_to_their_network_or_are_dropped():
    assert truncate_ip("198.51.100.201") == "198.51.100.0"
    assert truncate_ip("2001:db8:1234:5678::9") == "2001:db8:1234::"
    assert truncate_ip("::ffff:198.51.100.7") == "198.51.100.0"
    assert truncate_ip("not an ip") is None
    drop = Minimiser.from_settings(MinimiseSettings(ip="drop"))
    counts: dict = {}
    changed = drop.event("page_view", {"properties": {"ip": "198.51.100.7", "a": 1}}, counts)
    assert changed == {"properties": {"a": 1}}
    assert counts == {("page_view", "ip", "dropped"): 1}


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('[privacy.retention]\npage_view = "90 days"\n', "privacy.retention.page_view"),
        ('[privacy.minimise]\nip = "hash"\n', "privacy.minimise.ip"),
        ('[privacy.minimise]\nallow = {PageView = ["a"]}\n', "privacy.minimise.allow"),
    ],
)
def test_a_bad_privacy_section_names_the_field(tmp_path, monkeypatch, toml, names):
    (tmp_path / "segflow.toml").write_text(toml)
    monkeypatch.setenv("SEGFLOW_CONFIG", str(tmp_path / "segflow.toml"))
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_settings()


SEGMENTS_READING = {
    "browsers.yaml": """
name: deep_readers
rule:
  all:
    - {event: page_view, within: 30d, where: {referrer: {contains: "news"}}}
    - {event: page_view, within: 30d, where: {title: {starts_with: "Guide"}}}
""",
    "buyers.yaml": """
name: coupon_fans
rule:
  any:
    - {event: add_to_cart, within: 30d, distinct: {property: coupon, op: ">= 2"}}
    - not: {last: {event: add_to_cart, where: {plan: pro, product_id: p1}, newer_than: 7d}}
""",
}


def test_validate_and_run_warn_of_a_property_the_allow_list_drops(sqlite_url, run, tmp_path):
    folder = tmp_path / "segments"
    folder.mkdir()
    for name, text in SEGMENTS_READING.items():
        (folder / name).write_text(text)
    # page_view keeps title (not referrer); add_to_cart falls to default: plan only.
    (tmp_path / "segflow.toml").write_text(TOML)
    status, out, err = run("segments", "validate", "--dir", str(folder))
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, err
    assert "browsers.yaml: segment 'deep_readers' reads property 'referrer' of 'page_view'" in err
    assert "buyers.yaml: segment 'coupon_fans' reads property 'coupon' of 'add_to_cart'" in err
    assert "'title'" not in err and "'plan'" not in err and "product_id" not in err
    assert "2 segments valid, 2 warnings" in out

    status, out, err = run("--db", sqlite_url, "segments", "run", "--dir", str(folder))
    assert status == 0, err
    assert err.count("warning:") == 2 and "which [privacy.minimise] allow drops" in err

    (tmp_path / "segflow.toml").write_text(
        TOML.replace('["title", "context"]', '["title", "context", "referrer"]').replace(
            '["plan"]', '["plan", "coupon"]'
        )
    )
    status, out, err = run("segments", "validate", "--dir", str(folder))
    assert status == 0 and "warning" not in err and "2 segments valid\n" in out
