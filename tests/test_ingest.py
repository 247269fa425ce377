"""Ingestion on SQLite and PostgreSQL: bad lines, duplicates, identity merges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from core.db import open_db
from core.db.tables import EVENTS, PROFILES
from core.ingestion import import_file, ingest
from core.plugins import events_ingested_hook, file_sources
from core.profiles import profile_summary
from tests.helpers import count, events_by_profile, identity_map, live_profiles, write_jsonl


@pytest.fixture
def engine(db_url):
    return open_db(db_url)


def ev(type_, ts_minute, **kw):
    return {"type": type_, "ts": f"2026-03-01T10:{ts_minute:02d}:00Z", **kw}


def test_import_keeps_good_lines_and_reports_bad_ones(engine, tmp_path):
    path = write_jsonl(
        tmp_path / "events.jsonl",
        [
            ev("page_view", 1, user_id="u1", url="/"),
            '{"type": "page_view", "user_id": ',  # truncated JSON
            ev("Page View", 2, user_id="u1"),
            ev("product_view", 3, user_id="u1", product_id="P1", properties={"price": 12.5}),
            "[1, 2]",
            ev("purchase", 4, user_id="u1", value="lots"),
            ev("purchase", 5, user_id="u1", value=99.5, currency="usd"),
        ],
    )
    report = import_file(engine, path, sources=file_sources())
    assert (report.received, report.accepted, report.duplicates) == (7, 3, 0)
    assert [(r.location, r.reason.split(":")[0]) for r in report.rejected] == [
        (f"{path}:2", "invalid JSON"),
        (f"{path}:3", "field 'type'"),
        (f"{path}:5", "expected a JSON object, got list"),
        (f"{path}:6", "field 'value'"),
    ]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                EVENTS.c.type, EVENTS.c.ts, EVENTS.c.value, EVENTS.c.currency, EVENTS.c.properties
            ).order_by(EVENTS.c.ts)
        ).all()
    assert [r.type for r in rows] == ["page_view", "product_view", "purchase"]
    assert rows[0].ts == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
    assert rows[1].properties == {"price": 12.5}
    assert (rows[2].value, rows[2].currency) == (99.5, "USD")


def test_a_line_with_a_nul_character_is_rejected_and_the_rest_kept(engine, tmp_path):
    # PostgreSQL cannot store NUL; it used to fail the whole batch there.
    path = write_jsonl(
        tmp_path / "nul.jsonl",
        [ev("page_view", i, user_id="u1", url=f"/{i}") for i in range(3)]
        + [ev("page_view", 9, user_id="u1", properties={"q": "a\x00b"})]
        + [ev("identify", 10, user_id="u\x002")]
        + [ev("page_view", i, user_id="u1", url=f"/{i}") for i in range(20, 23)],
    )
    report = import_file(engine, path, batch_size=4, sources=file_sources())
    assert (report.accepted, count(engine)) == (6, 6)
    assert [(r.location, r.reason) for r in report.rejected] == [
        (
            f"{path}:4",
            "field 'properties': contains a NUL character (\\x00), which cannot be "
            "stored (in a key or a value)",
        ),
        (f"{path}:5", "field 'user_id': contains a NUL character (\\x00), which cannot be stored"),
    ]


def test_reimport_adds_nothing_and_duplicates_are_counted(engine, tmp_path):
    records = [ev("page_view", i, anonymous_id="a1", url=f"/p{i}") for i in range(10)]
    records.append(records[3])  # the same line twice within the file
    path = write_jsonl(tmp_path / "e.jsonl", records)
    first = import_file(engine, path, batch_size=4, sources=file_sources())
    assert (first.accepted, first.duplicates) == (10, 1)
    again = import_file(engine, path, batch_size=3, sources=file_sources())
    assert (again.accepted, again.duplicates, again.profiles_created) == (0, 11, 0)
    assert count(engine) == 10
    assert len(live_profiles(engine)) == 1


def test_explicit_message_ids_dedupe_across_sources(engine):
    a = ingest(engine, [ev("page_view", 1, user_id="u1", message_id="m-1")], source="api")
    b = ingest(engine, [ev("page_view", 2, user_id="u1", message_id="m-1")], source="file")
    assert (a.accepted, b.accepted, b.duplicates) == (1, 0, 1)


def test_anonymous_history_merges_into_the_identified_profile(engine):
    # Day 1: browsing anonymously on a phone and a laptop; user u1 known elsewhere.
    ingest(
        engine,
        [
            ev("page_view", 1, anonymous_id="phone"),
            ev("product_view", 2, anonymous_id="phone", product_id="P1"),
            ev("page_view", 3, anonymous_id="laptop"),
            ev("purchase", 4, user_id="u1", value=10.0),
        ],
    )
    assert len(live_profiles(engine)) == 3
    # Day 2: logging in on both devices links them to u1.
    report = ingest(
        engine,
        [
            {
                "type": "identify",
                "user_id": "u1",
                "anonymous_id": "phone",
                "traits": {"plan": "pro"},
            },
            ev("add_to_cart", 6, user_id="u1", anonymous_id="laptop", product_id="P1"),
        ],
    )
    assert report.profiles_merged == 2
    live = live_profiles(engine)
    assert len(live) == 1 and live[0]["user_id"] == "u1"
    assert live[0]["attributes"] == {"plan": "pro"}
    owners = events_by_profile(engine)
    assert list(owners) == [live[0]["id"]]  # every event now belongs to u1
    assert count(engine) == 6
    ids = identity_map(engine)
    assert ids[("anonymous_id", "phone")] == ids[("anonymous_id", "laptop")] == live[0]["id"]
    summary = profile_summary(engine, "phone")  # an old anonymous id still finds the person
    assert summary["user_id"] == "u1"
    assert summary["event_counts"] == {
        "add_to_cart": 1,
        "identify": 1,
        "page_view": 2,
        "product_view": 1,
        "purchase": 1,
    }
    assert len(summary["merged_from"]) == 2


def test_anonymous_then_identify_in_one_batch_makes_one_profile(engine):
    report = ingest(
        engine,
        [
            ev("page_view", 1, anonymous_id="a9"),
            ev("product_view", 2, anonymous_id="a9", product_id="P2"),
            {
                "type": "identify",
                "user_id": "u9",
                "anonymous_id": "a9",
                "traits": {"email": "U9@x.io"},
            },
            ev("purchase", 4, user_id="u9", value=5.0),
        ],
    )
    assert report.profiles_created == 1
    (profile,) = live_profiles(engine)
    assert (profile["user_id"], profile["email"]) == ("u9", "u9@x.io")
    assert count(engine) == 4


def test_shared_device_does_not_merge_two_users(engine):
    ingest(engine, [ev("page_view", 1, user_id="alice", anonymous_id="family-ipad")])
    ingest(engine, [ev("page_view", 2, user_id="bob", anonymous_id="family-ipad")])
    live = {p["user_id"]: p["id"] for p in live_profiles(engine)}
    assert set(live) == {"alice", "bob"}
    owners = events_by_profile(engine)
    assert len(owners[live["alice"]]) == 1 and len(owners[live["bob"]]) == 1
    assert identity_map(engine)[("anonymous_id", "family-ipad")] == live["alice"]


def test_email_finds_the_profile_and_links_anonymous_visits(engine):
    ingest(engine, [{"type": "identify", "user_id": "u5", "traits": {"email": "five@x.io"}}])
    ingest(engine, [ev("email_open", 1, email="FIVE@x.io", campaign="weekly")])
    ingest(engine, [ev("page_view", 2, anonymous_id="a5", email="five@x.io")])
    (profile,) = live_profiles(engine)
    assert profile["user_id"] == "u5"
    assert count(engine) == 3
    assert identity_map(engine)[("anonymous_id", "a5")] == profile["id"]


def test_identify_traits_merge_key_by_key(engine):
    ingest(engine, [{"type": "identify", "user_id": "u1", "traits": {"a": 1, "b": 2}}])
    ingest(engine, [{"type": "identify", "user_id": "u1", "traits": {"b": 3, "c": 4}}])
    (profile,) = live_profiles(engine)
    assert profile["attributes"] == {"a": 1, "b": 3, "c": 4}


def test_hook_receives_only_stored_events(engine, register_plugin):
    seen = []

    class Recorder:
        @staticmethod
        def on_events_ingested(events):
            seen.extend((e.type, e.profile_id, e.event.message_id) for e in events)

    register_plugin(Recorder)
    hook = events_ingested_hook(engine)
    ingest(engine, [ev("page_view", 1, user_id="u1", message_id="x1")], on_stored=hook)
    ingest(
        engine,
        [ev("page_view", 1, user_id="u1", message_id="x1"), ev("search", 2, user_id="u1")],
        on_stored=hook,
    )
    with engine.connect() as conn:
        pid = conn.execute(sa.select(PROFILES.c.id)).scalar_one()
    assert [s[0] for s in seen] == ["page_view", "search"]
    assert {s[1] for s in seen} == {pid}


def test_failed_batch_keeps_earlier_batches(engine, monkeypatch):
    import core.ingestion.pipeline as pipeline

    calls = {"n": 0}
    real = pipeline.store_batch

    def flaky(conn, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
        return real(conn, *args, **kwargs)

    monkeypatch.setattr(pipeline, "store_batch", flaky)
    records = [ev("page_view", i, user_id="u1", url=f"/{i}") for i in range(6)]
    with pytest.raises(pipeline.IngestError, match=r"record 4 .. record 6 failed.*3 events"):
        ingest(engine, records, batch_size=3)
    assert count(engine) == 3


def test_bulk_load_rebuilds_deferred_indexes_and_moves_merged_events(engine):
    browsing = [ev("page_view", i, anonymous_id=f"a{i % 5}", url=f"/{i}") for i in range(40)]
    logins = [ev("identify", 50 + i, user_id=f"u{i}", anonymous_id=f"a{i}") for i in range(5)]
    # Small batches: the anonymous profiles are stored before the logins merge them.
    report = ingest(engine, browsing + logins, bulk=True, batch_size=8)
    assert (report.accepted, report.profiles_merged) == (45, 0)  # promoted, not merged
    later = [ev("page_view", 1, anonymous_id=f"b{i}", url="/x") for i in range(5)]
    links = [ev("search", 2, user_id=f"u{i}", anonymous_id=f"b{i}") for i in range(5)]
    # Big enough to defer again: the merges move their events only after the rebuild.
    report = ingest(engine, later + links, bulk=True, batch_size=5)
    assert report.profiles_merged == 5
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
    assert {"ix_events_profile_ts", "ix_events_type_ts"} <= names
    users = {p["user_id"]: p["id"] for p in live_profiles(engine)}
    assert sorted(users) == [f"u{i}" for i in range(5)]
    owners = events_by_profile(engine)
    assert set(owners) == set(users.values())  # every event, moved ones too, on a live profile
    assert sum(len(v) for v in owners.values()) == 55


def test_duplicates_racing_past_the_check_are_still_stored_once(engine, monkeypatch):
    import core.ingestion.batch as batch_step

    ingest(engine, [ev("page_view", 1, user_id="u1", message_id="race-1")])
    # Another writer stored race-1 between our duplicate check and our insert.
    monkeypatch.setattr(batch_step, "_drop_duplicates", lambda conn, batch, report: batch)
    report = ingest(
        engine,
        [
            ev("page_view", 1, user_id="u1", message_id="race-1"),
            ev("page_view", 2, user_id="u1", message_id="race-2"),
        ],
    )
    assert (report.accepted, report.duplicates) == (1, 1)
    assert count(engine) == 2


def test_integers_beyond_64_bits_in_properties_are_stored_not_fatal(engine):
    # orjson refuses them; Python callers (and CSV mappings with :int) can send them.
    big = 2**70
    first = ingest(engine, [ev("page_view", 1, user_id="u1", properties={"n": big})])
    again = ingest(engine, [ev("page_view", 1, user_id="u1", properties={"n": big})])
    assert (first.accepted, again.duplicates) == (1, 1)  # content id works for them too
    with engine.connect() as conn:
        stored = conn.execute(sa.select(EVENTS.c.properties)).scalar_one()
    assert stored["n"] == pytest.approx(float(big))


def test_optional_fields_store_null_only_when_missing(engine):
    # On SQLite a missing field is bound as a marker that SQLite turns into
    # NULL; values that look like the markers must stay values.
    from core.ingestion import Event

    given = {"session_id": "0", "product_id": "", "url": "", "campaign": "0", "value": 0.0}
    records = [
        ev("page_view", 1, user_id="u1", message_id="given", currency="EUR", **given),
        ev("page_view", 2, user_id="u1", message_id="missing"),
        Event.model_validate(ev("page_view", 3, user_id="u1", message_id="none-event")),
        ev("page_view", 4, user_id="u1", message_id="none-dict", session_id=None, value=None),
    ]
    ingest(engine, records)
    cols = ["session_id", "product_id", "url", "campaign", "value", "currency"]
    with engine.connect() as conn:
        rows = {
            r.message_id: tuple(r)[1:]
            for r in conn.execute(sa.select(EVENTS.c.message_id, *(EVENTS.c[c] for c in cols)))
        }
    assert rows["given"] == ("0", "", "", "0", 0.0, "EUR")
    assert rows["missing"] == rows["none-event"] == rows["none-dict"] == (None,) * 6


def test_new_profiles_of_one_batch_each_get_their_own_row(engine):
    # Profiles created together are inserted together; ids must still pair up.
    records = []
    for i in range(30):
        records.append(ev("page_view", i, anonymous_id=f"anon{i}", url=f"/{i}"))
        if i % 3 == 0:
            traits = {"n": i, "email": f"p{i}@x.io"}
            records.append(ev("identify", i, user_id=f"u{i}", traits=traits))
    ingest(engine, records)
    profiles = {p["id"]: p for p in live_profiles(engine)}
    assert len(profiles) == 40
    ids = identity_map(engine)
    for i in range(0, 30, 3):
        p = profiles[ids[("user_id", f"u{i}")]]
        assert (p["user_id"], p["attributes"]["n"]) == (f"u{i}", i)
        assert ids[("email", f"p{i}@x.io")] == p["id"]
    owners = events_by_profile(engine)
    for i in range(30):
        assert ids[("anonymous_id", f"anon{i}")] in owners


def test_pipelined_load_hooks_after_commit(engine, register_plugin):
    import gc
    import sys

    visible = []
    process = set()

    class Checker:
        @staticmethod
        def on_events_ingested(events, engine):
            with engine.connect() as conn:  # another connection: sees committed rows only
                stored = {r[0] for r in conn.execute(sa.select(EVENTS.c.message_id))}
            visible.append(all(e.event.message_id in stored for e in events))
            process.add((gc.isenabled(), sys.getswitchinterval()))

    register_plugin(Checker)
    interval = sys.getswitchinterval()
    records = [ev("page_view", i % 60, user_id=f"u{i % 7}", message_id=f"m{i}") for i in range(95)]
    report = ingest(
        engine,
        records + records[:10],
        bulk=True,
        batch_size=10,
        on_stored=events_ingested_hook(engine),
    )
    assert (report.accepted, report.duplicates) == (95, 10)
    assert visible == [True] * 10
    assert count(engine) == 95
    # The library leaves process-wide settings alone, during the load too.
    assert process == {(True, interval)}
    assert sys.getswitchinterval() == interval


def test_pipelined_load_failing_on_the_helper_keeps_earlier_batches(fresh_sqlite, monkeypatch):
    import sys

    import core.ingestion.pipeline as pipeline

    engine = open_db(fresh_sqlite())  # the pipeline is SQLite's
    monkeypatch.setattr(pipeline, "PIPELINE_COMMIT_ROWS", 20)  # two batches a transaction
    real = pipeline._insert_sqlite
    calls = {"n": 0}

    def flaky(cur, params, rows_per_statement):
        calls["n"] += 1
        if calls["n"] == 3:
            cur.execute("INSERT INTO no_such_table VALUES (1)")
        return real(cur, params, rows_per_statement)

    monkeypatch.setattr(pipeline, "_insert_sqlite", flaky)
    interval = sys.getswitchinterval()
    records = [ev("page_view", i % 60, user_id="u1", message_id=f"m{i}") for i in range(50)]
    with pytest.raises(pipeline.IngestError, match=r"record 21 .. record 30 failed.*20 events"):
        ingest(engine, records, bulk=True, batch_size=10)
    assert count(engine) == 20
    # Failing in the second batch of a transaction loses the first one with it, and says so.
    calls["n"] = -1
    engine = open_db(fresh_sqlite())
    with pytest.raises(pipeline.IngestError, match=r"record 21 .. record 40 failed.*20 events"):
        ingest(engine, records, bulk=True, batch_size=10)
    assert count(engine) == 20
    assert sys.getswitchinterval() == interval
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
    assert {"ix_events_profile_ts", "ix_events_type_ts"} <= names


def test_overlapping_import_scopes_restore_the_process_settings():
    import gc
    import sys

    from core.ingestion import bulk_import_scope
    from core.ingestion.process import PIPELINE_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    assert gc.isenabled()
    try:
        a, b = bulk_import_scope(), bulk_import_scope()
        a.__enter__()  # load A starts
        b.__enter__()  # load B starts while A runs
        a.__exit__(None, None, None)  # A ends first: B still needs the settings
        assert sys.getswitchinterval() == PIPELINE_SWITCH_INTERVAL
        assert not gc.isenabled()
        b.__exit__(None, None, None)
        assert sys.getswitchinterval() == before
        assert gc.isenabled()
    finally:
        sys.setswitchinterval(before)
        gc.enable()


def test_a_rolled_back_merge_moves_no_events_at_the_end_of_a_big_load(db_url, monkeypatch):
    import core.ingestion.pipeline as pipeline

    engine = open_db(db_url)
    monkeypatch.setattr(pipeline, "PIPELINE_COMMIT_ROWS", 1)  # a transaction per batch
    real_make_writer, real_insert = pipeline.make_writer, pipeline._insert_sqlite
    calls = {"n": 0}

    def failing_third(write):
        def write_or_fail(*args):
            calls["n"] += 1
            if calls["n"] == 3:
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk full"))
            return write(*args)

        return write_or_fail

    # Whichever path stores on this backend fails on the third batch, after
    # that batch's merge was decided and applied in its transaction.
    monkeypatch.setattr(pipeline, "make_writer", lambda e: failing_third(real_make_writer(e)))
    monkeypatch.setattr(pipeline, "_insert_sqlite", failing_third(real_insert))
    records = [
        ev("page_view", 1, anonymous_id="a1", message_id="m1"),
        ev("page_view", 2, user_id="u1", message_id="m2"),
        ev("page_view", 3, user_id="u1", anonymous_id="a1", message_id="m3"),  # merges a1 into u1
    ]
    with pytest.raises(pipeline.IngestError, match="record 3 .. record 3 failed"):
        ingest(engine, records, bulk=True, batch_size=1)
    ids = identity_map(engine)
    owners = events_by_profile(engine)
    assert owners[ids[("anonymous_id", "a1")]] == {"m1"}  # not moved to u1's profile
    assert owners[ids[("user_id", "u1")]] == {"m2"}
    assert len(live_profiles(engine)) == 2


def test_batches_committed_before_a_reading_error_reach_the_hook(fresh_sqlite, monkeypatch):

    engine = open_db(fresh_sqlite())
    seen: list[str] = []

    def records():
        for i in range(25):
            yield ev("page_view", i, user_id="u1", message_id=f"m{i}")
        raise OSError("the file went away")

    with pytest.raises(OSError, match="went away"):
        ingest(
            engine,
            records(),
            bulk=True,  # pipelined: batch 2 is on the helper when the error comes
            batch_size=10,
            on_stored=lambda events: seen.extend(e.event.message_id for e in events),
        )
    assert count(engine) == 20
    assert sorted(seen) == sorted(f"m{i}" for i in range(20))


def test_engines_that_keep_connections_to_one_thread_load_inline(tmp_path, monkeypatch):
    import core.ingestion.pipeline as pipeline

    engine = open_db(f"sqlite:///{tmp_path / 'one.db'}?check_same_thread=true")
    assert not pipeline._shares_connections(engine)
    records = [ev("page_view", i % 60, user_id="u1", message_id=f"m{i}") for i in range(50)]
    report = ingest(engine, records, bulk=True, batch_size=10)
    assert report.accepted == count(engine) == 50
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
    assert {"ix_events_profile_ts", "ix_events_type_ts"} <= names


def test_a_failing_hook_still_leaves_every_committed_batch_hooked(fresh_sqlite, monkeypatch):
    import core.ingestion.pipeline as pipeline

    engine = open_db(fresh_sqlite())
    monkeypatch.setattr(pipeline, "PIPELINE_COMMIT_ROWS", 30)  # three batches a transaction
    calls: list[str] = []

    def hook(events):
        calls.append(events[0].event.message_id)
        if len(calls) == 1:
            raise RuntimeError("hook broke")

    records = [ev("page_view", i % 60, user_id="u1", message_id=f"m{i}") for i in range(50)]
    with pytest.raises(RuntimeError, match="hook broke"):
        ingest(engine, records, bulk=True, batch_size=10, on_stored=hook)
    assert count(engine) == 30  # the first transaction; the load stops at its hook failure
    assert calls == ["m0", "m10", "m20"]


def test_an_interrupt_after_the_helper_finished_keeps_the_handed_over_batches(
    fresh_sqlite, monkeypatch, request
):
    import _thread
    import signal
    import threading
    import time

    import core.ingestion.pipeline as pipeline

    engine = open_db(fresh_sqlite())
    real = pipeline._insert_sqlite
    calls = {"n": 0}

    def slow_second(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            # Ctrl-C while the loader waits; Python raises it once the wait ends.
            threading.Timer(0.1, _thread.interrupt_main).start()
            time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(pipeline, "_insert_sqlite", slow_second)
    # A process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and then interrupt_main does nothing: Ctrl-C's handler here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    hooked: list[str] = []
    records = [ev("page_view", i % 60, user_id="u1", message_id=f"m{i}") for i in range(55)]
    with pytest.raises(KeyboardInterrupt):
        ingest(
            engine,
            records,
            bulk=True,
            batch_size=10,
            on_stored=lambda events: hooked.extend(e.event.message_id for e in events),
        )
    assert count(engine) == 20  # both batches handed over, committed at exit
    assert sorted(hooked) == sorted(f"m{i}" for i in range(20))
    with engine.begin() as conn:  # and nothing holds the write lock
        conn.execute(sa.text("CREATE INDEX ix_probe ON events (source)"))


def test_stored_events_build_their_event_only_when_read_and_as_validated(db_url):
    """The plain path hands hooks StoredEvents without building Event; read,
    ``event`` is the model Event.model_validate gives for the record."""
    from core.ingestion import Event

    engine = open_db(db_url)
    records = [
        {
            "type": "page_view",
            "user_id": "u1",
            "ts": "2026-01-02T03:04:05+00:00",
            "message_id": "m1",
        },
        {"type": "identify", "anonymous_id": "a1", "traits": {"plan": "pro"}, "message_id": "m2"},
        {"type": "purchase", "user_id": "u1", "value": 12, "currency": "eur"},  # not plain
    ]
    seen = []
    ingest(engine, records, on_stored=seen.extend)
    assert [e.type for e in seen] == ["page_view", "identify", "purchase"]
    for stored, record in zip(seen, records, strict=True):
        expected = Event.model_validate(record)
        assert stored.event is stored.event  # built once
        assert stored.event.model_dump() == expected.model_dump()
        given = stored.event.model_fields_set - {"message_id"}
        assert given == expected.model_fields_set - {"message_id"}
        assert stored.ts == (expected.ts or stored.received_at)
    assert "type='page_view'" in repr(seen[0])
