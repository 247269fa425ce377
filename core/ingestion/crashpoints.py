"""Test-only crash points, for the tests that SIGKILL a load between steps.

``SEGFLOW_TEST_CRASH_AT=NAME[:N]`` makes the N-th pass (default: the first)
through ``crash_point(NAME)`` kill this process with SIGKILL, as kill -9 or a
power cut would, so a test can stop a real ``segflow import`` at an exact
step (tests/test_crash_safety.py). Read once, at import; when it is unset,
``crash_point`` is one comparison. Points:

- ``bulk.dropped``: a bulk load recorded itself and dropped the indexes;
- ``ingest.batch``: a batch was written (pipelined: its transaction may be open);
- ``bulk.index``: an index was rebuilt in the load's last transaction;
- ``bulk.move``: a queued merge move was applied in that transaction;
- ``ingest.loaded``: a load is in, its ``on_loaded`` call not yet made.
- ``deliver.recorded``: a delivery recorded a chunk of messages, none claimed;
- ``deliver.claimed``: a message is ``sending``, not yet handed to the connector;
- ``deliver.sent``: the connector took it, its status not yet updated;
- ``deliver.updated``: its ``sent`` is committed.
- ``sync.sent``: a sync batch was answered by the API, its results not yet written;
- ``sync.written``: its results are committed to ``sync_states`` (or the event cursor).
- ``privacy.erased``: an erasure is committed, nothing sent to the connectors yet;
- ``privacy.sent``: a connector answered an erasure's deletions, not yet recorded;
- ``purge.chunk``: a chunk of a retention purge is committed, the next not yet read;
- ``privacy.rotated``: a key rotation committed one chunk of a table;
- ``campaigns.outcomes_batch``: a refresh stored a batch of campaign outcomes, its
  transaction still open.
"""

from __future__ import annotations

import os
import signal

_NAME, _, _NTH = os.environ.get("SEGFLOW_TEST_CRASH_AT", "").partition(":")
_left = int(_NTH or 1) if _NAME else 0


def crash_point(name: str) -> None:
    global _left
    if name != _NAME:
        return
    _left -= 1
    if _left == 0:
        os.kill(os.getpid(), signal.SIGKILL)
