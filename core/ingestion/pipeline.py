"""``ingest``: validate records, store them batch by batch, call the hook.

Every source turns what it receives into dicts of the one event shape
(``core.ingestion.schema``); ``ingest`` validates them, drops duplicates (same
``message_id``), resolves identities, writes in bounded transactions and then
calls ``on_events_ingested``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine

from core.db.models import utcnow
from core.ingestion.activity import BatchActivity
from core.ingestion.activity import record as record_activity
from core.ingestion.batch import store_batch
from core.ingestion.bulk import DeferredLoad, bulk_load
from core.ingestion.crashpoints import crash_point
from core.ingestion.plain import plain_fields
from core.ingestion.report import IngestError, IngestReport, Rejection
from core.ingestion.schema import Event, Fields, _unreadable, describe_error, parse_timezone
from core.ingestion.writers import (
    SQLITE_PIPELINE_ROWS_PER_STATEMENT,
    EventWriter,
    _insert_sqlite,
    _sqlite_params,
    make_writer,
)
from core.privacy.minimise import Minimiser, configured
from core.privacy.policy import ConsentPolicy, current_policy
from core.types import RawRecord, StoredEvent

Record = RawRecord | dict | Event


def ingest(
    engine: Engine,
    records: Iterable[Record],
    *,
    source: str = "api",
    batch_size: int = 5000,
    default_tz: str | tzinfo | None = None,
    ts_format: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    bulk: bool = False,
    on_stored: Callable[[list[StoredEvent]], None] | None = None,
    on_loaded: Callable[[set[int]], None] | None = None,
    policy: ConsentPolicy | None = None,
    minimise: Minimiser | None = None,
) -> IngestReport:
    """Validate, dedupe, resolve and store events; one transaction per batch
    (a big SQLite load groups batches, up to PIPELINE_COMMIT_ROWS events each).

    Bad records are reported, never fatal: good ones in the same batch are kept.
    ``on_progress(n)`` is called with the number of records read per batch.
    ``on_stored(events)``: called after each committed batch with its stored
    events; pass ``core.plugins.events_ingested_hook(engine)`` for the plugins'
    ``on_events_ingested`` (real-time segments), or nothing for a back-load.
    ``on_loaded(profile_ids)``: called once when the whole load is in (for a
    bulk load: after its indexes are rebuilt and merges applied) with the ids
    of every profile it stored events on; pass ``core.plugins.
    profiles_loaded_hook(engine)`` for ``on_profiles_loaded``, with
    ``events_ingested_hook(engine, bulk=True)`` as ``on_stored``. A load that
    fails makes no call: the next incremental segment run evaluates the
    profiles of every event stored since the run before.
    ``bulk=True``: a bulk load (core.ingestion.bulk): the events' secondary
    indexes are built once at the end instead of row by row, crash-safely, and
    on SQLite the INSERTs are pipelined. The caller chooses (see
    ``worth_bulk_loading``); a command running one enters
    ``bulk_import_scope`` for the process-wide settings that speed it up.
    ``policy``: the consent policy applied to every batch (core.privacy.policy);
    by default the one in the settings file.
    ``minimise``: what of each event is stored (core.privacy.minimise); by
    default the ``[privacy.minimise]`` of the settings file.
    """
    if isinstance(default_tz, str):
        default_tz = parse_timezone(default_tz)
    context = {"default_tz": default_tz, "ts_format": ts_format}
    report = IngestReport()
    rejected = report.rejected
    # ts_format changes how Event reads every timestamp; the plain form assumes ISO.
    plain = plain_fields if ts_format is None else None
    validate_event = Event.model_validate

    def check(data: dict[str, Any]) -> Event | Fields:
        """The plain form's fields, else the Event (raises ValidationError)."""
        if plain is not None and type(data) is dict and (fields := plain(data)) is not None:
            return fields
        return validate_event(data, context=context)

    batch: list[Event | Fields] = []
    # Where the current batch starts and ends, named only if storing it fails.
    first = last = None
    touched: set[int] | None = set() if on_loaded is not None else None
    with (
        bulk_load(engine, bulk) as load,
        BatchWriter(
            engine,
            source,
            report,
            load,
            on_stored,
            pipeline=bulk,
            touched=touched,
            policy=policy or current_policy(),
            minimiser=configured() if minimise is None else minimise,
        ) as out,
    ):
        n = 0
        for n, item in enumerate(records, 1):
            # Plain dicts are the bulk case: validated inline, located by number.
            if type(item) is dict:
                try:
                    batch.append(check(item))
                except ValidationError as exc:
                    rejected.append(Rejection(f"record {n}", describe_error(exc)))
                    continue
            elif isinstance(item, Event):
                batch.append(item)
            else:
                raw = item if isinstance(item, RawRecord) else _unexpected(item, n)
                if (bad := _unreadable(raw)) is not None:
                    rejected.append(bad)
                    continue
                try:
                    batch.append(check(raw.data))  # type: ignore[arg-type]
                except ValidationError as exc:
                    rejected.append(Rejection(raw.location, describe_error(exc)))
                    continue
            last = (n, item)
            first = first or last
            if len(batch) >= batch_size:
                out.put(batch, _span(first, last))
                batch, first = [], None
                if on_progress:
                    on_progress(n - report.received)
                    report.received = n
        if batch:
            out.put(batch, _span(first, last))
        if on_progress and n > report.received:
            on_progress(n - report.received)
        report.received = n
    out.record_tail()
    if on_loaded is not None and touched:
        crash_point("ingest.loaded")
        on_loaded(touched)
    return report


