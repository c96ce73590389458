"""Fault injection for the reliability tests: one hook between "produced" and "committed".

Off unless `PARTNER_GUARD_FAULT_BEFORE_COMMIT` is set to `ACTION@N` (N counts the batches
of this process from 1), or to `hang@init`:

- `raise@N` raises `InjectedFaultError` after batch N's outputs were produced and before its
  transaction commits — an unexpected exception mid-transaction;
- `stop@N` stops the process with SIGSTOP at the same point (a zombie: frozen holding an
  open transaction until someone sends SIGCONT);
- `hang@N` makes batch N's `send_offsets_to_transaction` block for good, the way
  librdkafka#5456 does (the producer is wrapped by `wrap_producer`);
- `hang@init` makes the start's `init_transactions` block for good (before any batch).

The Faust engine calls the same hook after a batch's outputs were handed to its producer and
before it waits for their acknowledgements; there `hang@N` holds batch N's acknowledgements
back for good (`raise@N` and `stop@N` act as above; `hang@init` does nothing).

It is read once at start, costs one integer comparison a batch, and never acts on its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.core.errors import PartnerGuardError

log = logging.getLogger(__name__)
FAULT_ENV = "PARTNER_GUARD_FAULT_BEFORE_COMMIT"
ACTIONS = ("raise", "stop", "hang")
HANG_INIT = "hang@init"


class InjectedFaultError(PartnerGuardError, RuntimeError):
    """The exception `raise@N` throws; never raised unless the fault was asked for."""


@dataclass
class BeforeCommitFault:
    """Counts batches and acts once, on the configured one."""

    action: str | None = None
    at_batch: int = 0  # 0 with `hang`: the start's init_transactions hangs instead of a batch
    batches: int = 0
    hanging: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BeforeCommitFault:
        """The fault asked for in the environment, or an inert one; malformed values refuse start."""
        spec = environ.get(FAULT_ENV, "").strip()
        if not spec:
            return cls()
        if spec == HANG_INIT:
            log.warning("fault injection armed: init_transactions hangs")
            return cls("hang", 0)
        action, _, number = spec.partition("@")
        if action not in ACTIONS or not number.isdigit() or int(number) < 1:
            raise ValueError(
                f"{FAULT_ENV}={spec!r}: expected raise@N, stop@N or hang@N with N >= 1, or {HANG_INIT}"
            )
        log.warning("fault injection armed: %s before committing batch %s", action, number)
        return cls(action, int(number))

    def before_commit(self) -> None:
        """Call after a batch is produced and before its transaction commits."""
        if self.action is None:
            return
        self.batches += 1
        if self.batches != self.at_batch:
            return
        log.warning("injected fault: %s before committing batch %d", self.action, self.batches)
        if self.action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if self.action == "hang":
            self.hanging.set()  # the wrapped producer's next send_offsets_to_transaction blocks
            return
        raise InjectedFaultError(f"injected before committing batch {self.batches}")

    def wrap_producer(self, producer: Any) -> Any:
        """The producer itself, or (for `hang@N`, `hang@init`) a proxy whose calls can hang."""
        if self.action != "hang":
            return producer
        return _HangingProducer(producer, self.hanging, hang_init=self.at_batch == 0)


class _HangingProducer:
    """Delegates to a producer; `send_offsets_to_transaction` never returns once `hanging` is
    set, and with `hang_init` neither does `init_transactions`."""

    def __init__(self, producer: Any, hanging: threading.Event, hang_init: bool = False) -> None:
        self._producer = producer
        self._hanging = hanging
        self._hang_init = hang_init

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def init_transactions(self, timeout: float = -1) -> None:
        if self._hang_init:
            log.warning("injected fault: init_transactions hangs")
            threading.Event().wait()  # blocks this thread for good
        self._producer.init_transactions(timeout)

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any, timeout: float = -1) -> None:
        if self._hanging.is_set():
            log.warning("injected fault: send_offsets_to_transaction hangs")
            threading.Event().wait()  # blocks this thread for good, like the librdkafka bug
        self._producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
