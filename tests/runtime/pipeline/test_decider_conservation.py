"""P5 at the shared seam of both engines (`RecordDecider.emit`), without a broker: every input
ends, for every partner, as exactly one of a partner record or a decision in the input's one
blocked record. Kills the promise mutant `p5-withheld-reach-the-blocked-topic`, which drops
the blocked record of an input's withheld decisions (tests/mutants/catalogue.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from streams.core.rules.ruleset import Ruleset
from streams.gen.traffic import TrafficGenerator
from streams.runtime.config import Settings
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import SourceRef
from streams.runtime.ops.metrics import GuardMetrics
from streams.runtime.pipeline.decider import BatchTally, GuardState, RecordDecider


class _Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.records.append((topic, value))


@pytest.mark.parametrize("seed", [3, 11])
def test_every_input_ends_once_per_partner_forwarded_or_blocked(ruleset: Ruleset, seed: int) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    state = GuardState(settings, {}, GuardMetrics())
    generator = TrafficGenerator(seed=seed, population=300, malformed_rate=0.05)
    for record in generator.consent_records():
        state.consent.apply(record.key, record.value)
    for record in generator.signup_statuses():
        state.signup_status.apply(record.key, record.value)
    decider = RecordDecider(settings, ruleset, PayloadProtector("full"), state)
    partner_of_topic = {topic: partner for partner, topic in decider.topic_by_partner.items()}
    totals: Counter[str] = Counter()
    tally = BatchTally()
    for offset, record in enumerate(generator.events(3000)):
        sink = _Sink()
        source = SourceRef("internal.events", 0, offset, None, record.key, "json")
        decider.emit(record.value, source, False, tally, sink)
        ends: Counter[str] = Counter()
        blocked = [value for topic, value in sink.records if topic == settings.blocked_topic]
        assert len(blocked) <= 1, offset  # at most one blocked record an input
        for topic, _ in sink.records:
            if topic != settings.blocked_topic:
                ends[partner_of_topic[topic]] += 1
                totals["forward"] += 1
        for value in blocked:
            for decision in orjson.loads(value)["decisions"]:
                assert decision["reasons"], (offset, decision)  # blocked with reasons, never bare
                ends[decision["partner"]] += 1
                totals["block"] += 1
        assert ends == dict.fromkeys(ruleset.partners, 1), (offset, ends)
    assert totals["forward"] > 50 and totals["block"] > 50  # the mix really does both
    assert sum(tally.records_in.values()) == 3000
