"""The fault-injection hook: inert unless armed, acts once on the configured batch."""

from __future__ import annotations

import pytest

from streams.runtime.faults import FAULT_ENV, BeforeCommitFault, InjectedFaultError
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


@pytest.mark.parametrize("spec", ["raise", "raise@0", "raise@x", "explode@2", "@3"])
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
