"""Privacy: what the suppression check costs ingestion, and what an erasure
costs with and without its vacuum, on SQLite.

Cases:
- ingesting N demo events into a fresh store with the suppression check
  off (baseline: ``core.ingestion.batch`` given no key, so no lookup);
- the same events, the check on, against a suppression list of S hashes
  (one lookup of each batch's identifiers; target within 1.1x the baseline);
- erasing one person from that store (every table, suppression, audit, the
  WAL checkpointed and truncated) without the vacuum (baseline), and with it
  (what ``segflow privacy erase`` does: the file rewritten);
- the same events, suppression check off, with ``SEGFLOW_ENCRYPTION_KEY``
  set (emails, names and phones sealed with AES-GCM, email identities as
  blind indexes; ratio to the first case), then ``rotate_keys`` of that
  store to a new key (every sealed value and blind index rewritten; no vacuum).
"""

from __future__ import annotations

import contextlib
import os
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

TITLE = (
    "Privacy: the suppression check at ingestion, an erasure with and without vacuum, "
    "encryption at rest"
)
SECRET = "bench-privacy-secret-0123456789abcdef"
END = datetime(2025, 1, 1, tzinfo=UTC)
EVENTS_PER_PERSON = 34  # the demo generator's rough average
MAX_CHECK_RATIO = 1.1
MAX_SEALED_RATIO = 1.25
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


@contextlib.contextmanager
def _key(key: str | None, old: str | None = None) -> Iterator[None]:
    from core.privacy.crypto import KEY_ENV, OLD_KEYS_ENV

    saved = {k: os.environ.get(k) for k in (KEY_ENV, OLD_KEYS_ENV)}
    for name, value in ((KEY_ENV, key), (OLD_KEYS_ENV, old)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


def _ingest(
    url: str, events: list[dict[str, Any]], on: bool, key: str | None = None
) -> tuple[float, Any]:
    from core.db import open_db
    from core.ingestion import ingest

    engine = open_db(url)
    name = "sealed" if key else "on" if on else "off"
    with _key(key), _check(on), timer(f"privacy-ingest-{name}", profile=True) as t:
        report = ingest(engine, events, source="bench")
    engine.dispose()
    return t[0], report


def run(quick: bool) -> list[Result]:
    from core.db import open_db
    from core.privacy.crypto import new_key
    from core.privacy.erase import erase_person

    n, suppressed = _sizes(quick)
    key = new_key()
    events = _events(n)
    _facts.update(events=len(events), suppressed=suppressed)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-privacy-") as tmp:
        folder = Path(tmp)
        template = folder / "template.db"
        open_db(f"sqlite:///{template}").dispose()
        best: dict[str, float] = {}
        last_url = sealed_url = ""
        for attempt in range(common.repeats(quick)):
            for case in ("off", "on", "sealed"):
                url = _fresh(template, folder, f"{attempt}-{case}")
                if case == "on":
                    _suppress(url, suppressed)
                seconds, report = _ingest(
                    url, events, case == "on", key if case == "sealed" else None
                )
                if report.accepted != len(events):
                    raise RuntimeError(f"stored {report.accepted} of {len(events)} events")
                best[case] = min(best.get(case, seconds), seconds)
                if case == "sealed":
                    sealed_url = url
                else:
                    last_url = url
        off = Result("ingest, suppression check off (baseline)", len(events), best["off"])
        check = Result(f"ingest, check on, {suppressed:,} suppressed", len(events), best["on"])
        check.ratio = ratio(best["on"], best["off"])
        check.check(max_ratio=MAX_CHECK_RATIO)
        sealed = Result("ingest, encryption key set", len(events), best["sealed"])
        sealed.ratio = ratio(best["sealed"], best["off"])
        sealed.check(max_ratio=MAX_SEALED_RATIO)
        results = [off, check, sealed]

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
        results += [bare, vacuumed, _rotate(sealed_url, key)]
    return results


def _rotate(url: str, key: str) -> Result:
    from core.db import open_db
    from core.privacy.crypto import new_key
    from core.privacy.rotate import rotate_keys

    engine = open_db(url)
    with _key(new_key(), key), timer("privacy-rotate", profile=True) as t:
        report = rotate_keys(engine, vacuum=False)
    engine.dispose()
    rows = sum(report.rewritten.values())
    row = Result("rotate-key of the sealed store (rows rewritten)", rows, t[0])
    row.notes.append(
        "rows rewritten: " + ", ".join(f"{n:,} {t}" for t, n in report.rewritten.items() if n)
    )
    return row


def describe(quick: bool) -> str:
    s = _facts
    return "\n".join([
        f"- {s.get('events', 0):,} demo-generator events (seed 5, 60 days), "
        "`core.ingestion.ingest` into a fresh SQLite store, batches of 5,000",
        f"- check on: {s.get('suppressed', 0):,} random hashes in `suppressions`; each batch's "
        "identifiers are hashed (HMAC-SHA256) and looked up in one query",
        f"- erasure: one demo person from that store ({s.get('size_mb', 0):.0f} MB), with "
        "secure_delete; the vacuum rewrites the whole file",
        "- encryption: the same events into a fresh store with `SEGFLOW_ENCRYPTION_KEY` set "
        "(suppression check off): profiles' email and PII traits, identify events' traits "
        "sealed with AES-GCM, email identities stored as HMAC blind indexes; rotate-key "
        "then rewrites every sealed value under a new key, 500 rows a transaction, no vacuum",
    ])  # fmt: skip
