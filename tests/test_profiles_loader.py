"""Reading several people's data at once (core.segments.data.ProfilesLoader),
as workflow rules do for a batch of runs, gives what reading each alone gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.consents import set_consent
from core.db import open_db
from core.db.tables import PROFILES, SCORES
from core.ingestion import ingest
from core.segments.data import ProfilesLoader, load_profile_data
from tests.helpers import people

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def store(engine) -> list[int]:
    ids = people(engine, 3, consent=False)
    set_consent(engine, "p0", "email", True, "test")
    events = [
        {"type": t, "user_id": f"p{i}", "ts": at(h).isoformat(), "product_id": "P1",
         "session_id": f"s{i}", "properties": {"n": h}}
        for i in range(2)
        for t, h in (("product_view", 0), ("add_to_cart", 1), ("purchase", 1), ("page_view", 5))
    ]  # fmt: skip
    assert not ingest(engine, events).rejected
    with engine.begin() as conn:
        conn.execute(PROFILES.update().where(PROFILES.c.id == ids[1]).values(attributes={"vip": 1}))
        # Two runs of a model: the score as of a time is the latest run's then.
        conn.execute(
            SCORES.insert(),
            [
                {
                    "profile_id": ids[0],
                    "model": "points",
                    "value": 1.0,
                    "components": {},
                    "as_of": at(0.5),
                    "computed_at": at(0.5),
                },
                {
                    "profile_id": ids[0],
                    "model": "points",
                    "value": 7.0,
                    "components": {},
                    "as_of": at(3),
                    "computed_at": at(3),
                },
                {
                    "profile_id": ids[1],
                    "model": "points",
                    "value": 2.0,
                    "components": {},
                    "as_of": at(0.5),
                    "computed_at": at(0.5),
                },
            ],  # fmt: skip
        )
    return ids


def test_a_batch_read_gives_each_person_what_reading_them_alone_gives(db_url):
    engine = open_db(db_url)
    ids = store(engine)
    times = [at(h) for h in (-1, 0, 0.5, 1, 2, 3, 5, 6)]
    with engine.connect() as conn:
        loader = ProfilesLoader(conn)
        loader.want(ids, times[-1])
        for when in times:
            for pid in ids:
                alone = load_profile_data(conn, pid, when)
                assert loader.get(pid, when) == alone, (pid, when)
        # Asked past what was wanted: read alone, still the same.
        later = at(9)
        assert loader.get(ids[0], later) == load_profile_data(conn, ids[0], later)
        # What was compared is not empty: events, attributes, consents, scores.
        first, second, third = (loader.get(pid, at(2)) for pid in ids)
    assert [len(d.events) for d in (first, second, third)] == [3, 3, 0]
    assert second.attributes == {"vip": 1} and first.consents == {"email_marketing"}
    assert first.scores == {"points": 1.0} and second.scores == {"points": 2.0}
