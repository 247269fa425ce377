"""What monitoring costs ingestion, and what freshness costs the dashboards.

The freshness check and the duplicate / reject spike checks read two small
tables the ingest path keeps in each batch's transaction
(core/ingestion/activity.py): ``source_activity`` (per source and type: the
newest event time, the last delivery, the count) and ``ingest_counts`` (per
day and source: stored, duplicate and rejected records). Two questions:

- does keeping them slow ingestion? The demo shop's events are stored with
  ``ingest`` (batches, as the API and small imports do, and as a bulk load,
  as ``segflow import`` does for big files) into a fresh SQLite file, once as
  the code is and once with the recording switched off (the batch's type
  count done as before, with ``collections.Counter``): the baseline, in the
  same run;
- how fast is freshness? ``core.monitoring.freshness.freshness`` on the
  loaded store, against the GROUP BY over the events table it replaces
  (whose answer it must equal).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa

from bench import common
from bench.common import Result

TITLE = "Monitoring: the cost of keeping source activity, and freshness"

SIZES = {False: 500_000, True: 20_000}
DEMO_SEED = 7
DAYS = 90
END = datetime(2025, 1, 1, tzinfo=UTC)
MAX_INGEST_RATIO = 1.05
FRESHNESS_SECONDS = 1.0


def size(quick: bool) -> int:
    n = SIZES[quick]
    return int(n * common.SCALE) if common.SCALE and not quick else n


def demo_events(n: int) -> list[dict[str, Any]]:
    from plugins.demo.generator import generate

    return list(islice(generate(max(1, n // 45), seed=DEMO_SEED, days=DAYS, end=END), n))


@contextlib.contextmanager
def recording_off() -> Iterator[None]:
    """Ingestion as before monitoring: no activity rows, the Counter of types."""
    import core.ingestion.batch as batch
    import core.ingestion.pipeline as pipeline

    def counted(records: list, now: datetime) -> dict[str, list]:
        return {t: [n, None] for t, n in Counter(r["type"] for r in records).items()}

    saved = batch.tally, pipeline.record_activity
    batch.tally, pipeline.record_activity = counted, lambda *args: None
    try:
        yield
    finally:
        batch.tally, pipeline.record_activity = saved


def _load(url: str, events: list[dict[str, Any]], bulk: bool) -> float:
    from core.db import open_db
    from core.ingestion import bulk_import_scope, ingest

    engine = open_db(url)
    scope = bulk_import_scope() if bulk else contextlib.nullcontext()
    with scope, common.timer() as t:
        report = ingest(engine, iter(events), source="demo", bulk=bulk)
    engine.dispose()
    if report.accepted != len(events):
        raise AssertionError(f"stored {report.accepted:,} of {len(events):,} events")
    return t[0]


def group_by(url: str) -> tuple[float, set[tuple]]:
    from core.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn, common.timer() as t:
        rows = conn.execute(
            sa.text("SELECT source, type, max(ts), count(*) FROM events GROUP BY source, type")
        ).all()
    engine.dispose()
    return t[0], {(s, ty, str(m)[:19], int(n)) for s, ty, m, n in rows}


def freshness_read(url: str) -> tuple[float, set[tuple]]:
    from core.db import make_engine
    from core.monitoring.freshness import freshness

    engine = make_engine(url)
    with common.timer() as t:
        frame = freshness(engine)
    engine.dispose()
    return t[0], {
        (r.source, r.type, r.last_event.strftime("%Y-%m-%d %H:%M:%S"), int(r.events))
        for r in frame.itertuples(index=False)
    }


def run(quick: bool) -> list[Result]:
    n = size(quick)
    with common.console.status(f"generating {n:,} demo events (not timed)"):
        events = demo_events(n)
    results = []
    with common.scratch_dir() as tmp:
        for bulk in (False, True):
            label = "bulk load" if bulk else "batches"
            best: dict[str, float] = {}
            for i in range(common.repeats(quick)):
                for variant in ("baseline", "segflow"):
                    url = f"sqlite:///{tmp}/{variant}-{int(bulk)}-{i}.db"
                    with recording_off() if variant == "baseline" else contextlib.nullcontext():
                        seconds = _load(url, events, bulk)
                    best[variant] = min(best.get(variant, seconds), seconds)
            results.append(
                Result(
                    f"ingest, {label}, recording off (baseline)",
                    n,
                    best["baseline"],
                    notes=["sqlite"],
                )
            )
            results.append(
                Result(
                    f"ingest, {label}, keeping source_activity and ingest_counts",
                    n,
                    best["segflow"],
                    common.ratio(best["segflow"], best["baseline"]),
                ).check(max_ratio=MAX_INGEST_RATIO)
            )
        url = f"sqlite:///{tmp}/segflow-1-0.db"
        scan_s, scanned = group_by(url)
        read_s, read = min(freshness_read(url) for _ in range(3))
        results.append(Result("freshness: GROUP BY source, type over events (baseline)", n, scan_s))
        row = Result(
            "freshness: core.monitoring.freshness (source_activity)",
            n,
            read_s,
            common.ratio(read_s, scan_s),
            target=f"< {FRESHNESS_SECONDS:g} s",
            passed=read_s < FRESHNESS_SECONDS,
        )
        if read != scanned:
            row.fail(f"differs from the GROUP BY: {sorted(read ^ scanned)[:4]}")
        results.append(row)
    return results


def describe(quick: bool) -> str:
    n = size(quick)
    return "\n".join(
        [
            f"- input: the first {n:,} events of `plugins.demo.generator.generate("
            f"{max(1, n // 45):,}, seed={DEMO_SEED}, days={DAYS}, end={END:%Y-%m-%d})`, "
            "stored with `ingest(..., source='demo')` into a fresh SQLite file per run "
            "(batches of 5,000; the bulk load inside `bulk_import_scope`)",
            "- baseline: the same with the activity recording switched off "
            "(`record_activity` a no-op, the types counted with `collections.Counter`); "
            f"the fastest of {common.repeats(quick)} interleaved runs each; target <= "
            f"{MAX_INGEST_RATIO:g}x",
            "- freshness: `freshness(engine)` on the bulk-loaded store, the fastest of 3, "
            "against `SELECT source, type, max(ts), count(*) FROM events GROUP BY source, "
            "type`, whose rows it must equal",
        ]
    )
