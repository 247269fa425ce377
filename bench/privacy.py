"""Privacy: what the suppression check costs ingestion, and what an erasure
costs with and without its vacuum, on SQLite.

Cases:
- ingesting N demo events into a fresh store with the suppression check
  off (baseline: ``core.ingestion.batch`` given no key, so no lookup);
- the same events, the check on, against a suppression list of S hashes
  (one lookup of each batch's identifiers; target within 1.1x the baseline);
- erasing one person from that store (every table, suppression, audit, the
  WAL checkpointed and truncated) without the vacuum (baseline), and with it
  (what ``segflow privacy erase`` does: the file rewritten).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Result, ratio, timer

TITLE = "Privacy: the suppression check at ingestion, an erasure with and without vacuum"
SECRET = "bench-privacy-secret-0123456789abcdef"
END = datetime(2025, 1, 1, tzinfo=UTC)
EVENTS_PER_PERSON = 34  # the demo generator's rough average
MAX_CHECK_RATIO = 1.1
_facts: dict[str, Any] = {}


def _sizes(quick: bool) -> tuple[int, int]:
    events, suppressed = (50_000, 10_000) if quick else (500_000, 100_000)
    scale = common.SCALE or 1.0
    return max(5_000, int(events * scale)), max(1_000, int(suppressed * scale))


def _events(n: int) -> list[dict[str, Any]]:
    from plugins.demo.generator import generate

    return list(islice(generate(max(1, n // EVENTS_PER_PERSON), seed=5, days=60, end=END), n))


@contextlib.contextmanager
def _check(on: bool) -> Iterator[None]:
    import core.ingestion.batch as batch

    saved = batch.secret_key
    batch.secret_key = (lambda: SECRET) if on else (lambda: None)
    try:
        yield
    finally:
        batch.secret_key = saved


def _fresh(template: Path, folder: Path, name: str) -> str:
    path = folder / f"{name}.db"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


def _suppress(url: str, n: int) -> None:
    import sqlalchemy as sa

    from core.db import open_db
    from core.db.tables import SUPPRESSIONS

    engine = open_db(url)
    rows = [{"hash": secrets.token_hex(32), "subject": "bench", "created_at": END}
            for _ in range(n)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(SUPPRESSIONS), rows)
    engine.dispose()


def _ingest(url: str, events: list[dict[str, Any]], on: bool) -> tuple[float, Any]:
    from core.db import open_db
    from core.ingestion import ingest

    engine = open_db(url)
    with _check(on), timer(f"privacy-ingest-{'on' if on else 'off'}", profile=True) as t:
        report = ingest(engine, events, source="bench")
    engine.dispose()
    return t[0], report


def run(quick: bool) -> list[Result]:
    from core.db import open_db
    from core.privacy.erase import erase_person

    n, suppressed = _sizes(quick)
    events = _events(n)
    _facts.update(events=len(events), suppressed=suppressed)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-privacy-") as tmp:
        folder = Path(tmp)
        template = folder / "template.db"
        open_db(f"sqlite:///{template}").dispose()
        best: dict[bool, float] = {}
        last_url = ""
        for attempt in range(common.repeats(quick)):
            for on in (False, True):
                url = _fresh(template, folder, f"{attempt}-{on}")
                if on:
                    _suppress(url, suppressed)
                seconds, report = _ingest(url, events, on)
                if report.accepted != len(events):
                    raise RuntimeError(f"stored {report.accepted} of {len(events)} events")
                best[on] = min(best.get(on, seconds), seconds)
                last_url = url
        off = Result("ingest, suppression check off (baseline)", len(events), best[False])
        check = Result(f"ingest, check on, {suppressed:,} suppressed", len(events), best[True])
        check.ratio = ratio(best[True], best[False])
        check.check(max_ratio=MAX_CHECK_RATIO)
        results = [off, check]

        engine = open_db(last_url)
        size = Path(last_url.removeprefix("sqlite:///")).stat().st_size
        _facts.update(size_mb=size / 1e6)
        with timer("privacy-erase") as t:
            plain = erase_person(engine, "u000001", secret_key=SECRET, vacuum=False)
        bare = Result("erase one person, no vacuum (baseline)", 1, t[0])
        with timer("privacy-erase-vacuum") as t:
            full = erase_person(engine, "u000002", secret_key=SECRET)
        vacuumed = Result("erase one person, then vacuum", 1, t[0])
        vacuumed.ratio = ratio(t[0], bare.seconds)
        for row, report in ((bare, plain), (vacuumed, full)):
            row.notes.append(f"{sum(report.deleted.values()):,} rows deleted")
        engine.dispose()
        results += [bare, vacuumed]
    return results


def describe(quick: bool) -> str:
    s = _facts
    return "\n".join([
        f"- {s.get('events', 0):,} demo-generator events (seed 5, 60 days), "
        "`core.ingestion.ingest` into a fresh SQLite store, batches of 5,000",
        f"- check on: {s.get('suppressed', 0):,} random hashes in `suppressions`; each batch's "
        "identifiers are hashed (HMAC-SHA256) and looked up in one query",
        f"- erasure: one demo person from that store ({s.get('size_mb', 0):.0f} MB), with "
        "secure_delete; the vacuum rewrites the whole file",
    ])  # fmt: skip
