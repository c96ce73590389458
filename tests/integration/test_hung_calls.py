"""A hung `init_transactions` at start: the watchdog ends the guard with exit code 4, naming the
call, while `/healthz` still answers 200 (the liveness probe is not what catches it).

The hang is injected (`hang@init`): librdkafka's own `init_transactions` honours its timeout on
the embedded broker, so only the fault hook makes it block for good. What the fakes in
`tests/runtime/pipeline/test_transaction.py` cannot show is that the real job starts its producer through the
watchdog, and how the process looks from outside while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.runtime.kafka.calls import EXIT_TRANSACTION_HUNG
from tests.integration.kafka_helpers import start_guard
from tests.integration.reliability import guard_env

pytestmark = pytest.mark.integration
HTTP_OK, HTTP_UNAVAILABLE = 200, 503
# Generous: the guard starts a Python process and loads the state on a loaded machine.
WAIT_S = 180.0


def _wait_for_log(guard_log: Path, text: str, process_alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while text not in guard_log.read_text(errors="replace"):
        assert process_alive() and time.monotonic() < deadline, guard_log.read_text(errors="replace")
        time.sleep(0.1)


@pytest.mark.timeout(2 * WAIT_S)
def test_a_hung_init_transactions_exits_4_and_names_the_call(
    session_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Before: `init_transactions` ran unwatched; blocked for good, the guard sat not ready for
    ever (nothing in the loop beat, and no liveness probe exists under a plain supervisor)."""
    env = guard_env(
        PARTNER_GUARD_FAULT_BEFORE_COMMIT="hang@init",
        PARTNER_GUARD_TRANSACTION_CALL_TIMEOUT_MS="1000",  # hung = still blocked 1 s + 10 s later
    )
    guard = start_guard(session_broker.bootstrap, tmp_path, "hung-init.events", "hung-init", env)
    try:
        _wait_for_log(guard.log_path, "init_transactions hangs", lambda: guard.process.poll() is None)
        assert guard.status("/readyz") == HTTP_UNAVAILABLE  # never ready: nothing is decided
        assert guard.status("/healthz") == HTTP_OK  # alive: the watchdog, not a probe, ends it
        assert guard.process.wait(timeout=WAIT_S) == EXIT_TRANSACTION_HUNG, guard.log()
    finally:
        guard.stop()
    log = guard.log()
    assert "'init transactions' still blocked" in log
    assert "ready: ruleset" not in log  # the start line never came: nothing was consumed
