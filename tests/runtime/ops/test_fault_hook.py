"""The fault-injection hook: inert unless armed, acts once on the configured batch."""

from __future__ import annotations

import threading

import pytest

from streams.runtime.ops.faults import FAULT_ENV, BeforeCommitFault, InjectedFaultError
from tests.faultproxy import client_id_of


def test_inert_without_the_variable() -> None:
    fault = BeforeCommitFault.from_env({})
    for _ in range(100):
        fault.before_commit()
    assert fault.batches == 0


def test_raise_acts_on_the_nth_batch_only() -> None:
    fault = BeforeCommitFault.from_env({FAULT_ENV: "raise@3"})
    fault.before_commit()
    fault.before_commit()
    with pytest.raises(InjectedFaultError):
        fault.before_commit()
    fault.before_commit()  # once only
    assert fault.batches == 4


@pytest.mark.parametrize("spec", ["raise", "raise@0", "raise@x", "explode@2", "@3", "raise@init", "hang@0"])
def test_a_malformed_spec_refuses_start(spec: str) -> None:
    with pytest.raises(ValueError, match=FAULT_ENV):
        BeforeCommitFault.from_env({FAULT_ENV: spec})


def test_the_proxy_reads_the_client_id_of_a_kafka_request() -> None:
    header = (
        b"\x00\x00\x00\x20" + b"\x00\x12\x00\x03" + b"\x00\x00\x00\x01" + b"\x00\x0bguard-state" + b"\x00"
    )
    assert client_id_of(header) == "guard-state"
    assert client_id_of(header[:15]) is None
    assert client_id_of(b"\x00\x00\x00\x20\x00\x12\x00\x03\x00\x00\x00\x01\xff\xff") is None  # null id


class _Producer:
    def __init__(self) -> None:
        self.sent = 0
        self.initialised = 0

    def init_transactions(self, timeout: float) -> None:
        self.initialised += 1

    def send_offsets_to_transaction(self, offsets: object, group_metadata: object, timeout: float) -> None:
        self.sent += 1

    def flush(self, timeout: float) -> int:
        return 0


def test_hang_blocks_send_offsets_of_the_nth_batch_only_and_delegates_the_rest() -> None:
    fault = BeforeCommitFault.from_env({FAULT_ENV: "hang@2"})
    inner = _Producer()
    producer = fault.wrap_producer(inner)
    fault.before_commit()
    producer.send_offsets_to_transaction([], None, 1.0)
    assert inner.sent == 1 and producer.flush(1) == 0
    fault.before_commit()
    blocked = threading.Thread(target=producer.send_offsets_to_transaction, args=([], None, 1.0), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and inner.sent == 1  # still blocked, never reached the producer


def test_only_hang_wraps_the_producer() -> None:
    inner = _Producer()
    assert BeforeCommitFault.from_env({FAULT_ENV: "raise@2"}).wrap_producer(inner) is inner
    assert BeforeCommitFault.from_env({}).wrap_producer(inner) is inner


def test_hang_at_init_blocks_init_transactions_before_any_batch() -> None:
    fault = BeforeCommitFault.from_env({FAULT_ENV: "hang@init"})
    inner = _Producer()
    producer = fault.wrap_producer(inner)
    blocked = threading.Thread(target=producer.init_transactions, args=(1.0,), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and inner.initialised == 0
    for _ in range(5):
        fault.before_commit()  # no batch acts
    producer.send_offsets_to_transaction([], None, 1.0)
    assert inner.sent == 1


def test_hang_at_a_batch_leaves_init_transactions_alone() -> None:
    inner = _Producer()
    BeforeCommitFault.from_env({FAULT_ENV: "hang@2"}).wrap_producer(inner).init_transactions(1.0)
    assert inner.initialised == 1
