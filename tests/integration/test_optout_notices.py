"""P12 against the embedded broker: opt-outs and deletions reach the partners that received data.

The scenario itself is `tests/integration/optout_scenario.py` (callable from other suites);
here it runs on both state stores and with two workers, plus a crash between the consent
change and its commit.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.broker.embedded import EmbeddedBroker
from streams.core.notices import decode_state
from tests.integration.kafka_helpers import produce, read_topic, start_guard, wait_all_committed
from tests.integration.optout_scenario import (
    CONSENT,
    INPUT,
    OPTOUTS,
    Consent,
    consent_record,
    latest_forwarded,
    now_ms,
    optout_scenario,
)
from tests.integration.records import app_install, keyed_event

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="memory"),
        pytest.param({"PARTNER_GUARD_STATE_STORE": "rocksdb"}, id="rocksdb"),
        pytest.param({"PARTNER_GUARD_WORKERS": "2"}, id="two-workers"),
    ],
)
def test_optout_scenario(broker: EmbeddedBroker, tmp_path: Path, env: dict[str, str]) -> None:
    if env.get("PARTNER_GUARD_STATE_STORE") == "rocksdb":
        env = {**env, "PARTNER_GUARD_STATE_DIR": str(tmp_path / "state")}
    optout_scenario(broker.bootstrap, tmp_path, env)


def test_a_crash_between_the_consent_change_and_its_commit_sends_one_notice(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """SIGKILL after the notice was produced, before the commit: the restart acts on the change
    again and commits one notice; a replay afterwards sends none.

    On the embedded broker the killed instance's notice stays readable (Tansu does not hide
    records of aborted transactions), so the once-only is checked where it is decided: the
    committed notice count (metrics) and the notice state in the forwarded topic. (The frozen
    instance may not yet have delivered its records to the broker when it is killed: the
    producer lingers up to 100 ms; either way one notice is committed, with one id.)
    """
    bootstrap, group = broker.bootstrap, "optout-crash"
    first = start_guard(bootstrap, tmp_path, INPUT, group, transactional_id="optout-crash-0")
    consent = Consent(bootstrap, group, [first])
    start = now_ms()
    try:
        first.wait_ready()
        consent.send(consent_record("acct-k", start))
        produce(bootstrap, INPUT, [keyed_event(app_install("ev-k1", "acct-k"))])
        wait_all_committed(bootstrap, group, INPUT, 1, guards=[first])
    finally:
        assert first.stop() == 0, first.log()
    produce(bootstrap, CONSENT, [consent_record("acct-k", start + 1000, do_not_sell_or_share=True)])
    consent.produced += 1
    # its first batch is the revoke: stopped after producing the notice, before the commit
    frozen = start_guard(
        bootstrap,
        tmp_path,
        INPUT,
        group,
        {"PARTNER_GUARD_FAULT_BEFORE_COMMIT": "stop@1"},
        transactional_id="optout-crash-0",
    )
    deadline = time.monotonic() + 120
    while "injected fault" not in frozen.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline and frozen.process.poll() is None, frozen.log()
        time.sleep(0.2)
    os.kill(frozen.process.pid, signal.SIGKILL)
    frozen.process.wait()
    again = start_guard(bootstrap, tmp_path, INPUT, group, transactional_id="optout-crash-0")
    consent.guards = [again]
    try:
        again.wait_ready()
        wait_all_committed(bootstrap, group, CONSENT, consent.produced, guards=[again])
        assert again.metric_value("partner_guard_optout_notices_total", partner="install-attribution") == 1
        state = latest_forwarded(bootstrap)[b"n|account:acct-k"]
        assert state is not None and decode_state(state).choices == {"do_not_sell_or_share"}
        sent = [orjson.loads(r.value or b"") for r in read_topic(bootstrap, OPTOUTS["install-attribution"])]
        assert len({n["notice_id"] for n in sent}) == 1  # both copies are the same notice
        assert 1 <= len(sent) <= 2  # 2 only where aborted records stay visible (the embedded broker)
        consent.send(consent_record("acct-k", start + 1000, do_not_sell_or_share=True))  # replayed
        assert again.metric_value("partner_guard_optout_notices_total") == 1
    finally:
        assert again.stop() == 0, again.log()


def test_hostile_consent_records_neither_stop_the_job_nor_block_the_next_opt_out(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap, group = broker.bootstrap, "optout-hostile"
    guard = start_guard(bootstrap, tmp_path, INPUT, group, transactional_id="optout-hostile-0")
    consent = Consent(bootstrap, group, [guard])
    start = now_ms()
    try:
        guard.wait_ready()
        consent.send(consent_record("acct-h", start))
        produce(bootstrap, INPUT, [keyed_event(app_install("ev-h1", "acct-h"))])
        wait_all_committed(bootstrap, group, INPUT, 1, guards=[guard])
        producer = Producer({"bootstrap.servers": bootstrap})
        hostile = [
            (b"account:acct-h", b"{not json", 10**15),  # a garbled record stamped far ahead
            (b"\xff\xfe", b"{}", None),
            (None, b"{}", None),
            (b"account:" + b"x" * 2000, None, None),
            (b"account:acct-h", b'{"subject": "account:acct-h", "subject": "account:other"}', None),
        ]
        for key, value, stamp in hostile:
            producer.produce(CONSENT, value, key, timestamp=stamp or 0)
        producer.flush(10)
        consent.produced += len(hostile)
        consent.send(consent_record("acct-x", start + 1000, do_not_sell_or_share=True))  # no marker: nothing
        assert guard.process.poll() is None, guard.log()
        # the garbled record on a canonical key was read as every opt-out (fail closed): one notice
        assert guard.metric_value("partner_guard_optout_notices_total", partner="install-attribution") == 1
    finally:
        assert guard.stop() == 0, guard.log()
