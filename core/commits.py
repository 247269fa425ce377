"""Group commit for the API: many concurrent requests' events, one transaction.

A request carrying one event would otherwise pay for a whole transaction
alone, and SQLite has one writer, so such requests queue behind each other.
Here one thread takes every submission waiting at that moment and stores them
with one ``ingest`` call; each submitter is answered once its events are
committed, and nothing is acknowledged that was not stored.

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
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import groupby

from sqlalchemy.engine import Engine

from core.events import Event, StoredEvent, ingest

log = logging.getLogger(__name__)

# One group stores at most this many events (the bulk path's batch size).
MAX_GROUP_EVENTS = 5000
# When only one submission is waiting, the writer pauses this long once for
# others: while it sleeps the event loop (which shares the GIL) reads the next
# requests, and groups under load grow from a few to about the number of
# concurrent clients. The pause is the most a request can lose to it.
GATHER_SECONDS = 0.0005
# The hook thread lets committed events gather this long before evaluating:
# under load one evaluation then covers hundreds of requests' profiles. It
# adds at most this much to the time from a request to its segment change.
HOOK_GATHER_SECONDS = 0.005


@dataclass
class Submission:
    events: list[Event | dict]
    source: str
    done: Future[None] = field(default_factory=Future)


class GroupCommitter:
    """Stores submissions on one thread and runs the ingest hook on another."""

    def __init__(self, engine: Engine, max_events: int = MAX_GROUP_EVENTS) -> None:
        self.engine = engine
        self.max_events = max_events
        self._queue: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._stored: list[StoredEvent] = []
        self._stored_ready = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._hook = None

    def submit(self, events: list[Event | dict], source: str) -> Future[None]:
        """Queue validated events; the future resolves once they are committed.

        Events should be validated by the caller (an invalid dict would only
        be reported in a group's report that no single submitter sees).
        """
        item = Submission(events, source)
        if not events:
            item.done.set_result(None)
            return item.done
        self._ensure_started()
        self._queue.put(item)
        return item.done

    def store(self, events: list[Event | dict], source: str) -> None:
        """Submit and wait (for callers on a worker thread)."""
        self.submit(events, source).result()

    def close(self) -> None:
        """Store what is queued, run the hook for it, then stop both threads."""
        with self._lock:
            threads, self._threads = self._threads, []
        if not threads:
            return
        self._queue.put(None)
        threads[0].join()
        with self._stored_ready:
            self._closing = True
            self._stored_ready.notify()
        threads[1].join()

    def _ensure_started(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads:
                return
            from core.plugins import get_manager

            hook = get_manager().hook.on_events_ingested
            self._hook = hook if hook.get_hookimpls() else None
            self._closing = False
            self._threads = [
                threading.Thread(target=self._write, name="segflow-group-commit", daemon=True),
                threading.Thread(target=self._notify, name="segflow-ingest-hook", daemon=True),
            ]
            for t in self._threads:
                t.start()

    # -- the writer thread ------------------------------------------------------------

    def _write(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            size = len(first.events)
            waited = False
            while size < self.max_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    if waited:
                        break
                    waited = True
                    time.sleep(GATHER_SECONDS)
                    continue
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item.events)
            self._store(group)
            if stop:
                return

    def _store(self, group: list[Submission]) -> None:
        on_stored = self._hand_over if self._hook is not None else None
        # One ingest call per run of the same source (the source is a column).
        for source, run in groupby(group, key=lambda s: s.source):
            subs = list(run)
            events = [e for s in subs for e in s.events]
            try:
                ingest(
                    self.engine,
                    events,
                    source=source,
                    batch_size=len(events),
                    notify=False,
                    on_stored=on_stored,
                )
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
                for s in subs:
                    s.done.set_exception(exc)
                continue
            for s in subs:
                s.done.set_result(None)

    def _hand_over(self, stored: list[StoredEvent]) -> None:
        with self._stored_ready:
            self._stored.extend(stored)
            self._stored_ready.notify()

    # -- the hook thread --------------------------------------------------------------

    def _notify(self) -> None:
        while True:
            with self._stored_ready:
                while not self._stored and not self._closing:
                    self._stored_ready.wait()
            if not self._closing:
                time.sleep(HOOK_GATHER_SECONDS)
            with self._stored_ready:
                events, self._stored = self._stored, []
                closing = self._closing
            if events and self._hook is not None:
                try:
                    self._hook(events=events, engine=self.engine)
                except Exception:
                    # The events are stored; a failing plugin must not stop the
                    # hook for later ones. A segment run catches up what it missed.
                    log.exception("on_events_ingested failed for %d events", len(events))
            if closing and not events:
                return