def _unexpected(item: object, n: int) -> RawRecord:
    return RawRecord(f"record {n}", None, f"expected an object, got {type(item).__name__}")


def _span(first: tuple[int, Any], last: tuple[int, Any]) -> tuple[str, str]:
    def where(pos: tuple[int, Any]) -> str:
        n, item = pos
        return item.location if isinstance(item, RawRecord) else f"record {n}"

    return where(first), where(last)


class BatchWriter:
    """Stores batches in order, commits, then runs the hook for each batch.

    With ``pipeline`` (bulk loads, SQLite), a batch's INSERT statements run on
    a helper thread, SQLite working without the GIL, while the caller
    validates the next batch; each batch still starts after the one before
    it is in (its duplicate check and identity lookups must see those rows
    and profiles). Batches then share a transaction up to
    PIPELINE_COMMIT_ROWS events: a commit writes every index page the
    transaction touched, and random message ids touch a new page per event.
    The helper waits for the GIL whenever SQLite is done with a statement,
    which ``bulk_import_scope`` shortens for the commands that run big loads.
    """

    def __init__(
        self,
        engine: Engine,
        source: str,
        report: IngestReport,
        load: DeferredLoad | None = None,
        on_stored: Callable[[list[StoredEvent]], None] | None = None,
        pipeline: bool = False,
        touched: set[int] | None = None,
        policy: ConsentPolicy | None = None,
        minimiser: Minimiser | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.minimiser = minimiser
        # Where the ids of the profiles stored batches went to are gathered.
        self.touched = touched
        self.load = load or DeferredLoad()
        self.source = source
        self.report = report
        self.writer = make_writer(engine)
        self.hook: Callable[[list[StoredEvent]], None] | None = on_stored
        self.helper: ThreadPoolExecutor | None = None
        if pipeline and _shares_connections(engine):
            self.helper = ThreadPoolExecutor(1, thread_name_prefix="segflow-insert")
        # The pipeline's open transaction, the batches in it and the one on the helper.
        self.conn: Connection | None = None
        self.group: list[_Batch] = []
        self.pending: _Pending | None = None
        # Rejections already counted in ingest_counts (with a batch's transaction).
        self.rejects_recorded = 0

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self.helper is None:
            return
        try:
            if exc is None:
                self._finish()
                self._commit()
            else:
                # The batches already handed over are still stored and get
                # their hook; the error under way stays the one raised.
                try:
                    self._finish()
                    self._commit()
                except Exception as also:
                    exc.add_note(f"also: {also}")
        finally:
            self.helper.shutdown()  # first: the helper may still be using self.conn
            if self.conn is not None:
                self.conn.close()

    def put(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        if self.helper is None:
            self._store(batch, span)
        else:
            self._finish()
            self._start(batch, span)

    def _store(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        try:
            with self.engine.begin() as conn:
                stored = self._prepare(conn, self.writer, batch)
        except (sa.exc.DBAPIError, self.engine.dialect.dbapi.Error) as exc:
            raise self._failed(span, exc) from exc
        crash_point("ingest.batch")
        if self.hook is not None and stored:
            self.hook(stored)

    def _prepare(
        self, conn: Connection, writer: EventWriter, batch: list[Event | Fields]
    ) -> list[StoredEvent]:
        report = self.report
        duplicates = report.duplicates
        activity = BatchActivity()
        stored = store_batch(
            conn,
            writer,
            batch,
            self.source,
            report,
            self.hook is not None,
            self.load,
            self.touched,
            activity,
            self.policy,
            self.minimiser,
        )
        activity.duplicates = report.duplicates - duplicates
        activity.rejected = len(report.rejected) - self.rejects_recorded
        record_activity(conn, self.source, activity, utcnow())
        self.rejects_recorded = len(report.rejected)
        return stored

    def record_tail(self) -> None:
        """Count the rejections no batch's transaction counted (the call's last
        records, or all of them), in one transaction of their own."""
        rejected = len(self.report.rejected) - self.rejects_recorded
        if rejected <= 0:
            return
        with self.engine.begin() as conn:
            record_activity(conn, self.source, BatchActivity(rejected=rejected), utcnow())
        self.rejects_recorded = len(self.report.rejected)

    def _start(self, batch: list[Event | Fields], span: tuple[str, str]) -> None:
        """Everything but the INSERTs now; those (and the commit) on the helper."""
        if self.conn is None:
            self.conn = self.engine.connect()
            self.conn.begin()
        try:
            insert = _LaterSqliteInsert()
            stored = self._prepare(self.conn, insert, batch)
        except BaseException as exc:
            lost = self._roll_back(span)
            if isinstance(exc, sa.exc.DBAPIError | self.engine.dialect.dbapi.Error):
                raise self._failed(lost, exc) from exc
            raise
        rows = sum(b.claimed for b in self.group) + insert.claimed
        commit = rows >= PIPELINE_COMMIT_ROWS
        assert self.helper is not None
        future = self.helper.submit(insert.run, self.conn, commit)
        self.pending = _Pending(_Batch(span, stored, insert.claimed), future, commit)

    def _finish(self) -> None:
        """Wait for the batch on the helper; once committed, account and run hooks."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        try:
            pending.batch.inserted = pending.future.result()
        except BaseException as exc:
            if not pending.future.done() or pending.future.exception() is not exc:
                # Interrupted here, not failed there: the helper's batch is
                # still to be accounted for (at exit at the latest).
                self.pending = pending
                raise
            # The helper closed the connection: the transaction rolled back.
            self.group.append(pending.batch)
            self.conn = None
            lost = self._roll_back(pending.batch.span)
            if isinstance(exc, sa.exc.DBAPIError | self.engine.dialect.dbapi.Error):
                raise self._failed(lost, exc) from exc
            raise
        crash_point("ingest.batch")
        self.group.append(pending.batch)
        if pending.commit:
            self.conn = None  # committed and closed by the helper
            self._committed()

    def _commit(self) -> None:
        """Commit the open transaction (the load's last batches)."""
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            conn.commit()
        except (sa.exc.DBAPIError, self.engine.dialect.dbapi.Error) as exc:
            lost = self._roll_back(self.group[-1].span)
            raise self._failed(lost, exc) from exc
        finally:
            conn.close()
        self._committed()

    def _committed(self) -> None:
        report = self.report
        group, self.group = self.group, []
        for b in group:
            if b.inserted != b.claimed:
                # Another writer stored some of these between our check and insert.
                report.accepted -= b.claimed - b.inserted
                report.duplicates += b.claimed - b.inserted
        if self.hook is None:
            return
        # Every committed batch gets its call, even after one fails; the
        # first failure is raised afterwards and stops the load.
        failure: Exception | None = None
        for b in group:
            if b.stored:
                try:
                    self.hook(b.stored)
                except Exception as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def _roll_back(self, last: tuple[str, str]) -> tuple[str, str]:
        """Forget the open transaction's batches; the span they covered."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        first = self.group[0].span if self.group else last
        self.report.accepted -= sum(b.claimed for b in self.group)
        self.group = []
        return first[0], last[1]

    def _failed(self, span: tuple[str, str], exc: Exception) -> IngestError:
        # Driver errors come wrapped from SQLAlchemy, or bare from the
        # driver-level COPY and multi-row INSERT.
        reason = getattr(exc, "orig", None) or exc
        return IngestError(
            f"storing {span[0]} .. {span[1]} failed: {' '.join(str(reason).split())}; "
            f"the {self.report.accepted:,} events committed before are kept"
        )


def _shares_connections(engine: Engine) -> bool:
    """Whether a connection of this SQLite engine may be handed to another thread."""
    if engine.dialect.name != "sqlite":
        return False
    if not isinstance(engine.pool, sa.pool.QueuePool | sa.pool.StaticPool):
        return False  # e.g. SingletonThreadPool: a connection per thread
    same_thread = str(engine.url.query.get("check_same_thread", "false")).lower()
    return same_thread in ("false", "0", "no", "off")


# Events per transaction on a pipelined load (batches are grouped up to it).
PIPELINE_COMMIT_ROWS = 50_000


@dataclass
class _Batch:
    span: tuple[str, str]
    stored: list[StoredEvent]
    claimed: int
    inserted: int = 0


@dataclass
class _Pending:
    batch: _Batch
    future: Future[int]
    commit: bool


class _LaterSqliteInsert:
    """An EventWriter that converts the rows at once and inserts them later,
    on the pipeline's helper; it claims every row meanwhile."""

    def __init__(self) -> None:
        self.params: list[Any] = []
        self.claimed = 0

    def __call__(
        self, conn: Connection, events: list[Fields], pids: list[int], source: str, now: datetime
    ) -> int:
        self.params = _sqlite_params(events, pids, source, now)
        self.claimed = len(events)
        return self.claimed

    def run(self, conn: Connection, commit: bool) -> int:
        """Insert (and commit and close ``conn``); rows inserted. On failure
        ``conn`` is closed, rolling its transaction back."""
        try:
            cur = conn.connection.driver_connection.cursor()
            try:
                inserted = _insert_sqlite(cur, self.params, SQLITE_PIPELINE_ROWS_PER_STATEMENT)
            finally:
                cur.close()
            if commit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        if commit:
            conn.close()
        return inserted
