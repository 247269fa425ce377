"""Group commit for the API: many concurrent requests' events, one transaction.

A request carrying one event would otherwise pay for a whole transaction
alone, and SQLite has one writer, so such requests queue behind each other.
Here one thread takes every submission waiting at that moment and stores them
with one ``ingest`` call; each submitter is answered once its events are
committed, and nothing is acknowledged that was not stored. Should a group
fail, each of its submissions is tried alone, so one bad request cannot fail
the others.

``on_events_ingested`` (real-time segment evaluation) then runs on a second
thread, off the request path: it takes every committed batch waiting for it,
so under load one evaluation covers many requests' profiles instead of one
each. The time from a request to its recorded segment change is measured in
bench/api.py.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import groupby

from sqlalchemy.engine import Engine

from core.ingestion.pipeline import ingest
from core.ingestion.schema import Event
from core.types import StoredEvent

log = logging.getLogger(__name__)

# One group stores at most this many events (the bulk path's batch size).
MAX_GROUP_EVENTS = 5000
# When only one submission is waiting, the writer pauses this long once for
# others: while it sleeps the event loop (which shares the GIL) reads the next
# requests, and groups under load grow from a few to about the number of
# concurrent clients. The pause is the most a request can lose to it.
GATHER_SECONDS = 0.0005
# Under load (at least BUSY_ROUND events in its last round) the hook thread
# waits this long after being woken before it takes what has been committed:
# one evaluation then covers hundreds of requests' profiles. Lighter traffic
# (200 requests/s brings 1-3 events a round) is evaluated at once.
HOOK_GATHER_SECONDS = 0.005
BUSY_ROUND = 8
# Committed events waiting for the hook: beyond this the writer waits for the
# hook to catch up (answers slow down) rather than let memory grow.
MAX_HOOK_BACKLOG = 50_000


class CommitterClosed(RuntimeError):
    """The committer was closed; nothing more is accepted."""


@dataclass
class Submission:
    events: list[Event]
    source: str
    done: Future[None] = field(default_factory=Future)


class GroupCommitter:
    """Stores submissions on one thread and runs the ingest hook on another."""

    def __init__(
        self,
        engine: Engine,
        on_stored: Callable[[list[StoredEvent]], None] | None = None,
        max_events: int = MAX_GROUP_EVENTS,
    ) -> None:
        self.engine = engine
        # Called on the hook thread with what was committed (events_ingested_hook).
        self.on_stored = on_stored
        self.max_events = max_events
        self._queue: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._stored: list[StoredEvent] = []
        self._stored_changed = threading.Condition()
        self._lock = threading.Lock()  # orders submit, start and close
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._writer_done = False

    def submit(self, events: list[Event], source: str) -> Future[None]:
        """Queue validated events; the future resolves once they are committed.

        Cancelling the future before the writer takes it withdraws the events.
        """
        for e in events:
            if not isinstance(e, Event):
                raise TypeError(f"submit takes validated Event objects, not {type(e).__name__}")
        item = Submission(events, source)
        if not events:
            item.done.set_result(None)
            return item.done
        with self._lock:
            if self._closed:
                raise CommitterClosed("the event writer is closed")
            if not self._threads:
                self._start()
            self._queue.put(item)
        return item.done

    def store(self, events: list[Event], source: str) -> None:
        """Submit and wait (for callers on a worker thread)."""
        self.submit(events, source).result()

    def close(self) -> None:
        """Store what is queued, run the hook for it, then stop both threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
            if threads:
                self._queue.put(None)
        for t in threads:
            t.join()

    def _start(self) -> None:
        self._threads = [
            threading.Thread(target=self._write, name="segflow-group-commit", daemon=True),
            threading.Thread(target=self._notify, name="segflow-ingest-hook", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- the writer thread ------------------------------------------------------------

    def _write(self) -> None:
        try:
            while (group := self._take()) is not None:
                try:
                    self._store(group)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not hang anyone
                    log.exception("storing a group of %d submissions failed", len(group))
                    for s in group:
                        if not s.done.done():
                            s.done.set_exception(exc)
        finally:
            with self._stored_changed:
                self._writer_done = True
                self._stored_changed.notify_all()

    def _take(self) -> list[Submission] | None:
        """The next group: everything waiting now (None once closed and drained)."""
        item = self._queue.get()
        if item is None:
            return None
        group: list[Submission] = []
        size, waited = 0, False
        while True:
            if item is not None:
                # A submitter that gave up (cancelled) before now is left out.
                if item.done.set_running_or_notify_cancel():
                    group.append(item)
                    size += len(item.events)
                item = None
            if size >= self.max_events:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if waited:
                    break
                waited = True
                time.sleep(GATHER_SECONDS)
                continue
            if item is None:
                self._queue.put(None)  # seen again after this group is stored
                break
        return group

    def _store(self, group: list[Submission]) -> None:
        # One ingest call per run of the same source (the source is a column).
        for _, run in groupby(group, key=lambda s: s.source):
            subs = list(run)
            try:
                self._ingest(subs)
            except Exception as exc:  # noqa: BLE001 - answered below
                if len(subs) == 1:
                    subs[0].done.set_exception(exc)
                    continue
                # Something in this run could not be stored: alone, each
                # submission succeeds or fails on its own content.
                for s in subs:
                    try:
                        self._ingest([s])
                    except Exception as one:  # noqa: BLE001
                        s.done.set_exception(one)
                    else:
                        s.done.set_result(None)
            else:
                for s in subs:
                    s.done.set_result(None)

    def _ingest(self, subs: list[Submission]) -> None:
        events = [e for s in subs for e in s.events]
        ingest(
            self.engine,
            events,
            source=subs[0].source,
            batch_size=len(events),
            on_stored=self._hand_over if self.on_stored is not None else None,
        )

    def _hand_over(self, stored: list[StoredEvent]) -> None:
        with self._stored_changed:
            while len(self._stored) >= MAX_HOOK_BACKLOG:
                self._stored_changed.wait()
            self._stored.extend(stored)
            self._stored_changed.notify_all()

    # -- the hook thread --------------------------------------------------------------

    def _notify(self) -> None:
        gather = 0.0
        while True:
            with self._stored_changed:
                while not self._stored and not self._writer_done:
                    self._stored_changed.wait()
                if not self._stored:
                    return  # the writer stopped and everything was handed on
            if gather:
                time.sleep(gather)
            with self._stored_changed:
                events, self._stored = self._stored, []
                self._stored_changed.notify_all()  # room for a waiting writer
            # Light traffic is evaluated at once; under load the next round
            # waits to gather.
            gather = HOOK_GATHER_SECONDS if len(events) >= BUSY_ROUND else 0.0
            if self.on_stored is None:
                continue
            try:
                self.on_stored(events)
            except Exception:
                # The events are stored; a failing plugin must not stop the hook
                # for later ones. Their profiles are not re-evaluated now: the
                # next segment run (incremental) catches them up.
                log.exception("on_events_ingested failed for %d events", len(events))
