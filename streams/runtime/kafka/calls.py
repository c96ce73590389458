"""Watched Kafka calls: a watchdog for calls librdkafka may never return from, a retry policy.

Shared by every transactional producer of the guard (the job's `BatchTransaction`, the
auditors' republish): `CallWatchdog` ends the process with exit code 4 when a call outlives
its timeout by `HANG_GRACE_S` (the blocked call cannot be unwound), `WatchedCalls` retries
retriable errors within a `RetryPolicy`, and `start_transactions` runs `init_transactions`
that way. `liveness_limit_s` keeps `/healthz` patient for longer than any watched call, so a
hang is reported by the watchdog, naming the call. See `runtime/pipeline/transaction.py` for
how the batch transaction uses them.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams import exitcodes

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Beat = Callable[[], None]

# librdkafka's own default for the transactional calls; a broker that needs longer is down.
CALL_TIMEOUT_S = 30.0
# librdkafka's default `transaction.timeout.ms`: the coordinator aborts a transaction open this
# long, so a commit still retriable by then is aborted and the batch decided again (long
# enough to ride out a leader election). A passthrough `transaction.timeout.ms` replaces it.
RETRY_DEADLINE_S = 60.0
# Retries of one call within the deadline; each waits up to CALL_TIMEOUT_S inside librdkafka.
RETRY_ATTEMPTS = 5
# A transactional call still blocked this long after its own timeout is hung (not slow): a
# loaded machine schedules librdkafka's threads late by seconds, never by this much.
HANG_GRACE_S = 10.0
# `/healthz` turns 503 after this long without a beat, or later when one call may take longer
# (`liveness_limit_s`): what a liveness probe restarts a stuck process on.
LIVENESS_FLOOR_S = 60.0
# How much longer than the longest watched call (timeout + grace) `/healthz` waits: the
# watchdog's exit 4 must come first, with a log line naming the call.
LIVENESS_MARGIN_S = 20.0
# The process exit code when a transactional call hung (0 clean stop, 2 refused, 3 fatal).
EXIT_TRANSACTION_HUNG = exitcodes.JOB_HUNG


class TransactionFatalError(Exception):
    """The transaction can neither commit nor abort: stop the process (exit non-zero)."""


# What the kafka engine's restart does about the hung call's batch (said in `exit_hung`'s line).
RESTART_ABORTS = "the restart aborts any open transaction"


def exit_hung(step: str, waited_s: float, restart: str = RESTART_ABORTS) -> None:
    """Log why and end the process at once (a blocked client call cannot be unwound); `restart`
    says what the restart does about the call's batch (the Faust engine re-delivers it)."""
    log.critical(
        "Kafka call '%s' still blocked after %.0f s, past its own timeout (librdkafka#5456 and kin): "
        "exiting with code %d so a supervisor restarts the guard; %s",
        step,
        waited_s,
        EXIT_TRANSACTION_HUNG,
        restart,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_TRANSACTION_HUNG)


class CallWatchdog:
    """Calls `on_hang(step, waited_s)` when a watched call outlives its limit; one thread.

    Several calls may be watched at once (the loop's thread and the committer thread each make
    one). `watch()` costs a lock and a notify; the thread sleeps until the nearest deadline, so
    calls that return in time never wake it. It fires at most once per watched call.
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


def no_beat() -> None:
    return


class TransactionStarter(Protocol):
    """The part of `confluent_kafka.Producer` that starts its transactions."""

    def init_transactions(self, timeout: float = ...) -> None: ...


class TransactionalProducer(Protocol):
    """The part of `confluent_kafka.Producer` a transaction uses."""

    def begin_transaction(self) -> None: ...
    def produce(self, topic: str, value: Any = ..., key: Any = ..., *, headers: Any = ...) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def send_offsets_to_transaction(
        self, offsets: Any, group_metadata: Any, timeout: float = ...
    ) -> None: ...
    def commit_transaction(self, timeout: float = ...) -> None: ...
    def abort_transaction(self, timeout: float = ...) -> None: ...


class GroupConsumer(Protocol):
    """The part of `confluent_kafka.Consumer` a transaction uses."""

    def consumer_group_metadata(self) -> Any: ...
    def assignment(self) -> list[TopicPartition]: ...
    def seek(self, partition: TopicPartition) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a retriable transactional call is retried before the batch is aborted."""

    attempts: int = RETRY_ATTEMPTS
    deadline_s: float = RETRY_DEADLINE_S
    call_timeout_s: float = CALL_TIMEOUT_S
    hang_grace_s: float = HANG_GRACE_S

    @classmethod
    def configured(cls, call_timeout_ms: int, kafka_config: Mapping[str, Any]) -> RetryPolicy:
        """Calls time out after `call_timeout_ms`; retries stop at the transaction's own timeout
        (`transaction.timeout.ms` when the librdkafka passthrough sets it)."""
        configured_ms = kafka_config.get("transaction.timeout.ms")
        deadline_s = RETRY_DEADLINE_S if configured_ms is None else int(configured_ms) / 1000
        return cls(deadline_s=deadline_s, call_timeout_s=call_timeout_ms / 1000)

    @property
    def hung_after_s(self) -> float:
        """How long one watched call may block before the watchdog ends the process."""
        return self.call_timeout_s + self.hang_grace_s


