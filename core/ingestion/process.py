"""Process-wide settings for a bulk import, entered by the command running it.

A library must not change them behind its caller's back: they affect every
thread of the process. ``segflow import`` and ``segflow demo`` (and the
benchmark) enter ``bulk_import_scope`` around their loads.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Iterator

# The GIL switch interval inside the scope (see bulk_import_scope).
PIPELINE_SWITCH_INTERVAL = 0.0005


class _Scope:
    """Counts the scopes open, so overlapping ones (threads) share one setting
    and the last to leave restores what was there before the first entered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.switch_interval = 0.0
        self.collecting = False

    def enter(self) -> None:
        with self.lock:
            if self.open == 0:
                self.switch_interval = sys.getswitchinterval()
                self.collecting = gc.isenabled()
                sys.setswitchinterval(min(self.switch_interval, PIPELINE_SWITCH_INTERVAL))
                gc.disable()
            self.open += 1

    def leave(self) -> None:
        with self.lock:
            self.open -= 1
            if self.open == 0:
                sys.setswitchinterval(self.switch_interval)
                if self.collecting:
                    gc.enable()


_scope = _Scope()


@contextlib.contextmanager
def bulk_import_scope() -> Iterator[None]:
    """Tune the process for a big load while inside; restored on leaving.

    - The cyclic garbage collector pauses: a big load allocates millions of
      short-lived objects and no cycles, and the collector would rescan the
      growing heap over and over.
    - The GIL switch interval shortens: on SQLite a bulk load's INSERTs run
      on a helper thread, which waits for the GIL for up to the interval
      whenever SQLite is done with a statement while the loading thread
      validates; at the default 5 ms that wait is longer than the statement.
    """
    _scope.enter()
    try:
        yield
    finally:
        _scope.leave()
