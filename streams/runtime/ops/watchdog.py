"""The watchdog of every engine: a Kafka call that outlives its timeout ends the process (exit 4).

A blocked client call (librdkafka's `send_offsets_to_transaction`, confluentinc/librdkafka#5456;
a Faust batch whose sends the broker never acknowledges) cannot be interrupted, and its client
can be neither closed nor reused while it blocks, so the engine does not recover in-process: a
`CallWatchdog` notices the call outlived its own timeout by `HANG_GRACE_S`, logs which call, and
ends the process with `EXIT_HUNG` (4) for a supervisor to restart. `liveness_limit` keeps
`/healthz` patient for longer than any watched call may block, so a hung call is always
reported by the watchdog, naming the call, never by an anonymous liveness kill.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from streams import exitcodes

log = logging.getLogger(__name__)

# A call still blocked this long after its own timeout is hung (not slow): a loaded machine
# schedules the clients' threads late by seconds, never by this much.
HANG_GRACE_S = 10.0
# `/healthz` turns 503 after this long without a beat, or later when one call may take longer
# (`liveness_limit`): what a liveness probe restarts a stuck process on.
LIVENESS_FLOOR_S = 60.0
# How much longer than the longest watched call (timeout + grace) `/healthz` waits: the
# watchdog's exit 4 must come first, with a log line naming the call.
LIVENESS_MARGIN_S = 20.0
# The process exit code when a watched call hung (0 clean stop, 2 refused, 3 fatal).
EXIT_HUNG = exitcodes.JOB_HUNG
# What the kafka engine's restart does about the hung call's batch.
RESTART_ABORTS = "the restart aborts any open transaction"


def exit_hung(step: str, waited_s: float, restart: str = RESTART_ABORTS) -> None:
    """Log why and end the process at once (a blocked client call cannot be unwound)."""
    log.critical(
        "Kafka call '%s' still blocked after %.0f s, past its own timeout (librdkafka#5456 and kin): "
        "exiting with code %d so a supervisor restarts the guard; %s",
        step,
        waited_s,
        EXIT_HUNG,
        restart,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_HUNG)


def liveness_limit(longest_watched_s: float, longest_unwatched_s: float = 0.0) -> float:
    """How long `/healthz` may go without a beat before it reports 503 (a stuck loop).

    Longer than any single watched call can block (`longest_watched_s`, timeout + grace: a hung
    one is the watchdog's, exit 4) and than the longest stretch without a watched call
    (`longest_unwatched_s`: the state catch-up before a batch), each by `LIVENESS_MARGIN_S`;
    never under `LIVENESS_FLOOR_S`.
    """
    return max(LIVENESS_FLOOR_S, max(longest_watched_s, longest_unwatched_s) + LIVENESS_MARGIN_S)


class CallWatchdog:
    """Calls `on_hang(step, waited_s)` when a watched call outlives its limit; one thread.

    Several calls may be watched at once (the loop's thread and the committer thread each make
    one). `watch()` costs a lock and a notify; the thread sleeps until the nearest deadline, so
    calls that return in time never wake it. It fires at most once per watched call. The block
    inside `watch()` may also span `await`s: the thread keeps time whatever the event loop does.
    """

    def __init__(self, on_hang: Callable[[str, float], None] = exit_hung) -> None:
        self.on_hang = on_hang
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[str, float, float]] = {}  # token -> (step, started, deadline)
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, step: str, limit_s: float) -> Iterator[None]:
        """Watch the calls made inside the block."""
        with self._cond:
            token, started = next(self._tokens), time.monotonic()
            self._watched[token] = (step, started, started + limit_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="txn-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(token, None)
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._watched:
                    self._cond.wait()
                    continue
                token, (step, started, deadline) = min(self._watched.items(), key=lambda item: item[1][2])
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                del self._watched[token]
                self.on_hang(step, time.monotonic() - started)