def liveness_limit_s(retry: RetryPolicy, longest_unwatched_s: float = 0.0) -> float:
    """How long `/healthz` may go without a beat before it reports 503 (a stuck loop).

    Longer than any single watched call can block (a hung one is the watchdog's: exit 4) and
    than the longest stretch without a watched call (`longest_unwatched_s`: the state
    catch-up before a batch), each by `LIVENESS_MARGIN_S`; never under `LIVENESS_FLOOR_S`.
    """
    longest = max(retry.hung_after_s, longest_unwatched_s)
    return max(LIVENESS_FLOOR_S, longest + LIVENESS_MARGIN_S)


def kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def describe_error(exc: KafkaException) -> str:
    error = kafka_error(exc)
    return error.str() if error is not None else str(exc)


class RetryBudgetSpentError(Exception):
    """A retriable error outlived the retry policy."""


class WatchedCalls:
    """Runs librdkafka calls under the watchdog, beating the heartbeat before each one."""

    def __init__(self, watchdog: CallWatchdog, retry: RetryPolicy, clock: Clock, beat: Beat) -> None:
        self.watchdog = watchdog
        self.retry = retry
        self.clock = clock
        self.beat = beat

    def watched(self, step: str) -> AbstractContextManager[None]:
        """Watch one call: hung once it outlives its timeout by the grace."""
        self.beat()
        return self.watchdog.watch(step, self.retry.hung_after_s)

    def with_retry(self, step: str, deadline: float, call: Callable[[], None]) -> None:
        """Run `call`, retrying retriable errors within the attempt count and the deadline.

        Raises the `KafkaException` of a non-retriable error, `RetryBudgetSpentError` when
        the budget is spent."""
        attempt = 1
        while True:
            try:
                with self.watched(step):
                    call()
                return
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is None or not error.retriable() or error.txn_requires_abort() or error.fatal():
                    raise
                if attempt >= self.retry.attempts or self.clock() >= deadline:
                    raise RetryBudgetSpentError(f"{step}: {error.str()} ({attempt} attempt(s))") from exc
                log.warning("retrying %s (attempt %d): %s", step, attempt + 1, error.str())
                attempt += 1


def start_transactions(
    producer: TransactionStarter,
    retry: RetryPolicy = RetryPolicy(),
    clock: Clock = time.monotonic,
    watchdog: CallWatchdog | None = None,
    beat: Beat = no_beat,
) -> None:
    """`init_transactions`: fence earlier instances with this transactional id, abort their
    open transaction. Watched and retried like a commit; `TransactionFatalError` when it
    cannot succeed (fenced, refused, or still timing out when the retry budget is spent)."""
    calls = WatchedCalls(watchdog or CallWatchdog(), retry, clock, beat)
    try:
        calls.with_retry(
            "init transactions",
            clock() + retry.deadline_s,
            lambda: producer.init_transactions(retry.call_timeout_s),
        )
    except RetryBudgetSpentError as exc:
        raise TransactionFatalError(f"cannot initialise transactions: {exc}") from exc
    except KafkaException as exc:
        raise TransactionFatalError(f"cannot initialise transactions: {describe_error(exc)}") from exc


PartitionKey = tuple[str, int]
